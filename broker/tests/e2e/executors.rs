//! The broker with remote executors: a job whose executor dies ends promptly.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use enclave_proto::v1::{ErrorCode, SealedRecord, Suite, execute_result, final_event};
use serde_json::json;

use crate::support::*;

/// `target/<profile>/enclave-executor`, built by `cargo test --workspace`.
fn executor_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = dir.join("enclave-executor");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        path.display()
    );
    path
}

/// An executor child process, killed when dropped.
pub struct Executor {
    pub child: Child,
    /// Its "executor serving" log line.
    pub serving: String,
}

impl Drop for Executor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_executor() -> (Executor, u16) {
    start_executor_with(&[], &[]).await
}

/// An executor serving on a loopback port, with these flags and environment.
pub async fn start_executor_with(args: &[&str], env: &[(&str, &str)]) -> (Executor, u16) {
    let port = free_port();
    let mut child = Command::new(executor_binary())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        // One compiled guest snapshot for every process the tests start.
        .env(
            "ENCLAVE_SNAPSHOT_DIR",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("snapshots"),
        )
        .spawn()
        .unwrap();
    // Read to the end, so that the executor never blocks on a full pipe.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("executor serving") {
                let _ = tx.send(line);
            }
        }
    });
    let serving = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("executor did not start");
    (Executor { child, serving }, port)
}

#[tokio::test]
async fn a_job_whose_executor_dies_ends_with_executor_lost() {
    let (mut executor, port) = start_executor().await;
    let broker = Broker::start(&["--executor", &format!("http://127.0.0.1:{port}")]);
    // Without `--worker-threads`, a worker per core (what the flag's tests differ from).
    let per_core = format!(
        "worker_threads={}",
        std::thread::available_parallelism().unwrap()
    );
    let serving = broker.serving_line();
    assert!(has_field(&serving, &per_core), "{serving}");
    assert!(
        has_field(&executor.serving, &per_core),
        "{}",
        executor.serving
    );
    let mut raw = Raw::connect(&broker, Suite::X25519Ed25519Aes256gcmSha256).await;
    assert_eq!(
        value(&raw.execute("return 'remote'").await.unwrap()),
        json!("remote")
    );

    let pending = Background::start(&mut raw, job("await null; while (true) {}"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    executor.child.kill().unwrap();
    let code = pending.error_code(&mut raw).await;
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(code, ErrorCode::ExecutorLost);
}

/// A sealed Execute request sent on a task of its own, so that the test can act while
/// the job runs.
struct Background {
    request_seq: u64,
    reply: tokio::task::JoinHandle<Result<tonic::Response<SealedRecord>, tonic::Status>>,
}

impl Background {
    fn start(raw: &mut Raw, job: enclave_proto::v1::Job) -> Background {
        let record = raw.seal(enclave_proto::v1::RecordKind::ExecuteRequest, job);
        let request_seq = record.seq;
        let mut rpc = raw.rpc.clone();
        let reply = tokio::spawn(async move { rpc.execute(record).await });
        Background { request_seq, reply }
    }

    /// The error code of the reply, which must be an error, in or out of band.
    async fn error_code(self, raw: &mut Raw) -> ErrorCode {
        let reply = self
            .reply
            .await
            .unwrap()
            .expect("the broker answers, sealed")
            .into_inner();
        let plain = raw
            .session
            .channel()
            .open_reply(
                self.request_seq,
                enclave_proto::v1::RecordKind::ExecuteResult,
                &reply,
            )
            .expect("opens");
        let result: enclave_proto::v1::ExecuteResult =
            prost::Message::decode(plain.as_slice()).unwrap();
        match result.outcome {
            Some(execute_result::Outcome::Error(e)) => e.code(),
            Some(execute_result::Outcome::Final(f)) => match f.outcome {
                Some(final_event::Outcome::Error(e)) => e.code(),
                other => panic!("{other:?}"),
            },
            None => panic!("empty result"),
        }
    }
}

/// On one worker thread (`--worker-threads 1`, a current-thread runtime) a script that
/// never yields by itself must still be stopped at its time limit, and must not hold
/// up another session's job meanwhile: the sandbox yields to the runtime at every epoch.
async fn one_worker_thread_still_interleaves_and_times_out(broker: &Broker) {
    let mut busy = Raw::connect(broker, Suite::X25519Ed25519Aes256gcmSha256).await;
    let mut other = Raw::connect(broker, Suite::X25519Ed25519Aes256gcmSha256).await;
    let limits = enclave_proto::v1::Limits {
        timeout_ms: Some(2_000),
        ..Default::default()
    };
    let started = Instant::now();
    let spinning = Background::start(
        &mut busy,
        enclave_proto::v1::Job {
            limits: Some(limits),
            ..job("while (true) {}")
        },
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        value(&other.execute("return 6 * 7").await.unwrap()),
        json!(42)
    );
    let interleaved = started.elapsed();
    assert!(
        interleaved < Duration::from_millis(1_500),
        "the second job waited for the busy one: {interleaved:?}"
    );
    let code = spinning.error_code(&mut busy).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "the busy job took {took:?}");
    assert_eq!(code, ErrorCode::Timeout);
}

#[tokio::test]
async fn one_worker_thread_embedded() {
    let broker = Broker::start(&["--worker-threads", "1"]);
    let serving = broker.serving_line();
    assert!(has_field(&serving, "worker_threads=1"), "{serving}");
    one_worker_thread_still_interleaves_and_times_out(&broker).await;
}

#[tokio::test]
async fn one_worker_thread_broker_and_executor() {
    let (executor, port) = start_executor_with(&["--worker-threads", "1"], &[]).await;
    assert!(
        has_field(&executor.serving, "worker_threads=1"),
        "{}",
        executor.serving
    );
    let broker = Broker::start(&[
        "--worker-threads",
        "1",
        "--executor",
        &format!("http://127.0.0.1:{port}"),
    ]);
    let serving = broker.serving_line();
    assert!(has_field(&serving, "worker_threads=1"), "{serving}");
    one_worker_thread_still_interleaves_and_times_out(&broker).await;
}
