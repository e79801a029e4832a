//! Console output: order, levels, formatting.

use enclave_proto::v1::ConsoleLevel;

use crate::support::*;

#[tokio::test]
async fn console_events_keep_order_and_level() {
    let t = run(job(
        "console.log('one'); console.info('two'); console.warn('three'); console.error('four'); console.debug('five'); await null; console.log('six'); return 0",
    ))
    .await;
    let got: Vec<(ConsoleLevel, &str)> = t
        .console()
        .iter()
        .map(|c| (c.level(), c.text.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (ConsoleLevel::Log, "one"),
            (ConsoleLevel::Info, "two"),
            (ConsoleLevel::Warn, "three"),
            (ConsoleLevel::Error, "four"),
            (ConsoleLevel::Debug, "five"),
            (ConsoleLevel::Log, "six"),
        ]
    );
}

#[tokio::test]
async fn objects_print_readably() {
    let t = run(job(
        "const c = {n: 1}; c.self = c; console.log('a', {b: [1, 'x', {c: null}]}, new Map([[1, 'y']]), new Set([2]), undefined, 5n, c, [1,2,3].map(String)); return 0",
    ))
    .await;
    assert_eq!(
        t.console()[0].text,
        "a { b: [ 1, 'x', { c: null } ] } Map(1) { 1 => 'y' } Set(1) { 2 } undefined 5n { n: 1, self: [Circular] } [ '1', '2', '3' ]"
    );
    let t = run(job("console.log(new Error('boom')); return 0")).await;
    assert!(
        t.console()[0].text.starts_with("Error: boom"),
        "{:?}",
        t.console()
    );
}
