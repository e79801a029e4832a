//! Nothing survives a job: every job starts from the same pristine snapshot.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn pollution_does_not_leak_into_the_next_job() {
    let t = run(job(
        "Array.prototype.push = function () { return 'hacked' };
         Object.prototype.polluted = 1;
         globalThis.leftover = 'secret';
         JSON.stringify = () => 'x';
         Math.random = () => 4;
         console.log = () => {};
         callTool = null;
         // Grow the heap past the pages kept resident between jobs, so both ways of
         // resetting a slot (copying dirty pages back, dropping the rest) are exercised.
         globalThis.big = Array.from({length: 200000}, (_, i) => ({i, mark: 'leftover'}));
         return [].push(1)",
    ))
    .await;
    assert_eq!(t.result(), json!("hacked"));
    // Run several times: pooled slots are reused, and each must be clean.
    for _ in 0..5 {
        let t = run(job(
            "const a = []; a.push(1);
             console.log('visible');
             return {push: a.length, polluted: ({}).polluted === undefined, leftover: typeof leftover,
                     json: JSON.stringify({a: 1}), random: Math.random() !== 4, tool: typeof callTool,
                     big: typeof big}",
        ))
        .await;
        assert_eq!(
            t.result(),
            json!({"push": 1, "polluted": true, "leftover": "undefined", "json": "{\"a\":1}", "random": true, "tool": "function", "big": "undefined"})
        );
        assert_eq!(t.console().len(), 1);
    }
}

#[tokio::test]
async fn math_random_differs_per_job() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..5 {
        let t = run(job("return [Math.random(), Math.random()]")).await;
        let pair = t.result();
        let (a, b) = (pair[0].as_f64().unwrap(), pair[1].as_f64().unwrap());
        assert!((0.0..1.0).contains(&a) && (0.0..1.0).contains(&b));
        assert_ne!(a, b);
        assert!(
            seen.insert(a.to_bits()),
            "a job repeated another job's Math.random sequence"
        );
    }
}
