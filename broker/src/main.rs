//! `enclave-broker`: the public, end-to-end encrypted face of enclave. With no
//! executors configured it runs jobs in-process (the embedded executor), so one command
//! starts a working system. Every flag also reads an `ENCLAVE_*` environment variable.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use enclave_broker::session::{SessionLimits, SessionStore};
use enclave_broker::{Broker, Config, service::BrokerService};
use enclave_proto::{Fingerprint, IdentityKey};

#[derive(Parser, Debug)]
#[command(
    name = "enclave-broker",
    version,
    about = "End-to-end encrypted broker for sandboxed JavaScript jobs"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generates a broker identity key (PEM, mode 0600; the public key goes to PATH.pub)
    /// and prints its fingerprint, which clients pin.
    Keygen { path: PathBuf },
    /// Prints the fingerprint of the identity key (--identity), which clients pin:
    /// `docker compose exec broker /enclave-broker fingerprint`. Fails if there is none.
    Fingerprint,
    /// Asks the broker serving on --listen and --http-listen (on loopback when that is
    /// every address) whether it serves: gRPC health, and `GET /v1/info` unless the HTTP
    /// API is off. Exit status 0 if both answer. For container health checks: the image
    /// needs no shell or client tool. Plaintext only.
    Healthcheck,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "ENCLAVE_LISTEN", default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Address to serve the HTTP API on (docs/HTTP.md: protocol v1 in JSON, the legacy
    /// API, the playground at `/`), or `off` [default: 127.0.0.1:7780, skipped with a
    /// warning when that port is taken; an address given here must bind].
    #[arg(long, env = "ENCLAVE_HTTP_LISTEN")]
    http_listen: Option<enclave_broker::http::HttpListen>,
    /// Also serve the legacy, seed-compatible endpoints (`/handshake`, `/execute`,
    /// `/execute/stream`) for clients that cannot move to protocol v1 yet; without it
    /// they answer 404. Weak by design (README.md): no server authentication, no key
    /// derivation, no associated data, no sequence numbers.
    #[arg(long, env = "ENCLAVE_LEGACY_API", default_value_t = false, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    legacy_api: bool,
    /// TOML config: tools, executors, job settings (see README.md).
    #[arg(long, env = "ENCLAVE_CONFIG")]
    config: Option<PathBuf>,
    /// The broker's long-term identity key; generated (mode 0600) on first start.
    #[arg(long, env = "ENCLAVE_IDENTITY", default_value = "enclave-broker.key")]
    identity: PathBuf,
    /// Executor endpoints (`http://host:port`, comma-separated); overrides the config.
    /// None at all: jobs run in-process.
    #[arg(long = "executor", env = "ENCLAVE_EXECUTORS", value_delimiter = ',')]
    executors: Vec<String>,
    /// CA bundle (PEM) that `https://` executors' certificates must chain to; overrides
    /// the config's `[executors] ca_file`. With `--executor-dns`, the executors are
    /// reached over https and must present a certificate for the DNS name.
    #[arg(long, env = "ENCLAVE_EXECUTOR_CA")]
    executor_ca: Option<PathBuf>,
    /// One DNS name whose addresses are the executors (`executor:7701`), re-resolved
    /// periodically; overrides the config.
    #[arg(long, env = "ENCLAVE_EXECUTOR_DNS")]
    executor_dns: Option<String>,
    /// Embedded mode: directory for the compiled guest snapshot, loaded at start when it
    /// fits, else compiled (seconds) and written there. Its files run as native code:
    /// keep it writable only by the operator. Overrides the config.
    #[arg(long, env = "ENCLAVE_SNAPSHOT_DIR")]
    snapshot_dir: Option<PathBuf>,
    /// Serve only clients that authenticate with one of these keys (fingerprints
    /// `sha256:<hex>`, comma-separated).
    #[arg(
        long = "allow-client",
        env = "ENCLAVE_ALLOW_CLIENTS",
        value_delimiter = ','
    )]
    allow_clients: Vec<Fingerprint>,
    /// Serve TLS on both listeners (gRPC and HTTP) with this certificate (PEM, chain
    /// after the leaf); needs --tls-key. Without both, plaintext.
    #[arg(long, env = "ENCLAVE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "ENCLAVE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Seconds of inactivity after which a session that has run a job expires.
    #[arg(long, env = "ENCLAVE_SESSION_IDLE_SECS", default_value_t = 15 * 60)]
    session_idle_secs: u64,
    /// Seconds a session that has not run a job yet lives after its last request.
    #[arg(long, env = "ENCLAVE_UNUSED_SESSION_SECS", default_value_t = enclave_broker::session::DEFAULT_UNUSED_TIMEOUT.as_secs())]
    unused_session_secs: u64,
    /// Sessions that have not run a job yet held at once; past it the oldest goes.
    #[arg(long, env = "ENCLAVE_MAX_UNUSED_SESSIONS", default_value_t = enclave_broker::session::DEFAULT_MAX_UNUSED,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_unused_sessions: usize,
    /// Sessions that have not run a job yet per source address (IPv4 address, IPv6
    /// /64); more handshakes from it get RESOURCE_EXHAUSTED. 0: no per-source cap (a
    /// broker behind a proxy sees one address for every client).
    #[arg(long, env = "ENCLAVE_MAX_UNUSED_SESSIONS_PER_SOURCE", default_value_t = enclave_broker::session::DEFAULT_MAX_UNUSED_PER_SOURCE)]
    max_unused_sessions_per_source: usize,
    /// Seconds from a ClientHello to its ClientAuth (with --allow-client).
    #[arg(long, env = "ENCLAVE_CLIENT_AUTH_SECS", default_value_t = enclave_broker::session::DEFAULT_AUTH_TIMEOUT.as_secs())]
    client_auth_secs: u64,
    /// Sessions waiting for their ClientAuth held at once (with --allow-client); past
    /// it the oldest goes.
    #[arg(long, env = "ENCLAVE_MAX_PENDING_AUTH", default_value_t = enclave_broker::session::DEFAULT_MAX_PENDING_AUTH,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_pending_auth: usize,
    /// Request IVs all legacy sessions together remember (to refuse replays); past it
    /// legacy requests get 429 until sessions expire.
    #[arg(long, env = "ENCLAVE_MAX_LEGACY_IVS", default_value_t = enclave_broker::session::DEFAULT_MAX_LEGACY_IVS)]
    max_legacy_ivs: usize,
    /// Address to serve Prometheus metrics on (`GET /metrics`), or `off` [default: off].
    /// Keep it on a private network: it tells the job rate and outcomes.
    #[arg(long, env = "ENCLAVE_METRICS_LISTEN", default_value = "off")]
    metrics_listen: enclave_server::metrics::MetricsListen,
    #[command(flatten)]
    telemetry: enclave_server::telemetry::TelemetryArgs,
    #[command(flatten)]
    connection: enclave_server::listener::ConnectionArgs,
    /// Seconds for a whole request body to arrive.
    #[arg(long, env = "ENCLAVE_BODY_TIMEOUT_SECS", default_value_t = enclave_server::listener::DEFAULT_REQUEST_BODY_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout_secs: u64,
    /// MiB of request bodies held at once, both listeners together, until their answers
    /// are done; past it requests get RESOURCE_EXHAUSTED.
    #[arg(long, env = "ENCLAVE_MAX_REQUEST_MEMORY_MIB", default_value_t = (enclave_broker::server::DEFAULT_MAX_REQUEST_MEMORY >> 20) as u64,
          value_parser = clap::value_parser!(u64).range(32..))]
    max_request_memory_mib: u64,
    /// Seconds after which a session expires however busy it is.
    #[arg(long, env = "ENCLAVE_SESSION_LIFETIME_SECS", default_value_t = 60 * 60)]
    session_lifetime_secs: u64,
    /// Sessions held at once; more handshakes get RESOURCE_EXHAUSTED.
    #[arg(long, env = "ENCLAVE_MAX_SESSIONS", default_value_t = enclave_broker::session::DEFAULT_MAX_SESSIONS)]
    max_sessions: usize,
    /// Jobs in flight per session; more get RESOURCE_EXHAUSTED.
    #[arg(long, env = "ENCLAVE_MAX_JOBS_PER_SESSION", default_value_t = enclave_broker::session::DEFAULT_MAX_JOBS_PER_SESSION)]
    max_jobs_per_session: u32,
    /// Threads that serve requests and run embedded jobs [default: one per core]. 1
    /// avoids wake-ups between sibling threads: lower latency on small machines, where
    /// the broker shares the cores with its executors.
    #[arg(long, env = "ENCLAVE_WORKER_THREADS")]
    worker_threads: Option<NonZeroUsize>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    enclave_server::runtime::build(cli.serve.worker_threads)
        .context("starting the tokio runtime")?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let traced_as = cli.command.is_none().then_some("enclave-broker");
    let telemetry = enclave_server::telemetry::init(&cli.serve.telemetry, traced_as)?;
    match cli.command {
        Some(Command::Keygen { path }) => {
            let key = enclave_proto::keys::keygen(&path)
                .with_context(|| format!("writing {}", path.display()))?;
            println!("{}", key.fingerprint());
            Ok(())
        }
        Some(Command::Fingerprint) => {
            let key = IdentityKey::load(&cli.serve.identity).with_context(|| {
                format!("loading the identity key {}", cli.serve.identity.display())
            })?;
            println!("{}", key.fingerprint());
            Ok(())
        }
        Some(Command::Healthcheck) => healthcheck(&cli.serve).await.map_err(anyhow::Error::msg),
        None => {
            let served = serve(cli.serve).await;
            telemetry.shutdown().await;
            served
        }
    }
}

async fn healthcheck(args: &ServeArgs) -> Result<(), String> {
    use enclave_server::healthcheck::{grpc, http, local};
    grpc(local(args.listen), "enclave.v1.Broker").await?;
    let http_addr = match args.http_listen {
        Some(enclave_broker::http::HttpListen(None)) => return Ok(()),
        Some(enclave_broker::http::HttpListen(Some(addr))) => addr,
        None => enclave_broker::http::DEFAULT_HTTP_LISTEN
            .parse()
            .map_err(|e| format!("{e}"))?,
    };
    http(local(http_addr), "/v1/info").await
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path).with_context(|| format!("reading {}", path.display()))?,
        None => Config::default(),
    };
    if !args.executors.is_empty() {
        config.executors.endpoints = args.executors.clone();
    }
    if args.executor_dns.is_some() {
        config.executors.dns = args.executor_dns.clone();
    }
    if args.snapshot_dir.is_some() {
        config.executors.embedded_snapshot_dir = args.snapshot_dir.clone();
    }
    if args.executor_ca.is_some() {
        config.executors.ca_file = args.executor_ca.clone();
    }
    config
        .executors
        .check_tls()
        .context("executor TLS settings")?;
    let tls =
        enclave_broker::tls::ServerTls::load(args.tls_cert.as_deref(), args.tls_key.as_deref())
            .map_err(anyhow::Error::msg)?;
    // Flags override the file; the result must pass the same checks the file did.
    config.validate().context("checking the configuration")?;
    let identity = load_or_create_identity(&args.identity)?;
    let mode = if config.executors.is_embedded() {
        "embedded executor"
    } else {
        "remote executors"
    };
    let broker = Broker::from_config(&config)
        .await
        .context("starting the broker")?;
    let sessions = Arc::new(SessionStore::new(SessionLimits {
        idle_timeout: Duration::from_secs(args.session_idle_secs),
        lifetime: Duration::from_secs(args.session_lifetime_secs),
        max_sessions: args.max_sessions,
        max_jobs_per_session: args.max_jobs_per_session,
        unused_timeout: Duration::from_secs(args.unused_session_secs),
        max_unused: args.max_unused_sessions,
        max_unused_per_source: args.max_unused_sessions_per_source,
        auth_timeout: Duration::from_secs(args.client_auth_secs),
        max_pending_auth: args.max_pending_auth,
        max_legacy_ivs: args.max_legacy_ivs,
    }));
    let connections = connections(&args);
    let mut handshake = enclave_proto::ServerConfig::new(Arc::new(identity));
    if !args.allow_clients.is_empty() {
        handshake.allowed_clients = Some(args.allow_clients.clone());
    }
    let fingerprint = handshake.identity.fingerprint();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let http_listener = bind_http(args.http_listen).await?;
    let metrics_listener = args
        .metrics_listen
        .bind()
        .await
        .with_context(|| format!("binding {} (metrics)", args.metrics_listen))?;
    let metrics_addr = metrics_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    let http_addr = http_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    // Before the "serving" line, which tells that start-up is over.
    if http_addr.is_some() && args.legacy_api {
        tracing::warn!(
            "the legacy API is on (--legacy-api): it has no server authentication (anyone on \
             the path can read and rewrite its traffic), no key derivation, no associated data \
             and no sequence numbers; use protocol v1 for anything new (README.md)"
        );
    }
    // `http_addr` after `addr`: tests find the gRPC address as the first `addr=`.
    tracing::info!(
        addr = %listener.local_addr()?,
        http_addr = %enclave_broker::http::HttpListen(http_addr),
        metrics_addr = %enclave_server::metrics::MetricsListen(metrics_addr),
        fingerprint = %fingerprint,
        mode,
        client_auth = handshake.client_auth_required(),
        legacy_api = http_addr.is_some() && args.legacy_api,
        tls = tls.is_some(),
        max_connections = connections.policy().max_connections,
        // What the runtime really has, not what was asked: tests check `--worker-threads`.
        worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "broker serving"
    );
    let registry = Arc::new(enclave_broker::metrics::registry(
        &broker,
        &sessions,
        &connections,
    ));
    let service = BrokerService::new(Arc::new(broker), sessions, handshake);
    // One signal stops every server; each lets its open requests finish.
    let shutdown = enclave_server::runtime::shutdown_on_signal();
    let http = async {
        let Some(listener) = http_listener else {
            return Ok(());
        };
        let api = enclave_broker::http::HttpApi::new(
            service.clone(),
            enclave_broker::http::HttpOptions {
                legacy_api: args.legacy_api,
            },
        );
        enclave_broker::http::serve_with(
            listener,
            api,
            connections.clone(),
            tls.as_ref().map(|t| t.http.clone()),
            shutdown.clone().cancelled_owned(),
        )
        .await
        .context("serving HTTP")
    };
    let grpc = async {
        enclave_broker::server::serve_with(
            listener,
            service.clone(),
            connections.clone(),
            tls.as_ref().map(|t| t.grpc.clone()),
            shutdown.clone().cancelled_owned(),
        )
        .await
        .context("serving gRPC")
    };
    let metrics = async {
        enclave_server::metrics::serve(
            metrics_listener,
            registry,
            shutdown.clone().cancelled_owned(),
        )
        .await
        .context("serving metrics")
    };
    tokio::try_join!(grpc, http, metrics)?;
    Ok(())
}

/// The connection policy of both listeners, with a cap that fits the descriptor limit.
fn connections(args: &ServeArgs) -> Arc<enclave_server::listener::Connections> {
    let policy = enclave_server::listener::ConnectionPolicy {
        request_body_timeout: Some(Duration::from_secs(args.body_timeout_secs)),
        ..args.connection.policy()
    };
    enclave_server::listener::Connections::with_request_memory(
        policy,
        (args.max_request_memory_mib as usize) << 20,
    )
}

/// The HTTP listener. The default address is a convenience, not a requirement: when it
/// is taken (a second broker on one machine, parallel tests) the broker serves gRPC only
/// and says so; an address the operator chose must bind.
async fn bind_http(
    choice: Option<enclave_broker::http::HttpListen>,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let (addr, explicit) = match choice {
        Some(enclave_broker::http::HttpListen(None)) => return Ok(None),
        Some(enclave_broker::http::HttpListen(Some(addr))) => (addr, true),
        None => (
            enclave_broker::http::DEFAULT_HTTP_LISTEN.parse::<SocketAddr>()?,
            false,
        ),
    };
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => Ok(Some(listener)),
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::warn!(%addr, "the default HTTP address is in use; serving without the HTTP API (set --http-listen)");
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("binding {addr} (HTTP)")),
    }
}

/// Loads the identity, or creates it on first start. Never overwrites a key file.
fn load_or_create_identity(path: &Path) -> anyhow::Result<IdentityKey> {
    if path.exists() {
        return IdentityKey::load(path)
            .with_context(|| format!("loading the identity key {}", path.display()));
    }
    let key = enclave_proto::keys::keygen(path)
        .with_context(|| format!("creating the identity key {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated a new broker identity");
    Ok(key)
}
