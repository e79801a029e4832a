//! Broker benchmark: prints figures, asserts nothing.
//!
//! `cargo bench -p enclave-broker` measures, in one run, on loopback:
//! - handshakes/s over gRPC for X25519 and P-256;
//! - sealed `return 1+1` latency (p50/p99) through the broker and one remote executor;
//! - jobs/s with 64 concurrent clients, each on its own session;
//! - memory per idle session;
//! - what metrics and traces cost: sealed latency as deployed with `--metrics-listen` and
//!   `--otlp-endpoint` (exporting to a collector in this process) against without.
//!
//! Latency and throughput are measured with client, broker and executor in this one
//! process (sharing its two worker threads); as deployed, against the real
//! `enclave-broker` and `enclave-executor` binaries in processes of their own; and
//! against the `enclave-broker` binary alone, running jobs in its embedded executor.
//!
//! `cargo bench -p enclave-broker -- NAME` runs only the parts whose name contains NAME
//! (`handshakes`, `direct`, `one-process`, `deployed`, `embedded`, `memory`, `observed`), e.g. to
//! profile one; `BENCH_JOBS=N` sets how many sequential jobs the latency figures take (3,000).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use enclave_broker::service::BrokerService;
use enclave_broker::session::{SessionLimits, SessionStore};
use enclave_broker::{Broker, Config};
use enclave_executor::server::{ExecutorService, ServerConfig};
use enclave_executor::{Sandbox, SandboxConfig};
use enclave_proto::v1::{
    ExecuteRequest, ExecuteResult, HandshakeRequest, Job, RecordKind, RunRequest, Suite,
    broker_client::BrokerClient, executor_client::ExecutorClient, handshake_request,
    handshake_response, run_request,
};
use enclave_proto::{ClientConfig, ClientHandshake, ClientSession, Fingerprint, IdentityKey};
use prost::Message;
use tonic::transport::Channel;

#[path = "../tests/e2e/collector.rs"]
#[allow(dead_code)]
mod collector;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // The client loops run on a worker thread, as in any server-side caller: run on
    // `block_on`'s own thread, every reply would cross threads (~20 µs per wake-up here).
    rt.block_on(async { tokio::spawn(bench()).await.unwrap() });
}

/// Whether the part called `name` was asked for (all of them without a filter).
fn wanted(name: &str) -> bool {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()))
}

async fn bench() {
    if ["handshakes", "direct", "one-process"]
        .into_iter()
        .any(wanted)
    {
        in_process().await;
    }
    if wanted("deployed") {
        separate_processes(true).await;
    }
    if wanted("embedded") {
        separate_processes(false).await;
    }
    if wanted("memory") {
        idle_session_memory();
    }
    if wanted("observed") {
        observability_overhead().await;
    }
}

/// Sealed latency as deployed (broker + 1 remote executor) with metrics and traces on,
/// against the same deployment without: rounds alternate between the two, so that the
/// machine's drift hits both alike.
async fn observability_overhead() {
    let collector = collector::Collector::start().await;
    let otlp = collector.endpoint();
    let observed = [
        "--metrics-listen",
        "127.0.0.1:0",
        "--otlp-endpoint",
        otlp.as_str(),
    ];
    let plain = Deployed::start_with(None, true, &[]);
    let traced = Deployed::start_with(None, true, &observed);
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..5 {
        for (deployed, p50s, name) in [(&plain, &mut off, "off"), (&traced, &mut on, "on")] {
            let processes = [
                ("broker", deployed.children.last().unwrap().id()),
                ("executor", deployed.children[0].id()),
            ];
            let label = format!("observed, metrics and traces {name}, round {}", round + 1);
            let rpc = connect(deployed.broker).await;
            p50s.push(sequential_latency(&label, rpc, deployed.fingerprint, &processes).await);
        }
    }
    let median = |p50s: &mut Vec<f64>| {
        p50s.sort_by(f64::total_cmp);
        p50s[p50s.len() / 2]
    };
    let (off, on) = (median(&mut off), median(&mut on));
    println!(
        "[observed] p50 with metrics and traces on {on:.0} µs, off {off:.0} µs: {:+.1}% ({} spans exported)",
        (on / off - 1.0) * 100.0,
        collector.spans().len()
    );
}

/// Client, broker and executor in this process; they stay up (idle) until it exits.
async fn in_process() {
    let executor = start_executor().await;
    let identity = Arc::new(IdentityKey::generate().unwrap());
    let pin = identity.fingerprint();
    let mut config = Config::default();
    config.executors.endpoints = vec![format!("http://{executor}")];
    let broker = Arc::new(Broker::from_config(&config).await.unwrap());
    let sessions = Arc::new(SessionStore::new(SessionLimits::default()));
    let service = BrokerService::new(
        broker,
        sessions,
        enclave_proto::ServerConfig::new(identity.clone()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(enclave_broker::server::serve(
        listener,
        service,
        std::future::pending(),
    ));
    let rpc = connect(addr).await;

    let suites = [
        ("X25519", Suite::X25519Ed25519Aes256gcmSha256),
        ("P-256", Suite::P256Ed25519Aes256gcmSha256),
    ];
    for (name, suite) in suites.into_iter().filter(|_| wanted("handshakes")) {
        let per_task = 500;
        let tasks = 8;
        let started = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let rpc = rpc.clone();
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        handshake(rpc.clone(), pin, suite).await;
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
        println!(
            "handshakes/s over gRPC, {name}: {:.0} ({tasks} concurrent)",
            (tasks * per_task) as f64 / started.elapsed().as_secs_f64()
        );
    }

    if wanted("direct") {
        direct_hop(executor).await;
    }
    if wanted("one-process") {
        let this = vec![("this process", std::process::id())];
        latency_and_throughput("one process, broker + 1 remote executor", addr, pin, &this).await;
    }
}

/// The real binaries in processes of their own: the broker and a remote executor, or
/// (`remote_executor` false) the broker alone running jobs in its embedded executor, as
/// `cargo run -p enclave-broker` starts it. Default runtimes (a worker per core in each
/// server), then one worker each: on a small machine the wake-ups between sibling
/// workers cost more than the job.
async fn separate_processes(remote_executor: bool) {
    let setup = if remote_executor {
        "separate processes, broker + 1 remote executor"
    } else {
        "broker alone, embedded executor"
    };
    for worker_threads in [None, Some(1)] {
        let deployed = Deployed::start(worker_threads, remote_executor);
        // The broker starts last.
        let mut processes = vec![
            ("client", std::process::id()),
            ("broker", deployed.children.last().unwrap().id()),
        ];
        if remote_executor {
            processes.push(("executor", deployed.children[0].id()));
        }
        let label = match worker_threads {
            Some(n) => format!("{setup}, --worker-threads {n}"),
            None => setup.to_owned(),
        };
        latency_and_throughput(&label, deployed.broker, deployed.fingerprint, &processes).await;
    }
}

/// The remote hop alone: the executor's own gRPC stream, no broker, no sealing.
async fn direct_hop(executor: SocketAddr) {
    let mut client = ExecutorClient::connect(format!("http://{executor}"))
        .await
        .unwrap();
    let mut samples: Vec<Duration> = Vec::new();
    for i in 0..3300 {
        let started = Instant::now();
        let job = RunRequest {
            msg: Some(run_request::Msg::Job(Job {
                code: "return 1+1".into(),
                ..Default::default()
            })),
        };
        let mut events = client
            .run(tokio_stream::iter([job]))
            .await
            .unwrap()
            .into_inner();
        while events.message().await.unwrap().is_some() {}
        if i >= 300 {
            samples.push(started.elapsed());
        }
    }
    samples.sort();
    println!(
        "[one process] for comparison, `return 1+1` straight to the executor (gRPC, unsealed): p50 {:.0} µs",
        samples[samples.len() / 2].as_secs_f64() * 1e6
    );
}

async fn latency_and_throughput(
    setup: &str,
    broker: SocketAddr,
    pin: Fingerprint,
    processes: &[(&'static str, u32)],
) {
    // Latency, one client, sequential: first as a task of this multi-thread runtime, then
    // as the only task of a current-thread runtime. The difference is the client's own
    // cost of waking a second worker thread for every reply (~20 µs per wake-up here).
    let rpc = connect(broker).await;
    sequential_latency(
        &format!("{setup}, client on 2 worker threads"),
        rpc.clone(),
        pin,
        processes,
    )
    .await;
    let label = format!("{setup}, client on 1 thread");
    let processes = processes.to_vec();
    // Its own thread, awaited without blocking this worker (a blocked worker can strand
    // the tasks queued on it, the servers' among them).
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                sequential_latency(&label, connect(broker).await, pin, &processes).await
            })
    })
    .await
    .unwrap();

    // Throughput, 64 concurrent clients.
    let clients = 64;
    let duration = Duration::from_secs(5);
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let rpc = rpc.clone();
            tokio::spawn(async move {
                let mut client = Sealed::new(rpc, pin).await;
                let mut done = 0u64;
                while started.elapsed() < duration {
                    client.execute("return 1+1").await;
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.await.unwrap();
    }
    println!(
        "[{setup}] jobs/s with {clients} concurrent clients (own sessions): {:.0}",
        total as f64 / started.elapsed().as_secs_f64()
    );
}

/// Sealed `return 1+1` jobs one after the other: p50/p99, and the CPU time each of
/// `processes` spent per job. Returns the p50 in µs.
async fn sequential_latency(
    label: &str,
    rpc: BrokerClient<Channel>,
    pin: Fingerprint,
    processes: &[(&str, u32)],
) -> f64 {
    let mut client = Sealed::new(rpc, pin).await;
    for _ in 0..300 {
        client.execute("return 1+1").await;
    }
    let mut samples: Vec<Duration> = Vec::new();
    let cpu_before: Vec<Duration> = processes.iter().map(|(_, pid)| cpu_time(*pid)).collect();
    // BENCH_JOBS lengthens the run, e.g. to attach a profiler.
    let jobs: usize = std::env::var("BENCH_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3000);
    for _ in 0..jobs {
        let t = Instant::now();
        client.execute("return 1+1").await;
        samples.push(t.elapsed());
    }
    let cpu: Vec<String> = processes
        .iter()
        .zip(cpu_before)
        .map(|((name, pid), before)| {
            let per_job = (cpu_time(*pid) - before).as_secs_f64() * 1e6 / samples.len() as f64;
            format!("{name} {per_job:.0} µs")
        })
        .collect();
    samples.sort();
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
    println!(
        "[{label}] sealed `return 1+1` through the broker: p50 {:.0} µs, p99 {:.0} µs ({} jobs)",
        pct(0.5),
        pct(0.99),
        samples.len()
    );
    // Latency well above the CPU time spent means the job waits: on wake-ups between
    // threads and processes, not on work.
    println!("    CPU time per job: {}", cpu.join(", "));
    pct(0.5)
}

async fn connect(addr: SocketAddr) -> BrokerClient<Channel> {
    BrokerClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

/// The real binaries, each in its own process, as `docker compose` runs them: the
/// broker with one remote executor. Killed when dropped.
struct Deployed {
    children: Vec<Child>,
    broker: SocketAddr,
    fingerprint: Fingerprint,
    _dir: TempDir,
}

impl Deployed {
    /// The broker, and before it a remote executor if `remote_executor` (the broker's
    /// embedded one otherwise).
    fn start(worker_threads: Option<usize>, remote_executor: bool) -> Deployed {
        Deployed::start_with(worker_threads, remote_executor, &[])
    }

    /// [`Deployed::start`] with `args` given to both binaries.
    fn start_with(worker_threads: Option<usize>, remote_executor: bool, args: &[&str]) -> Deployed {
        let dir = TempDir::new();
        let mut children = Vec::new();
        let workers = |command: &mut Command| {
            if let Some(n) = worker_threads {
                command.env("ENCLAVE_WORKER_THREADS", n.to_string());
            }
        };
        let mut broker = Command::new(env!("CARGO_BIN_EXE_enclave-broker"));
        broker
            .args([
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "off",
                "--identity",
            ])
            .arg(dir.0.join("broker.key"))
            .args(args);
        workers(&mut broker);
        if remote_executor {
            let mut executor = Command::new(executor_binary());
            workers(executor.args(["--listen", "127.0.0.1:0"]).args(args));
            let line = spawn_until(
                &mut executor,
                &dir.0.join("executor.log"),
                "executor serving",
                &mut children,
            );
            broker
                .arg("--executor")
                .arg(format!("http://{}", field(&line, "addr")));
        }
        let line = spawn_until(
            &mut broker,
            &dir.0.join("broker.log"),
            "broker serving",
            &mut children,
        );
        Deployed {
            children,
            broker: field(&line, "addr").parse().unwrap(),
            fingerprint: field(&line, "fingerprint").parse().unwrap(),
            _dir: dir,
        }
    }
}

impl Drop for Deployed {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `command` with its log going to `log` (a file, as a deployment would keep
/// it: a pipe read here would wake this process for every per-job line and bill that
/// to the latency) and waits for a line containing `ready`.
fn spawn_until(
    command: &mut Command,
    log: &Path,
    ready: &str,
    children: &mut Vec<Child>,
) -> String {
    let file = std::fs::File::create(log).unwrap();
    let child = command
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("starting a binary");
    children.push(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(ready)) {
            return line.to_string();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{} did not log {ready:?} within 120 s",
        command.get_program().display()
    );
}

fn field(line: &str, name: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
        .to_string()
}

/// `enclave-executor`, built for this profile in this target directory (cargo builds
/// only this package's binaries for its benches; a no-op when up to date).
fn executor_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/<profile>/deps/broker-<hash>
    let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "enclave-executor",
            "--bin",
            "enclave-executor",
            "--target-dir",
        ])
        .arg(profile_dir.parent().unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "building enclave-executor failed");
    profile_dir.join("enclave-executor")
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("enclave-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start_executor() -> SocketAddr {
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = ExecutorService::new(sandbox, ServerConfig::default());
    tokio::spawn(enclave_executor::server::serve(
        listener,
        service,
        std::future::pending(),
    ));
    addr
}

async fn handshake(
    mut rpc: BrokerClient<Channel>,
    pin: Fingerprint,
    suite: Suite,
) -> ClientSession {
    let config = ClientConfig {
        suite,
        ..ClientConfig::new(pin)
    };
    let (handshake, hello) = ClientHandshake::start(&config).unwrap();
    let response = rpc
        .handshake(HandshakeRequest {
            step: Some(handshake_request::Step::ClientHello(hello)),
        })
        .await
        .unwrap()
        .into_inner();
    let Some(handshake_response::Step::ServerHello(server_hello)) = response.step else {
        panic!("no ServerHello")
    };
    handshake.finish(&server_hello).unwrap()
}

struct Sealed {
    rpc: BrokerClient<Channel>,
    session: ClientSession,
}

impl Sealed {
    async fn new(rpc: BrokerClient<Channel>, pin: Fingerprint) -> Sealed {
        let session = handshake(rpc.clone(), pin, Suite::X25519Ed25519Aes256gcmSha256).await;
        Sealed { rpc, session }
    }

    async fn execute(&mut self, code: &str) -> ExecuteResult {
        let job = Job {
            code: code.into(),
            ..Default::default()
        };
        let record = self
            .session
            .channel()
            .seal_request(
                RecordKind::ExecuteRequest,
                &ExecuteRequest {
                    job: Some(job),
                    ..Default::default()
                }
                .encode_to_vec(),
            )
            .unwrap();
        let seq = record.seq;
        let reply = self.rpc.execute(record).await.unwrap().into_inner();
        let plain = self
            .session
            .channel()
            .open_reply(seq, RecordKind::ExecuteResult, &reply)
            .unwrap();
        ExecuteResult::decode(plain.as_slice()).unwrap()
    }
}

/// CPU time all threads of `pid` have had so far (scheduler accounting, ns precision).
fn cpu_time(pid: u32) -> Duration {
    let mut total = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            total += stat
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(total)
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

/// Sessions straight into a store (no transport): the memory the broker holds for a
/// session nobody is using.
fn idle_session_memory() {
    const N: usize = 100_000;
    let identity = Arc::new(IdentityKey::generate().unwrap());
    let server = enclave_proto::ServerConfig::new(identity.clone());
    let store = SessionStore::new(SessionLimits {
        max_sessions: N + 1,
        max_unused: N + 1,
        ..SessionLimits::default()
    });
    // Client hellos made first, so only the broker's side is counted.
    let hellos: Vec<_> = (0..N)
        .map(|_| {
            ClientHandshake::start(&ClientConfig::new(identity.fingerprint()))
                .unwrap()
                .1
        })
        .collect();
    let before = rss_bytes();
    for hello in &hellos {
        let (session, _) = enclave_proto::handshake::accept(&server, hello).unwrap();
        store.insert(session, None).unwrap();
    }
    let after = rss_bytes();
    println!(
        "memory per idle session: {:.0} bytes ({N} sessions, RSS {:.1} -> {:.1} MiB)",
        (after.saturating_sub(before)) as f64 / N as f64,
        before as f64 / (1 << 20) as f64,
        after as f64 / (1 << 20) as f64
    );
    drop(hellos);
}
