//! Executors on loopback ports (in-process servers, the real binary, and fakes that
//! misbehave), a tiny HTTP server for `http:fetch`, and a job runner that records
//! everything a caller would see.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use enclave_broker::config::{ExecutorsConfig, JobsConfig};
use enclave_broker::{Broker, JobEvent, JobFailure, RemotePool, Tools};
use enclave_executor::server::{ExecutorService, ServerConfig};
use enclave_executor::{Sandbox, SandboxConfig};
use enclave_proto::v1::{
    ConsoleEvent, ErrorCode, FinalEvent, Job, JobError, SecurityLevel, ToolCall, final_event,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Starts an executor server on its own thread and runtime (so it outlives any one
/// test's runtime) and returns its address. `shutdown` (if given) starts its drain.
pub fn start_executor_with(
    sandbox: SandboxConfig,
    shutdown: Option<tokio::sync::oneshot::Receiver<()>>,
) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let sandbox = Arc::new(Sandbox::new(sandbox).await.expect("sandbox starts"));
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let service = ExecutorService::new(sandbox, ServerConfig::default());
            let stop = async move {
                match shutdown {
                    Some(rx) => {
                        let _ = rx.await;
                    }
                    None => std::future::pending().await,
                }
            };
            enclave_executor::server::serve(listener, service, stop)
                .await
                .unwrap();
        });
    });
    rx.recv().expect("executor started")
}

pub fn start_executor(max_concurrent_jobs: u32) -> SocketAddr {
    start_executor_with(
        SandboxConfig {
            max_concurrent_jobs,
            ..SandboxConfig::default()
        },
        None,
    )
}

/// The executor most tests share.
pub fn shared_executor() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| start_executor(32))
}

/// The sandbox the embedded-mode tests share (building one compiles the guest).
pub async fn shared_sandbox() -> Arc<Sandbox> {
    static SANDBOX: tokio::sync::OnceCell<Arc<Sandbox>> = tokio::sync::OnceCell::const_new();
    SANDBOX
        .get_or_init(|| async {
            Arc::new(
                Sandbox::new(SandboxConfig {
                    max_concurrent_jobs: 8,
                    ..SandboxConfig::default()
                })
                .await
                .expect("sandbox starts"),
            )
        })
        .await
        .clone()
}

/// Pool settings for tests: quick to give up on a dead executor.
pub fn executors(endpoints: &[SocketAddr]) -> ExecutorsConfig {
    ExecutorsConfig {
        endpoints: endpoints.iter().map(|a| format!("http://{a}")).collect(),
        connect_timeout_ms: 500,
        start_timeout_ms: 2_000,
        ..ExecutorsConfig::default()
    }
}

pub async fn remote_broker(tools: Tools, endpoints: &[SocketAddr]) -> Broker {
    let pool = RemotePool::new(executors(endpoints)).await;
    Broker::new(tools, Arc::new(pool), JobsConfig::default())
}

/// A broker on the shared executor with these tools.
pub async fn broker(tools: Tools) -> Broker {
    remote_broker(tools, &[shared_executor()]).await
}

pub fn job(code: &str) -> Job {
    Job {
        code: code.into(),
        level: SecurityLevel::Standard as i32,
        ..Default::default()
    }
}

pub fn job_with_timeout(code: &str, timeout_ms: u64) -> Job {
    Job {
        limits: Some(enclave_proto::v1::Limits {
            timeout_ms: Some(timeout_ms),
            ..Default::default()
        }),
        ..job(code)
    }
}

/// Everything the caller of `run_job` saw.
#[derive(Debug)]
pub struct Run {
    pub events: Vec<JobEvent>,
    pub outcome: Result<FinalEvent, JobFailure>,
}

impl Run {
    pub fn final_event(&self) -> &FinalEvent {
        self.outcome.as_ref().unwrap_or_else(|f| {
            panic!(
                "job failed in the broker: {f:?}\nevents: {:#?}",
                self.events
            )
        })
    }

    pub fn result(&self) -> serde_json::Value {
        match &self.final_event().outcome {
            Some(final_event::Outcome::ResultJson(json)) => {
                serde_json::from_str(json).expect("result is JSON")
            }
            other => panic!("job failed: {other:?}\nevents: {:#?}", self.events),
        }
    }

    pub fn error(&self) -> &JobError {
        match &self.final_event().outcome {
            Some(final_event::Outcome::Error(e)) => e,
            other => panic!("job succeeded: {other:?}"),
        }
    }

    pub fn code(&self) -> ErrorCode {
        self.error().code()
    }

    pub fn failure(&self) -> &JobFailure {
        match &self.outcome {
            Err(f) => f,
            Ok(f) => panic!("job ran to its end: {f:?}"),
        }
    }

    pub fn console(&self) -> Vec<&ConsoleEvent> {
        self.events
            .iter()
            .filter_map(|e| match e {
                JobEvent::Console(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    pub fn tool_calls(&self) -> Vec<&ToolCall> {
        self.events
            .iter()
            .filter_map(|e| match e {
                JobEvent::ToolCall(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    /// `(name, error)` of every tool result event.
    pub fn tool_results(&self) -> Vec<(&str, Option<&str>)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                JobEvent::ToolResult { name, error, .. } => Some((name.as_str(), error.as_deref())),
                _ => None,
            })
            .collect()
    }
}

pub async fn run(broker: &Broker, job: Job) -> Run {
    let (tx, mut rx) = mpsc::channel(1024);
    let collect = async {
        let mut events = Vec::new();
        while let Some(event) = rx.recv().await {
            events.push(event);
        }
        events
    };
    let (outcome, events) = tokio::join!(broker.run_job(job, tx), collect);
    Run { events, outcome }
}

pub async fn run_code(broker: &Broker, code: &str) -> Run {
    run(broker, job(code)).await
}

/// A fresh directory for one test's files.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("enclave-broker-it-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A port nothing listens on.
pub fn dead_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

// ---- A minimal HTTP/1.1 server -------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Lower-case names.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send no Content-Length, close to end the body (tests caps that must count bytes).
    pub chunked_by_close: bool,
    pub delay: Duration,
}

impl Response {
    pub fn json(value: serde_json::Value) -> Response {
        Response {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: value.to_string().into_bytes(),
            chunked_by_close: false,
            delay: Duration::ZERO,
        }
    }
    pub fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.as_bytes().to_vec(),
            chunked_by_close: false,
            delay: Duration::ZERO,
        }
    }
    pub fn redirect(location: &str) -> Response {
        Response {
            headers: vec![("location".into(), location.into())],
            ..Response::text(302, "")
        }
    }
}

pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// An HTTP server on 127.0.0.1:0 that records requests and answers with `handler`.
pub struct HttpServer {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Request>>>,
}

impl HttpServer {
    pub async fn start(
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let recorded = requests.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve_one(socket, handler.clone(), recorded.clone()));
            }
        });
        HttpServer { addr, requests }
    }

    /// Answers every request with a JSON echo of what it received.
    pub async fn echo() -> HttpServer {
        HttpServer::start(|r| {
            Response::json(serde_json::json!({
                "method": r.method,
                "target": r.target,
                "headers": r.headers,
                "body": String::from_utf8_lossy(&r.body),
            }))
        })
        .await
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

async fn serve_one(
    mut socket: tokio::net::TcpStream,
    handler: Handler,
    recorded: Arc<Mutex<Vec<Request>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let target = first.next().unwrap_or_default().to_string();
    let mut headers = BTreeMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let request = Request {
        method,
        target,
        headers,
        body,
    };
    recorded.lock().unwrap().push(request.clone());
    let response = handler(&request);
    tokio::time::sleep(response.delay).await;
    let mut out = format!("HTTP/1.1 {} X\r\nconnection: close\r\n", response.status);
    for (k, v) in &response.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !response.chunked_by_close {
        out.push_str(&format!("content-length: {}\r\n", response.body.len()));
    }
    out.push_str("\r\n");
    let _ = socket.write_all(out.as_bytes()).await;
    let _ = socket.write_all(&response.body).await;
    let _ = socket.shutdown().await;
}
