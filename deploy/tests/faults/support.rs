//! A lock that runs the tests one by one, jobs, and a steady load of jobs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use enclave_client::{Client, Execution, Job, Limits};
use tokio::sync::{Mutex, MutexGuard};

pub use enclave_deploy::{Project, docker};

/// Held for a whole test.
pub async fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::const_new(());
    LOCK.lock().await
}

/// A test's start: its turn, a project with `executors` executors, a client, and every
/// executor seen taking jobs.
pub async fn ready(executors: usize) -> (MutexGuard<'static, ()>, Project, Client) {
    let serial = one_at_a_time().await;
    let project = Project::up(executors, &[]).await.unwrap();
    let client = project.client().await.unwrap();
    until_every_executor_works(&project, &client, Duration::from_secs(30)).await;
    (serial, project, client)
}

pub fn job(code: &str, timeout: Duration) -> Job {
    Job {
        code: code.into(),
        limits: Some(Limits {
            timeout_ms: Some(timeout.as_millis() as u64),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A job that keeps a core busy for `busy`, then returns "done".
pub fn busy(busy: Duration) -> Job {
    job(
        &format!(
            "const end = Date.now() + {}; while (Date.now() < end) {{}} return 'done'",
            busy.as_millis()
        ),
        busy + Duration::from_secs(10),
    )
}

pub async fn trivial(client: &Client) -> Result<(), String> {
    check(
        client
            .execute_job(job("return 6 * 7", Duration::from_secs(5)))
            .await,
    )
}

/// `Ok` for a job that returned what [`trivial`] or [`busy`] return.
pub fn check(run: Result<Execution, enclave_client::ClientError>) -> Result<(), String> {
    match run {
        Ok(execution) => match execution.result {
            Ok(value) if value == serde_json::json!(42) || value == "done" => Ok(()),
            Ok(other) => Err(format!("unexpected result {other}")),
            Err(failure) => Err(format!("{}: {}", failure.code_name(), failure.message)),
        },
        Err(e) => Err(format!("client error: {e}")),
    }
}

/// Runs jobs until every executor container has finished one, so that the broker is
/// known to use them all; returns how long that took.
pub async fn until_every_executor_works(
    project: &Project,
    client: &Client,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let counts = project.jobs_by_executor().await.unwrap();
        if !counts.is_empty() && counts.iter().all(|(_, n)| *n > 0) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "not every executor took a job within {within:?}: {counts:?}"
        );
        spread_jobs(client).await;
    }
}

/// Eight concurrent jobs that each hold a slot a little, so that they spread over the
/// executors; each must succeed.
pub async fn spread_jobs(client: &Client) {
    let batch: Vec<_> = (0..8)
        .map(|_| client.execute_job(busy(Duration::from_millis(20))))
        .collect();
    for run in futures::future::join_all(batch).await {
        check(run).unwrap();
    }
}

/// Trivial jobs at a steady rate on one client, counting what failed and why.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
    started: Instant,
}

impl Load {
    pub fn start(client: Client, per_second: u32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut running = tokio::task::JoinSet::new();
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let (client, ok, failures) = (client.clone(), ok.clone(), failures.clone());
                    running.spawn(async move {
                        match trivial(&client).await {
                            Ok(()) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                    });
                    while running.try_join_next().is_some() {}
                }
                while running.join_next().await.is_some() {}
            }
        });
        Load {
            stop,
            ok,
            failures,
            task,
            started: Instant::now(),
        }
    }

    /// Stops and waits for the jobs in flight: (succeeded, failures, jobs per second).
    pub async fn finish(self) -> (u64, Vec<String>, f64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let ok = self.ok.load(Ordering::Relaxed);
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        let rate = (ok as f64 + failures.len() as f64) / self.started.elapsed().as_secs_f64();
        (ok, failures, rate)
    }
}
