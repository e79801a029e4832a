//! The real `enclave-broker` binary on a loopback port, and a raw protocol client that
//! can also misbehave (tamper, replay, reorder, splice) on purpose.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use enclave_proto::v1::{
    ExecuteRequest, ExecuteResult, HandshakeRequest, Job, RecordKind, SealedRecord, SecurityLevel,
    StreamEvent, Suite, broker_client::BrokerClient, handshake_request, handshake_response,
};
use enclave_proto::{
    ClientConfig, ClientHandshake, ClientSession, Fingerprint, IdentityKey, StreamOpener,
};
use prost::Message;
use tonic::transport::Channel;

pub fn temp_path(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "enclave-e2e-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Where the brokers these tests start keep the compiled guest snapshot.
pub fn snapshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("snapshots")
}

/// A broker child process, killed when dropped.
pub struct Broker {
    child: Child,
    pub addr: SocketAddr,
    pub fingerprint: Fingerprint,
    /// Its identity key file.
    pub identity: PathBuf,
    log: Arc<Mutex<String>>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    pub fn start(args: &[&str]) -> Broker {
        Broker::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Broker {
        Broker::spawn(
            Command::new(env!("CARGO_BIN_EXE_enclave-broker")),
            args,
            env,
        )
    }

    /// Another build of the broker (`ENCLAVE_BROKER_BIN`, for before/after figures), or
    /// this one.
    pub fn start_measured(args: &[&str]) -> Broker {
        let bin = std::env::var("ENCLAVE_BROKER_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_enclave-broker").to_owned());
        Broker::spawn(Command::new(bin), args, &[])
    }

    /// The broker under a file descriptor limit of `fds` (`ulimit -n`).
    pub fn start_with_fd_limit(args: &[&str], fds: u32) -> Broker {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {fds} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_enclave-broker"));
        Broker::spawn(command, args, &[])
    }

    fn spawn(mut command: Command, args: &[&str], env: &[(&str, &str)]) -> Broker {
        let identity = temp_path("broker.key");
        let mut child = command
            .args(["--listen", "127.0.0.1:0", "--identity"])
            .arg(&identity)
            // One compiled snapshot for every broker these tests start (compiling it
            // takes seconds).
            .arg("--snapshot-dir")
            .arg(snapshot_dir())
            .args(args)
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .env("ENCLAVE_LOG", "debug")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn enclave-broker");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    // Logged before it is announced: `log()` after `start` holds it.
                    {
                        let mut log = log.lock().unwrap();
                        log.push_str(&line);
                        log.push('\n');
                    }
                    if line.contains("broker serving") {
                        // Text (`name=value`) or `--log-format json`.
                        let json = serde_json::from_str::<serde_json::Value>(&line).ok();
                        let field = |name: &str| match &json {
                            Some(json) => json["fields"][name].as_str().map(str::to_owned),
                            None => line
                                .split(&format!("{name}="))
                                .nth(1)
                                .and_then(|s| s.split_whitespace().next())
                                .map(str::to_owned),
                        };
                        let _ = tx.send((field("addr"), field("fingerprint")));
                    }
                }
            });
        }
        let (addr, fingerprint) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("broker starts");
        Broker {
            child,
            addr: addr.expect("addr").parse().unwrap(),
            fingerprint: fingerprint.expect("fingerprint").parse().unwrap(),
            identity,
            log,
        }
    }

    /// The broker process's resident memory, in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    }

    /// Its "broker serving" log line.
    pub fn serving_line(&self) -> String {
        self.log()
            .lines()
            .find(|l| l.contains("broker serving"))
            .unwrap_or_default()
            .to_owned()
    }

    /// Everything the broker logged so far (at debug level).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// `GET /metrics` on the address the serving line gives (`--metrics-listen`).
    pub async fn scrape_metrics(&self) -> String {
        let line = self.serving_line();
        let addr = line
            .split("metrics_addr=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .expect("the serving line gives the metrics address");
        let answer = enclave_server::healthcheck::get(addr.parse().unwrap(), "/metrics")
            .await
            .unwrap();
        assert!(
            answer
                .head
                .to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{}",
            answer.head
        );
        answer.body
    }

    /// The log once it holds `needle` (a thread reads it from the broker's pipe, so a
    /// line written before an answer may be read after it), or as it is after 10 s.
    pub async fn log_with(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(needle) || std::time::Instant::now() > deadline {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn rpc(&self) -> BrokerClient<Channel> {
        BrokerClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
            .max_decoding_message_size(32 << 20)
            .max_encoding_message_size(32 << 20)
    }

    /// A connection from another loopback address (`127.0.0.2`, ...): another source,
    /// as far as the broker's per-source caps can tell.
    pub async fn rpc_from(&self, local: std::net::IpAddr) -> BrokerClient<Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .local_address(Some(local))
            .connect()
            .await
            .unwrap();
        BrokerClient::new(channel)
            .max_decoding_message_size(32 << 20)
            .max_encoding_message_size(32 << 20)
    }
}

/// Whether a log line has the field `field` (`name=value`, exactly).
pub fn has_field(line: &str, field: &str) -> bool {
    line.split_whitespace().any(|f| f == field)
}

pub fn job(code: &str) -> Job {
    Job {
        code: code.into(),
        level: SecurityLevel::Strict as i32,
        ..Default::default()
    }
}

/// A protocol client built directly on the protocol crate.
pub struct Raw {
    pub rpc: BrokerClient<Channel>,
    pub session: ClientSession,
}

impl Raw {
    pub async fn connect(broker: &Broker, suite: Suite) -> Raw {
        Raw::connect_as(broker, suite, None)
            .await
            .expect("handshake")
    }

    pub async fn connect_as(
        broker: &Broker,
        suite: Suite,
        identity: Option<&IdentityKey>,
    ) -> Result<Raw, tonic::Status> {
        Raw::connect_on(broker.rpc().await, broker, suite, identity).await
    }

    /// A new session over an existing connection (sessions are not connections).
    pub async fn connect_on(
        mut rpc: BrokerClient<Channel>,
        broker: &Broker,
        suite: Suite,
        identity: Option<&IdentityKey>,
    ) -> Result<Raw, tonic::Status> {
        let config = ClientConfig {
            suite,
            ..ClientConfig::new(broker.fingerprint)
        };
        let (handshake, hello) = ClientHandshake::start(&config).unwrap();
        let response = rpc
            .handshake(HandshakeRequest {
                step: Some(handshake_request::Step::ClientHello(hello)),
            })
            .await?
            .into_inner();
        let Some(handshake_response::Step::ServerHello(server_hello)) = response.step else {
            panic!("no ServerHello")
        };
        let mut session = handshake
            .finish(&server_hello)
            .map_err(tonic::Status::from)?;
        if let Some(key) = identity {
            let auth = session.authenticate(key).unwrap();
            rpc.handshake(HandshakeRequest {
                step: Some(handshake_request::Step::ClientAuth(auth)),
            })
            .await?;
        }
        Ok(Raw { rpc, session })
    }

    pub fn seal(&mut self, kind: RecordKind, job: Job) -> SealedRecord {
        let body = ExecuteRequest {
            job: Some(job),
            ..Default::default()
        }
        .encode_to_vec();
        self.session.channel().seal_request(kind, &body).unwrap()
    }

    pub async fn send(&mut self, record: SealedRecord) -> Result<ExecuteResult, tonic::Status> {
        self.send_request(tonic::Request::new(record)).await
    }

    /// [`Raw::send`] with the request's metadata as given (a `traceparent`, say).
    pub async fn send_request(
        &mut self,
        request: tonic::Request<SealedRecord>,
    ) -> Result<ExecuteResult, tonic::Status> {
        let seq = request.get_ref().seq;
        let reply = self.rpc.execute(request).await?.into_inner();
        let plain = self
            .session
            .channel()
            .open_reply(seq, RecordKind::ExecuteResult, &reply)
            .map_err(tonic::Status::from)?;
        Ok(ExecuteResult::decode(plain.as_slice()).unwrap())
    }

    pub async fn execute(&mut self, code: &str) -> Result<ExecuteResult, tonic::Status> {
        let record = self.seal(RecordKind::ExecuteRequest, job(code));
        self.send(record).await
    }

    /// Runs a streaming job; returns the opened events and the raw records.
    pub async fn stream(
        &mut self,
        code: &str,
    ) -> Result<(Vec<StreamEvent>, Vec<SealedRecord>), tonic::Status> {
        let record = self.seal(RecordKind::StreamRequest, job(code));
        let seq = record.seq;
        let mut stream = self.rpc.execute_stream(record).await?.into_inner();
        let mut opener = StreamOpener::new(seq);
        let (mut events, mut records) = (Vec::new(), Vec::new());
        while let Some(rec) = stream.message().await? {
            events.push(
                opener
                    .open(self.session.channel(), &rec)
                    .map_err(tonic::Status::from)?,
            );
            records.push(rec);
        }
        opener.finish().map_err(tonic::Status::from)?;
        Ok((events, records))
    }
}

/// The job's result as JSON, panicking with the failure otherwise.
pub fn value(result: &ExecuteResult) -> serde_json::Value {
    use enclave_proto::v1::{execute_result, final_event};
    match &result.outcome {
        Some(execute_result::Outcome::Final(f)) => match &f.outcome {
            Some(final_event::Outcome::ResultJson(json)) => serde_json::from_str(json).unwrap(),
            other => panic!("job failed: {other:?}"),
        },
        other => panic!("broker failed the job: {other:?}"),
    }
}
