//! The remote pool: retry before start, health, DNS, and what happens when an executor
//! dies or stalls mid-job.

use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use enclave_broker::config::{ExecutorsConfig, JobsConfig};
use enclave_broker::pool::Health;
use enclave_broker::tools::{Tool, ToolContext, ToolFuture, ToolSpec};
use enclave_broker::{Broker, FailureKind, RemotePool, Tools};
use enclave_executor::SandboxConfig;
use enclave_proto::v1::{
    ConsoleEvent, RunEvent, RunRequest,
    executor_client::ExecutorClient,
    executor_server::{Executor, ExecutorServer},
    run_event::Event,
    run_request::Msg,
};
use futures::Stream;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::support::*;

fn tools() -> Tools {
    Tools::from_config(&Default::default()).unwrap()
}

async fn pool_broker(config: ExecutorsConfig) -> (Broker, RemotePool) {
    let pool = RemotePool::new(config).await;
    (
        Broker::new(tools(), Arc::new(pool.clone()), JobsConfig::default()),
        pool,
    )
}

/// Takes executor `addr`'s only slot: a job waiting for a tool result that never comes.
/// The slot is held until the returned sender is dropped (or 20 s pass).
async fn occupy(addr: std::net::SocketAddr) -> (mpsc::Sender<RunRequest>, Streaming<RunEvent>) {
    let mut client = ExecutorClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(RunRequest {
        msg: Some(Msg::Job(job_with_timeout(
            "await callTool('echo', 1)",
            20_000,
        ))),
    })
    .await
    .unwrap();
    let mut events = client
        .run(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // Wait until it is really running.
    let first = events.message().await.unwrap().unwrap();
    assert!(matches!(first.event, Some(Event::ToolCall(_))), "{first:?}");
    (tx, events)
}

#[tokio::test]
async fn a_job_refused_by_a_full_executor_runs_on_another() {
    let full = start_executor(1);
    let _held = occupy(full).await;
    let (broker, _) = pool_broker(executors(&[full, shared_executor()])).await;
    // Ties are broken at random, so the full executor is picked first about half the
    // time; every one of these jobs must still succeed.
    for i in 0..16 {
        let run = run_code(&broker, &format!("return {i}")).await;
        assert_eq!(run.result(), json!(i));
    }
    // Without retries, some would have failed: the full one really was tried.
    let (no_retry, _) = pool_broker(ExecutorsConfig {
        max_start_attempts: 1,
        ..executors(&[full, shared_executor()])
    })
    .await;
    let mut busy = 0;
    for _ in 0..16 {
        if let Err(f) = run_code(&no_retry, "return 1").await.outcome {
            assert_eq!(f.kind, FailureKind::Busy, "{f:?}");
            busy += 1;
        }
    }
    assert!(busy > 0, "the full executor was never picked");
    // Only the full executor: busy, at once.
    let (only_full, _) = pool_broker(executors(&[full])).await;
    let run = run_code(&only_full, "return 1").await;
    assert_eq!(run.failure().kind, FailureKind::Busy);
    assert!(
        run.failure().message.contains("maximum"),
        "{:?}",
        run.failure()
    );
}

#[tokio::test]
async fn a_job_runs_on_another_executor_when_one_is_down() {
    let dead = dead_port();
    let (broker, pool) = pool_broker(executors(&[dead, shared_executor()])).await;
    for i in 0..8 {
        let run = run_code(&broker, &format!("return {i}")).await;
        assert_eq!(run.result(), json!(i));
    }
    let status = pool.executors();
    let dead_status = status
        .iter()
        .find(|s| s.endpoint == format!("http://{dead}"))
        .unwrap();
    assert!(
        matches!(dead_status.health, Health::Down { .. }),
        "{status:?}"
    );

    let (only_dead, _) = pool_broker(executors(&[dead])).await;
    let started = Instant::now();
    let run = run_code(&only_dead, "return 1").await;
    assert_eq!(run.failure().kind, FailureKind::Unavailable);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn executors_found_by_dns_name() {
    let addr = shared_executor();
    let config = ExecutorsConfig {
        dns: Some(format!("localhost:{}", addr.port())),
        ..executors(&[])
    };
    let (broker, pool) = pool_broker(config).await;
    assert!(
        pool.executors()
            .iter()
            .any(|s| s.endpoint == format!("http://{addr}")),
        "{:?}",
        pool.executors()
    );
    // localhost may also resolve to ::1, where nothing listens: the job moves on.
    for _ in 0..4 {
        assert_eq!(
            run_code(&broker, "return 'found'").await.result(),
            json!("found")
        );
    }
}

#[tokio::test]
async fn a_draining_executor_is_skipped_and_counted_as_draining() {
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let draining = start_executor_with(
        SandboxConfig {
            max_concurrent_jobs: 4,
            ..Default::default()
        },
        Some(stopped),
    );
    let config = ExecutorsConfig {
        health_interval_ms: 100,
        ..executors(&[draining])
    };
    let (broker, pool) = pool_broker(config).await;
    assert_eq!(run_code(&broker, "return 1").await.result(), json!(1));
    assert!(pool_metrics(&broker).contains("enclave_broker_executors{state=\"healthy\"} 1"));
    // A running job keeps the executor draining (not yet gone) until it ends.
    let held = occupy(draining).await;
    stop.send(()).unwrap();
    let started = Instant::now();
    // Told apart from an executor that cannot be reached: it answers NOT_SERVING.
    while !matches!(pool.executors()[0].health, Health::Draining { .. }) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never marked draining: {:?}",
            pool.executors()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = pool_metrics(&broker);
    assert!(
        metrics.contains("enclave_broker_executors{state=\"draining\"} 1")
            && metrics.contains("enclave_broker_executors{state=\"healthy\"} 0")
            && metrics.contains("enclave_broker_executors{state=\"unhealthy\"} 0"),
        "{metrics}"
    );
    // Skipped: a new job finds no executor to take it, and the executor stays draining.
    let refused = run_code(&broker, "return 1").await;
    assert_eq!(refused.failure().kind, FailureKind::Unavailable);
    assert!(matches!(
        pool.executors()[0].health,
        Health::Draining { .. }
    ));
    drop(held);
}

/// The pool's metrics as `/metrics` shows them.
fn pool_metrics(broker: &enclave_broker::Broker) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(enclave_broker::metrics::PoolMetrics(
        broker.backend().clone(),
    )));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text
}

// ---- Executors that die or misbehave mid-job -------------------------------------------

/// Tells the test the job is running, then answers.
struct Started(mpsc::Sender<()>);

impl Tool for Started {
    fn call<'a>(&'a self, _cx: &'a ToolContext<'a>, _args: serde_json::Value) -> ToolFuture<'a> {
        Box::pin(async move {
            let _ = self.0.send(()).await;
            Ok(serde_json::Value::Null)
        })
    }
}

/// The `enclave-executor` binary of this test's own target dir and profile, built by
/// `cargo test --workspace` (a test that built it would use other features than the
/// test build and make the next one rebuild everything).
fn executor_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/<profile>/deps/it-<hash>
    let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
    let bin = profile_dir.join("enclave-executor");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        bin.display()
    );
    bin
}

/// Starts the real executor binary on a free port and returns it with its address,
/// read from its start-up log line (on stdout or stderr).
async fn spawn_executor_process() -> (tokio::process::Child, std::net::SocketAddr) {
    let mut child = tokio::process::Command::new(executor_binary())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--max-jobs",
            "4",
            "--drain-grace-secs",
            "1",
        ])
        .env("ENCLAVE_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (lines_tx, mut lines) = mpsc::unbounded_channel();
    let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    // Forwards every line (and keeps the pipes drained so the child never blocks).
    for mut output in [Box::new(stdout) as Box<dyn LineSource>, Box::new(stderr)] {
        let lines_tx = lines_tx.clone();
        tokio::spawn(async move {
            while let Some(line) = output.next().await {
                let _ = lines_tx.send(line);
            }
        });
    }
    drop(lines_tx);
    let addr = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.recv().await {
            let plain = strip_ansi(&line);
            if plain.contains("executor serving") {
                let addr = plain
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .unwrap();
                return addr.parse::<std::net::SocketAddr>().unwrap();
            }
        }
        panic!("the executor exited before serving");
    })
    .await
    .expect("executor started within 120 s");
    (child, addr)
}

/// Lines of a child's stdout or stderr.
trait LineSource: Send {
    fn next(&mut self) -> Pin<Box<dyn std::future::Future<Output = Option<String>> + Send + '_>>;
}

impl<R: tokio::io::AsyncBufRead + Unpin + Send> LineSource for tokio::io::Lines<R> {
    fn next(&mut self) -> Pin<Box<dyn std::future::Future<Output = Option<String>> + Send + '_>> {
        Box::pin(async move { self.next_line().await.ok().flatten() })
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test]
async fn killing_the_executor_process_mid_job_ends_it_with_executor_lost() {
    let (mut child, addr) = spawn_executor_process().await;
    let (started_tx, mut started_rx) = mpsc::channel(1);
    let mut tools = tools();
    tools
        .register(
            "started",
            Arc::new(Started(started_tx)),
            ToolSpec::any("a test tool"),
            Duration::from_secs(5),
        )
        .unwrap();
    let pool = RemotePool::new(executors(&[addr])).await;
    let broker = Broker::new(tools, Arc::new(pool), JobsConfig::default());
    // Runs for up to 30 s unless its executor dies.
    let job = job_with_timeout("await callTool('started', {}); while (true) {}", 30_000);
    let run = run(&broker, job);
    tokio::pin!(run);
    tokio::select! {
        _ = &mut run => panic!("the job ended before the executor was killed"),
        _ = started_rx.recv() => {}
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    child.start_kill().unwrap();
    let killed = Instant::now();
    let run = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("the job ended promptly");
    let elapsed = killed.elapsed();
    assert_eq!(
        run.failure().kind,
        FailureKind::ExecutorLost,
        "{:?}",
        run.outcome
    );
    assert_eq!(
        run.failure().to_job_error().code(),
        enclave_proto::v1::ErrorCode::ExecutorLost
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "took {elapsed:?} after the kill"
    );
    let _ = child.wait().await;
}

#[derive(Clone, Copy)]
enum Misbehaviour {
    /// Accepts the job, then says nothing, forever.
    Silent,
    /// Sends an event and closes the stream without a final event.
    EndsEarly,
    /// Skips an event number.
    Gap,
}

#[derive(Clone, Copy)]
struct FakeExecutor(Misbehaviour);

type EventStream = Pin<Box<dyn Stream<Item = Result<RunEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Executor for FakeExecutor {
    type RunStream = EventStream;

    async fn run(
        &self,
        request: Request<Streaming<RunRequest>>,
    ) -> Result<Response<EventStream>, Status> {
        let mut inbound = request.into_inner();
        inbound.message().await?;
        let console = |seq| {
            Ok(RunEvent {
                seq,
                event: Some(Event::Console(ConsoleEvent {
                    level: 1,
                    text: "hi".into(),
                })),
            })
        };
        let stream: EventStream = match self.0 {
            Misbehaviour::Silent => Box::pin(futures::stream::pending()),
            Misbehaviour::EndsEarly => Box::pin(futures::stream::iter([console(0)])),
            Misbehaviour::Gap => Box::pin(
                futures::stream::iter([console(0), console(2)]).chain(futures::stream::pending()),
            ),
        };
        Ok(Response::new(stream))
    }
}

use futures::StreamExt as _;

async fn start_fake(behaviour: Misbehaviour) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ExecutorServer::new(FakeExecutor(behaviour)))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

#[tokio::test]
async fn a_silent_executor_cannot_hang_the_caller() {
    let addr = start_fake(Misbehaviour::Silent).await;
    let pool = RemotePool::new(executors(&[addr])).await;
    let broker = Broker::new(
        tools(),
        Arc::new(pool),
        JobsConfig {
            deadline_margin_ms: 300,
            ..JobsConfig::default()
        },
    );
    let started = Instant::now();
    let run = run(&broker, job_with_timeout("return 1", 500)).await;
    let elapsed = started.elapsed();
    assert_eq!(
        run.failure().kind,
        FailureKind::Deadline,
        "{:?}",
        run.outcome
    );
    assert_eq!(
        run.failure().to_job_error().code(),
        enclave_proto::v1::ErrorCode::Timeout
    );
    assert!(
        elapsed >= Duration::from_millis(800) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn a_stream_that_ends_early_or_skips_an_event_is_executor_lost() {
    for behaviour in [Misbehaviour::EndsEarly, Misbehaviour::Gap] {
        let addr = start_fake(behaviour).await;
        let (broker, _) = pool_broker(executors(&[addr])).await;
        let started = Instant::now();
        let run = run_code(&broker, "return 1").await;
        assert_eq!(
            run.failure().kind,
            FailureKind::ExecutorLost,
            "{:?}",
            run.outcome
        );
        assert_eq!(
            run.console().len(),
            1,
            "the event before the break still reached the caller"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}

#[tokio::test]
async fn messages_up_to_the_executor_limit_get_through() {
    let (broker, _) = pool_broker(executors(&[shared_executor()])).await;
    let mut job =
        crate::support::job("console.log('y'.repeat(5 << 20)); return 'x'.repeat(6 << 20);");
    job.level = enclave_proto::v1::SecurityLevel::Permissive as i32;
    let run = run(&broker, job).await;
    // Above tonic's default 4 MiB decoding limit.
    assert_eq!(run.result().as_str().map(str::len), Some(6 << 20));
    assert_eq!(run.console()[0].text.len(), 5 << 20);
}
