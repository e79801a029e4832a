//! Executors come and go under load without a failed job: scaling up and down
//! (`--scale`), and restarting them one at a time (SIGTERM: the executor refuses new
//! jobs, which the broker retries elsewhere before they start, and finishes its own).

use std::time::{Duration, Instant};

use crate::support::*;

/// Jobs per second the load runs at.
const RATE: u32 = 60;

#[tokio::test(flavor = "multi_thread")]
async fn scaling_up_and_down_under_load_fails_no_job() {
    let (_serial, project, client) = ready(1).await;
    let load = Load::start(client.clone(), RATE);

    tokio::time::sleep(Duration::from_secs(2)).await;
    let scaled = Instant::now();
    project.scale_executors(3).await.unwrap();
    let up = scaled.elapsed();
    // The new executors are found by DNS (re-resolved every 5 s) and take jobs.
    loop {
        let counts = project.jobs_by_executor().await.unwrap();
        if counts.len() == 3 && counts.iter().all(|(_, n)| *n > 0) {
            break;
        }
        assert!(
            scaled.elapsed() < Duration::from_secs(30),
            "new executors took no job within 30 s: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let taking_jobs = scaled.elapsed();

    let down = Instant::now();
    project.scale_executors(1).await.unwrap();
    let removed = down.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ok, failed, rate) = load.finish().await;
    println!(
        "scale 1 -> 3: `up` took {} ms, all three took jobs {} ms after it started; \
         3 -> 1: {} ms; load {ok} jobs at {rate:.0}/s, {} failed",
        up.as_millis(),
        taking_jobs.as_millis(),
        removed.as_millis(),
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(rate >= 50.0, "the load ran at {rate:.0} jobs/s");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_under_load_fails_no_job() {
    let (_serial, project, client) = ready(3).await;
    let load = Load::start(client.clone(), RATE);

    let started = Instant::now();
    for id in project.containers("executor").await.unwrap() {
        docker(&["restart", "-t", "35", &id]).await.unwrap();
        project.wait_healthy(Duration::from_secs(60)).await.unwrap();
    }
    let restarted = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, failed, rate) = load.finish().await;
    println!(
        "rolling restart of 3 executors: {} ms; load {ok} jobs at {rate:.0}/s, {} failed",
        restarted.as_millis(),
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(rate >= 50.0, "the load ran at {rate:.0} jobs/s");
}
