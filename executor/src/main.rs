//! `enclave-executor`: serves the Executor gRPC service. Every flag also reads an
//! `ENCLAVE_*` environment variable.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use enclave_executor::server::{ExecutorService, ServerConfig};
use enclave_executor::{Limits, Sandbox, SandboxConfig};

#[derive(Parser, Debug)]
#[command(
    name = "enclave-executor",
    version,
    about = "Runs untrusted JavaScript jobs in fresh wasmtime instances"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Args,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Asks the executor serving on --listen (on loopback when that is every address)
    /// whether it serves, by gRPC health: exit status 0 if it does. For container
    /// health checks: the image needs no shell or client tool. Plaintext only.
    Healthcheck,
    /// Compiles the guest snapshot into --snapshot-dir and exits, so that executors
    /// started with that directory serve at once (image builds run it).
    Precompile,
}

#[derive(clap::Args, Debug)]
struct Args {
    /// Address to serve gRPC on.
    #[arg(long, env = "ENCLAVE_LISTEN", default_value = "127.0.0.1:7701")]
    listen: SocketAddr,
    /// Jobs running at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "ENCLAVE_MAX_JOBS", default_value_t = 256)]
    max_jobs: u32,
    /// Ceiling on any job's timeout, in milliseconds.
    #[arg(long, env = "ENCLAVE_MAX_TIMEOUT_MS", default_value_t = 60_000)]
    max_timeout_ms: u64,
    /// Ceiling on any job's heap, in MiB.
    #[arg(long, env = "ENCLAVE_MAX_MEMORY_MIB", default_value_t = 128)]
    max_memory_mib: u64,
    /// Native stack for wasm code in KiB; bounds script recursion depth.
    #[arg(long, env = "ENCLAVE_MAX_WASM_STACK_KIB", default_value_t = 512)]
    max_wasm_stack_kib: usize,
    /// MiB of memory kept resident between jobs, all instance slots together: that many
    /// 4 MiB slots start jobs faster (no page faults on what every job touches); jobs
    /// beyond them run in slots that give all their memory back. 0: none kept.
    #[arg(long, env = "ENCLAVE_MAX_RESIDENT_MIB", default_value_t = (enclave_executor::sandbox::DEFAULT_MAX_RESIDENT >> 20) as u64)]
    max_resident_mib: u64,
    /// Directory for the compiled guest snapshot: loaded at start when it fits this
    /// executor and machine, else compiled (seconds) and written there for the next
    /// start. Its files run as native code: keep it writable only by the operator.
    /// [default: none, compiled at every start]
    #[arg(long, env = "ENCLAVE_SNAPSHOT_DIR")]
    snapshot_dir: Option<PathBuf>,
    /// Largest script accepted, in KiB.
    #[arg(long, env = "ENCLAVE_MAX_CODE_KIB", default_value_t = 1024)]
    max_code_kib: usize,
    /// Seconds running jobs get to finish after SIGTERM.
    #[arg(long, env = "ENCLAVE_DRAIN_GRACE_SECS", default_value_t = 30)]
    drain_grace_secs: u64,
    /// Serve TLS with this certificate (PEM, chain after the leaf); needs --tls-key.
    /// Without both, plaintext.
    #[arg(long, env = "ENCLAVE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "ENCLAVE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Address to serve Prometheus metrics on (`GET /metrics`), or `off` [default: off].
    #[arg(long, env = "ENCLAVE_METRICS_LISTEN", default_value = "off")]
    metrics_listen: enclave_server::metrics::MetricsListen,
    #[command(flatten)]
    telemetry: enclave_server::telemetry::TelemetryArgs,
    #[command(flatten)]
    connection: enclave_server::listener::ConnectionArgs,
    /// Threads that run jobs and gRPC [default: one per core]. 1 suits a process per
    /// core: no wake-ups between sibling threads, lower latency on small machines.
    #[arg(long, env = "ENCLAVE_WORKER_THREADS")]
    worker_threads: Option<NonZeroUsize>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Healthcheck) = cli.command {
        let addr = enclave_server::healthcheck::local(cli.serve.listen);
        return enclave_server::runtime::build(NonZeroUsize::new(1))
            .context("starting the tokio runtime")?
            .block_on(enclave_server::healthcheck::grpc(
                addr,
                "enclave.v1.Executor",
            ))
            .map_err(anyhow::Error::msg);
    }
    let args = cli.serve;
    let runtime = enclave_server::runtime::build(args.worker_threads)
        .context("starting the tokio runtime")?;
    if let Some(Command::Precompile) = cli.command {
        let _logs = enclave_server::telemetry::init(&args.telemetry, None)?;
        let path = runtime
            .block_on(enclave_executor::sandbox::precompile(&sandbox_config(
                &args,
            )))
            .context("compiling the snapshot")?;
        println!("{}", path.display());
        return Ok(());
    }
    runtime.block_on(run(args))
}

fn sandbox_config(args: &Args) -> SandboxConfig {
    let mut ceiling = Limits::ceiling();
    ceiling.timeout = Duration::from_millis(args.max_timeout_ms);
    ceiling.memory_bytes = args.max_memory_mib << 20;
    SandboxConfig {
        max_concurrent_jobs: args.max_jobs,
        ceiling,
        max_wasm_stack: args.max_wasm_stack_kib << 10,
        max_resident: usize::try_from(args.max_resident_mib << 20).unwrap_or(usize::MAX),
        snapshot_dir: args.snapshot_dir.clone(),
        ..SandboxConfig::default()
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let telemetry = enclave_server::telemetry::init(&args.telemetry, Some("enclave-executor"))?;
    let served = serve(args).await;
    telemetry.shutdown().await;
    served
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let tls = enclave_server::tls::load(args.tls_cert.as_deref(), args.tls_key.as_deref(), b"h2")
        .map_err(anyhow::Error::msg)?;
    let sandbox = Sandbox::new(sandbox_config(&args))
        .await
        .context("starting the sandbox")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let policy = args.connection.policy();
    let metrics_listener = args
        .metrics_listen
        .bind()
        .await
        .with_context(|| format!("binding {} (metrics)", args.metrics_listen))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        metrics_addr = %enclave_server::metrics::MetricsListen(
            metrics_listener.as_ref().map(|l| l.local_addr()).transpose()?
        ),
        max_connections = policy.max_connections,
        tls = tls.is_some(),
        startup_ms = started.elapsed().as_millis() as u64,
        snapshot = %sandbox.snapshot_source(),
        // What the runtime really has, not what was asked: tests check `--worker-threads`.
        worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "executor serving"
    );
    let service = ExecutorService::new(
        Arc::new(sandbox),
        ServerConfig {
            max_code_bytes: args.max_code_kib << 10,
            drain_grace: Duration::from_secs(args.drain_grace_secs),
            job_threads: args.worker_threads,
            ..ServerConfig::default()
        },
    );
    let connections = service.connections(policy);
    let mut registry = prometheus_client::registry::Registry::default();
    service.register_metrics(&mut registry);
    registry.register_collector(Box::new(enclave_server::metrics::ConnectionMetrics(
        connections.clone(),
    )));
    let shutdown = enclave_server::runtime::shutdown_on_signal();
    let metrics = async {
        enclave_server::metrics::serve(
            metrics_listener,
            Arc::new(registry),
            shutdown.clone().cancelled_owned(),
        )
        .await
        .context("serving metrics")
    };
    let grpc = async {
        enclave_executor::server::serve_on(
            listener,
            service,
            connections,
            tls,
            shutdown.clone().cancelled_owned(),
        )
        .await
        .context("serving gRPC")
    };
    tokio::try_join!(grpc, metrics)?;
    tracing::info!("executor stopped");
    Ok(())
}
