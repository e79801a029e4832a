//! An executor lost mid-job: killed (its connections close at once) or cut off from the
//! network (nothing closes; the broker's HTTP/2 keepalive notices).

use std::time::{Duration, Instant};

use enclave_client::Client;

use crate::support::*;

type LongJob = tokio::task::JoinHandle<(Result<(), String>, Instant)>;

/// Starts one busy job per executor (the broker sends a job to the executor with the
/// fewest in flight, so two at once land on two executors), lets them run, and returns
/// them with the executor container to break.
async fn two_long_jobs(
    project: &Project,
    client: &Client,
    busy_for: Duration,
) -> (Vec<LongJob>, String) {
    let jobs = (0..2)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let run = client.execute_job(busy(busy_for)).await;
                (check(run), Instant::now())
            })
        })
        .collect();
    // Both running (a job starts within milliseconds; this leaves it ample time).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let victim = project.containers("executor").await.unwrap()[0].clone();
    (jobs, victim)
}

/// `docker kill` of an executor running a job: that job ends with EXECUTOR_LOST within
/// 1 s (the killed process's sockets are closed by the kernel, and the broker's stream
/// from it fails at once); the job on the other executor finishes; the next 200 jobs
/// all succeed.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_executor_fails_only_its_own_job_at_once() {
    let (_serial, project, client) = ready(2).await;

    let (jobs, victim) = two_long_jobs(&project, &client, Duration::from_secs(4)).await;
    let kill_sent = Instant::now();
    docker(&["kill", &victim]).await.unwrap();
    let killed = Instant::now();

    let mut lost = Vec::new();
    let mut done = Vec::new();
    for job in jobs {
        let (result, ended) = job.await.unwrap();
        match result {
            Ok(()) => done.push(ended),
            Err(e) => lost.push((e, ended)),
        }
    }
    assert_eq!(
        done.len(),
        1,
        "the other executor's job must finish: {lost:?}"
    );
    assert_eq!(lost.len(), 1, "{lost:?}");
    let (error, ended) = &lost[0];
    assert!(error.starts_with("EXECUTOR_LOST"), "{error}");
    let after_kill = ended.saturating_duration_since(killed);
    println!(
        "kill -> EXECUTOR_LOST: {} ms after `docker kill` returned ({} ms after it was sent)",
        after_kill.as_millis(),
        ended.saturating_duration_since(kill_sent).as_millis()
    );
    assert!(after_kill < Duration::from_secs(1), "{after_kill:?}");

    let mut failed = Vec::new();
    for _ in 0..20 {
        let batch: Vec<_> = (0..10).map(|_| trivial(&client)).collect();
        failed.extend(
            futures::future::join_all(batch)
                .await
                .into_iter()
                .filter_map(Result::err),
        );
    }
    println!("200 jobs after the kill: {} failed", failed.len());
    assert!(failed.is_empty(), "{failed:?}");
}

/// An executor cut off (`docker network disconnect`) while it runs a job: the job ends
/// with EXECUTOR_LOST once the broker's keepalive gives up (a ping every 5 s, 5 s to
/// answer: at most about 10 s); new jobs meanwhile run on the other executor; connected
/// again, it takes jobs again.
#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_executor_is_detected_and_taken_back() {
    let (_serial, project, client) = ready(2).await;

    let (jobs, victim) = two_long_jobs(&project, &client, Duration::from_secs(20)).await;
    let network = project.executor_network();
    docker(&["network", "disconnect", "-f", &network, &victim])
        .await
        .unwrap();
    let cut = Instant::now();

    // New jobs while it is cut off: the other executor runs them.
    let mut failed = Vec::new();
    for _ in 0..20 {
        if let Err(e) = trivial(&client).await {
            failed.push(e);
        }
    }
    let mut lost = None;
    let mut finished = 0;
    for job in jobs {
        match job.await.unwrap() {
            (Ok(()), _) => finished += 1,
            (Err(e), ended) => lost = Some((e, ended.saturating_duration_since(cut))),
        }
    }
    let (error, detected) = lost.expect("the cut-off executor's job must fail");
    println!(
        "partition -> error: {} ms ({error}); 20 jobs meanwhile: {} failed",
        detected.as_millis(),
        failed.len()
    );
    assert_eq!(finished, 1);
    assert!(error.starts_with("EXECUTOR_LOST"), "{error}");
    assert!(detected < Duration::from_secs(12), "{detected:?}");
    assert!(failed.is_empty(), "{failed:?}");

    // With its DNS name again: a disconnect drops the container's aliases, which a real
    // partition would not.
    docker(&[
        "network", "connect", "--alias", "executor", &network, &victim,
    ])
    .await
    .unwrap();
    let connected = Instant::now();
    let before = jobs_on(&project, &victim).await;
    loop {
        spread_jobs(&client).await;
        if jobs_on(&project, &victim).await > before {
            break;
        }
        assert!(
            connected.elapsed() < Duration::from_secs(30),
            "the reconnected executor took no job within 30 s"
        );
    }
    println!(
        "reconnected -> first job on it: {} ms",
        connected.elapsed().as_millis()
    );
}

async fn jobs_on(project: &Project, container: &str) -> usize {
    project
        .jobs_by_executor()
        .await
        .unwrap()
        .into_iter()
        .find(|(id, _)| id == container)
        .map_or(0, |(_, n)| n)
}
