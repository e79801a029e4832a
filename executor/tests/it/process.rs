//! The real `enclave-executor` binary: start-up, health, and draining on SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use enclave_proto::v1::{ErrorCode, RunRequest, SecurityLevel, run_event::Event, run_request::Msg};
use serde_json::json;
use tokio::sync::mpsc;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::support::*;

/// A child process that is killed if the test fails before it exits.
pub struct Executor {
    pub child: Child,
    pub addr: SocketAddr,
    /// Its "executor serving" log line.
    pub line: String,
}

impl Drop for Executor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Executor {
    pub fn start(extra: &[&str]) -> Executor {
        let mut child = Command::new(env!("CARGO_BIN_EXE_enclave-executor"))
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            // One compiled guest snapshot for every process the tests start.
            .env(
                "ENCLAVE_SNAPSHOT_DIR",
                std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("snapshots"),
            )
            .spawn()
            .expect("spawn enclave-executor");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && line.contains("executor serving") {
                    let addr = line
                        .split("addr=")
                        .nth(1)
                        .and_then(|s| s.split_whitespace().next())
                        .map(str::to_owned);
                    let _ = tx.send(addr.map(|addr| (addr, line.clone())));
                    sent = true;
                }
            }
        });
        let (addr, line) = rx
            .recv_timeout(Duration::from_secs(60))
            .ok()
            .flatten()
            .expect("executor announces its address");
        Executor {
            child,
            addr: addr.parse().unwrap(),
            line,
        }
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < within,
                "executor did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[tokio::test]
async fn health_metrics_and_a_job_on_the_real_binary() {
    let exec = Executor::start(&["--metrics-listen", "127.0.0.1:0"]);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", exec.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "enclave.v1.Executor"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.status(), ServingStatus::Serving, "{service}");
    }
    let t = run_with(
        &mut client_for(exec.addr).await,
        job("return 6 * 7"),
        Box::new(|c| Some(echo(c))),
    )
    .await
    .unwrap();
    assert_eq!(t.result(), json!(42));

    let metrics_addr = exec
        .line
        .split("metrics_addr=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("the serving line gives the metrics address");
    // `healthcheck` asks it, as a container runtime would; nothing serving fails it.
    let check = |listen: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_enclave-executor"))
            .args(["--listen", &listen, "healthcheck"])
            .output()
            .unwrap()
    };
    let ok = check(exec.addr.to_string());
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down = check(free.to_string());
    assert!(!down.status.success());
    assert!(String::from_utf8_lossy(&down.stderr).contains(&free.to_string()));

    let text = scrape(metrics_addr).await;
    for sample in [
        "enclave_executor_jobs_admitted_total 1",
        "enclave_executor_jobs_finished_total{outcome=\"OK\"} 1",
        "enclave_executor_jobs_running 0",
        "enclave_executor_draining 0",
        "enclave_executor_job_duration_seconds_count 1",
        // The health checks' connections and the job's; scrapes have connections of their own.
        "enclave_connections_accepted_total 3",
    ] {
        assert!(text.lines().any(|l| l == sample), "{sample} in\n{text}");
    }
}

/// `GET /metrics`, the body.
async fn scrape(addr: &str) -> String {
    enclave_server::healthcheck::get(addr.parse().unwrap(), "/metrics")
        .await
        .unwrap()
        .body
}

#[tokio::test]
async fn sigterm_drains_running_jobs_and_refuses_new_ones() {
    let mut exec = Executor::start(&[]);
    // A job waiting for its tool result while the executor is told to stop.
    let (tx, rx) = mpsc::channel(4);
    tx.send(RunRequest {
        msg: Some(Msg::Job(job(
            "const r = await callTool('echo', 'late'); return r",
        ))),
    })
    .await
    .unwrap();
    let mut stream = open_run(exec.addr, rx).await;
    let call = match stream.message().await.unwrap().unwrap().event {
        Some(Event::ToolCall(call)) => call,
        other => panic!("{other:?}"),
    };
    exec.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // New jobs are refused, by an executor that still answers (so that a broker retries
    // elsewhere at once), and its health says it is draining.
    match ExecutorClientConnect::try_job(exec.addr).await {
        Err(code) => assert_eq!(code, tonic::Code::Unavailable),
        Ok(()) => panic!("a new job was accepted while draining"),
    }
    let health = enclave_server::healthcheck::grpc(exec.addr, "enclave.v1.Executor").await;
    assert!(
        health.as_ref().is_err_and(|e| e.contains("NOT_SERVING")),
        "{health:?}"
    );

    // The running job still completes.
    tx.send(RunRequest {
        msg: Some(Msg::ToolResult(echo(&call))),
    })
    .await
    .unwrap();
    let mut last = None;
    while let Some(e) = stream.message().await.unwrap() {
        last = e.event;
    }
    match last {
        Some(Event::Final(f)) => {
            assert_eq!(
                f.outcome,
                Some(enclave_proto::v1::final_event::Outcome::ResultJson(
                    "\"late\"".into()
                ))
            )
        }
        other => panic!("{other:?}"),
    }
    // `wait_exit` blocks this test's runtime, so its client never answers the
    // executor's closing ping: the executor must not wait for it (5 s at most).
    assert!(exec.wait_exit(Duration::from_secs(10)).success());
}

#[tokio::test]
async fn jobs_still_running_after_the_grace_period_are_cancelled() {
    let mut exec = Executor::start(&["--drain-grace-secs", "1"]);
    let (tx, rx) = mpsc::channel(4);
    let spin = job_with(
        "console.log('go'); await null; while (true) {}",
        SecurityLevel::Permissive,
        Default::default(),
    );
    tx.send(RunRequest {
        msg: Some(Msg::Job(spin)),
    })
    .await
    .unwrap();
    let mut stream = open_run(exec.addr, rx).await;
    stream.message().await.unwrap().unwrap();
    let started = Instant::now();
    exec.terminate();
    let mut last = None;
    while let Ok(Some(e)) = stream.message().await {
        last = e.event;
    }
    let Some(Event::Final(f)) = last else {
        panic!("no final event")
    };
    let Some(enclave_proto::v1::final_event::Outcome::Error(e)) = f.outcome else {
        panic!("not an error")
    };
    assert_eq!(e.code(), ErrorCode::Cancelled);
    assert!(
        started.elapsed() >= Duration::from_millis(900)
            && started.elapsed() < Duration::from_secs(5)
    );
    assert!(exec.wait_exit(Duration::from_secs(10)).success());
    drop(tx);
}

struct ExecutorClientConnect;

impl ExecutorClientConnect {
    /// Tries a fresh connection and a job; the status code it fails with.
    async fn try_job(addr: SocketAddr) -> Result<(), tonic::Code> {
        let Ok(client) =
            enclave_proto::v1::executor_client::ExecutorClient::connect(format!("http://{addr}"))
                .await
        else {
            return Err(tonic::Code::Unavailable);
        };
        let mut client = client;
        run_with(&mut client, job("return 1"), Box::new(|_| None))
            .await
            .map(|_| ())
            .map_err(|s| s.code())
    }
}

/// `precompile` fills a snapshot directory that the next start loads instead of
/// compiling; a file that does not load (damaged, or from another build) is compiled
/// again and replaced, never trusted and never fatal.
#[tokio::test]
async fn a_precompiled_snapshot_is_loaded_and_a_damaged_one_replaced() {
    let dir = std::env::temp_dir().join(format!(
        "enclave-snapshot-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let dir_arg = dir.to_str().unwrap().to_owned();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_enclave-executor"))
        .args(["--snapshot-dir", &dir_arg, "precompile"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(file.starts_with(&dir) && file.is_file(), "{file:?}");

    let answers = |addr: SocketAddr| async move {
        let t = run_with(
            &mut client_for(addr).await,
            job("return [1, 2, 3].map(x => x * 2)"),
            Box::new(|c| Some(echo(c))),
        )
        .await
        .unwrap();
        assert_eq!(t.result(), json!([2, 4, 6]));
    };
    // Other flags than precompile's (the pool's size is not part of the compiled code).
    let exec = Executor::start(&["--snapshot-dir", &dir_arg, "--max-jobs", "8"]);
    assert!(exec.line.contains("snapshot=loaded"), "{}", exec.line);
    answers(exec.addr).await;

    std::fs::write(&file, b"\x7fELF not really a compiled module").unwrap();
    let exec = Executor::start(&["--snapshot-dir", &dir_arg]);
    assert!(exec.line.contains("snapshot=compiled"), "{}", exec.line);
    answers(exec.addr).await;
    let exec = Executor::start(&["--snapshot-dir", &dir_arg]);
    assert!(
        exec.line.contains("snapshot=loaded"),
        "the damaged file was not replaced: {}",
        exec.line
    );
    answers(exec.addr).await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}
