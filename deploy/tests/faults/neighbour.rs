//! A hostile neighbour: one session keeps an executor (one CPU) saturated with CPU-bound
//! and memory-bomb jobs; another session's trivial jobs must still complete, within 2×
//! their latency on the idle system. What makes it hold: jobs have threads of their own,
//! so requests never queue behind them, and a new job goes before busy ones
//! (executor/src/jobs.rs, executor/src/priority.rs).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use enclave_client::Client;

use crate::support::*;

/// Median wall time of `n` trivial jobs run one after another.
async fn trivial_median(client: &Client, n: usize) -> (Duration, Vec<String>) {
    let mut times = Vec::with_capacity(n);
    let mut failed = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        match trivial(client).await {
            Ok(()) => times.push(started.elapsed()),
            Err(e) => failed.push(e),
        }
    }
    times.sort();
    (
        times.get(times.len() / 2).copied().unwrap_or_default(),
        failed,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_session_does_not_slow_another_beyond_twice() {
    let (_serial, project, victim) = ready(1).await;
    let hostile = project.client().await.unwrap();
    let (idle, failed) = trivial_median(&victim, SAMPLES).await;
    assert!(failed.is_empty(), "{failed:?}");

    // The hostile session: as many jobs as it may run at once, each spinning or
    // allocating until its limit stops it, replaced as soon as it ends.
    let stop = Arc::new(AtomicBool::new(false));
    let hogs: Vec<_> = (0..HOSTILE_JOBS)
        .map(|i| {
            let (client, stop) = (hostile.clone(), stop.clone());
            tokio::spawn(async move {
                let code = if i % 2 == 0 {
                    "while (true) {}"
                } else {
                    "const a = []; while (true) a.push(new Array(1 << 16).fill(i => i))"
                };
                while !stop.load(Ordering::Relaxed) {
                    let _ = client.execute_job(job(code, Duration::from_secs(5))).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (busy, failed) = trivial_median(&victim, SAMPLES).await;
    stop.store(true, Ordering::Relaxed);
    for hog in hogs {
        hog.abort();
    }
    println!(
        "hostile neighbour ({HOSTILE_JOBS} CPU and memory bombs at once): trivial job median \
         {:.1} ms idle, {:.1} ms beside it ({:.2}x); {} failed",
        idle.as_secs_f64() * 1e3,
        busy.as_secs_f64() * 1e3,
        busy.as_secs_f64() / idle.as_secs_f64(),
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(
        busy <= idle * 2,
        "{busy:?} beside the hostile session, {idle:?} idle"
    );
}

/// Jobs the hostile session keeps running.
const HOSTILE_JOBS: usize = 12;

/// Trivial jobs timed, idle and beside the hostile session.
const SAMPLES: usize = 100;
