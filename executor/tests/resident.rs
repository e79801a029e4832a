//! What stays resident between jobs is bounded in total: a burst of large jobs over many
//! instance slots leaves only the warm slots' memory behind. A test binary of its own,
//! so that no other test's memory moves the figures.

use std::time::{Duration, Instant};

use enclave_executor::{JobSpec, Limits, Sandbox, SandboxConfig};
use enclave_proto::v1::{
    ErrorCode, SecurityLevel, ToolResult, final_event::Outcome, run_event::Event,
    tool_result::Outcome as ToolOutcome,
};
use tokio::sync::mpsc;

/// This process's resident memory, from /proc.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

fn spec(code: &str, limits: Limits) -> JobSpec {
    JobSpec {
        code: code.into(),
        input_json: String::new(),
        limits,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_large_jobs_leaves_only_the_warm_slots_resident() {
    const JOBS: usize = 64;
    let config = SandboxConfig {
        max_concurrent_jobs: JOBS as u32,
        max_resident: 8 << 20, // two warm slots of 4 MiB
        ..SandboxConfig::default()
    };
    assert_eq!(config.warm_slots(), 2);
    let sandbox = std::sync::Arc::new(Sandbox::new(config).await.unwrap());
    let limits = Limits::preset(SecurityLevel::Standard);
    // Warm up: the first jobs map what every job uses.
    for _ in 0..4 {
        let (events, _keep) = mpsc::channel(8);
        let (_tx, results) = mpsc::channel(1);
        sandbox
            .run(spec("return 1", limits.clone()), events, results)
            .await
            .unwrap();
    }
    let before = rss_bytes();
    // Every job holds its slot (waiting on a tool call) until all have started, so the
    // burst really uses JOBS slots; each fills 8 MiB of its heap.
    let code = "const a = []; for (let i = 0; i < 8; i++) a.push(new Uint8Array(1 << 20).fill(7)); \
                await callTool('go', {}); return a.length";
    let mut jobs = Vec::new();
    let mut answers = Vec::new();
    let mut started = Vec::new();
    for _ in 0..JOBS {
        let (events, mut events_rx) = mpsc::channel(8);
        let (results_tx, results) = mpsc::channel(1);
        let sandbox = sandbox.clone();
        let limits = limits.clone();
        jobs.push(tokio::spawn(async move {
            sandbox.run(spec(code, limits), events, results).await
        }));
        started.push(tokio::spawn(async move {
            let call = match events_rx.recv().await {
                Some(Event::ToolCall(call)) => call,
                other => panic!("expected a tool call, got {other:?}"),
            };
            (call.call_id, events_rx)
        }));
        answers.push(results_tx);
    }
    let mut calls = Vec::new();
    for s in started {
        calls.push(
            tokio::time::timeout(Duration::from_secs(60), s)
                .await
                .expect("every job started")
                .unwrap(),
        );
    }
    let peak = rss_bytes();
    for ((call_id, _events), tx) in calls.into_iter().zip(&answers) {
        tx.send(ToolResult {
            call_id,
            outcome: Some(ToolOutcome::ResultJson("null".into())),
        })
        .await
        .unwrap();
    }
    for job in jobs {
        let done = job.await.unwrap().unwrap();
        assert_eq!(done.outcome, Some(Outcome::ResultJson("8".into())));
    }
    // The slots are given back as the stores drop; let the last ones go.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut after = rss_bytes();
    while after > before + (48 << 20) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = rss_bytes();
    }
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    eprintln!(
        "resident: {:.1} MiB before, {:.1} MiB at the peak of {JOBS} jobs of 8 MiB, {:.1} MiB after",
        mib(before),
        mib(peak),
        mib(after)
    );
    assert!(
        peak > before + (JOBS as u64) * (8 << 20) / 2,
        "the burst did not happen"
    );
    // Two warm slots keep at most 8 MiB; 64 slots that each kept 4 MiB would be 256.
    assert!(
        after < before + (48 << 20),
        "{:.1} MiB stayed resident",
        mib(after.saturating_sub(before))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_in_slots_that_give_their_memory_back_keep_every_limit() {
    // No warm slot: every job runs in the other pool, with its own engine and epoch clock.
    let sandbox = Sandbox::new(SandboxConfig {
        max_concurrent_jobs: 4,
        max_resident: 0,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let limits = Limits {
        timeout: Duration::from_millis(300),
        ..Limits::preset(SecurityLevel::Strict)
    };
    let run = |code: &'static str| {
        let (events, _keep) = mpsc::channel(8);
        let (_tx, results) = mpsc::channel(1);
        let job = sandbox.run(spec(code, limits.clone()), events, results);
        async move {
            let _keep = (_keep, _tx);
            job.await.unwrap()
        }
    };
    let started = Instant::now();
    let done = run("await null; while (true) {}").await;
    assert!(
        matches!(&done.outcome, Some(Outcome::Error(e)) if e.code == ErrorCode::Timeout as i32),
        "{done:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let done = run("const a = []; while (true) a.push(new Uint8Array(1 << 20));").await;
    assert!(
        matches!(&done.outcome, Some(Outcome::Error(e)) if e.code == ErrorCode::MemoryLimit as i32),
        "{done:?}"
    );
    let done = run("return 6 * 7").await;
    assert_eq!(done.outcome, Some(Outcome::ResultJson("42".into())));
}
