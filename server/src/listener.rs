//! Serving connections: one accept loop and one connection policy for every listener of
//! the broker (gRPC and HTTP) and the executor.
//!
//! What a peer can hold, and for how long, is bounded here, so that no client can starve
//! the others of connections, file descriptors, TLS handshakes or memory:
//! - **A cap on open connections** ([`ConnectionPolicy::max_connections`], shared by the
//!   listeners of one [`Connections`]). At the cap, a new connection takes the place of
//!   an idle one: first the oldest that has never sent a request (a slowloris or an
//!   idle flood), then the one idle longest; with none idle it is refused. Either way a
//!   warning is logged (at most every 10 s) and [`ConnectionStats`] counts it.
//!   [`fit_to_fd_limit`] keeps the cap below the process's file descriptor limit.
//! - **Timeouts**: a new connection must send its first request's headers within
//!   [`ConnectionPolicy::request_header_timeout`] (HTTP/1 also every later request's);
//!   a connection with no request in flight for [`ConnectionPolicy::idle_timeout`] is
//!   closed (HTTP/2 with a GOAWAY); a request body must arrive whole within
//!   [`ConnectionPolicy::request_body_timeout`] (when set: streaming request bodies, as
//!   the executor's, have none); a socket that accepts no byte of a pending write for
//!   [`ConnectionPolicy::write_stall_timeout`] is closed.
//! - **TLS handshakes** run in the connection's own task, at most
//!   [`ConnectionPolicy::max_tls_handshakes`] at once (more connections are closed at
//!   once), each within [`ConnectionPolicy::tls_handshake_timeout`].
//! - **Memory held by requests** ([`Connections::with_request_memory`]): the bytes of
//!   every request body in flight count against one budget until its response is done;
//!   a request that would go past it fails with RESOURCE_EXHAUSTED.
//!
//! Every request carries its peer's address as a [`PeerAddr`] extension.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Default cap on open connections per process (lowered to fit the descriptor limit).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default cap on TLS handshakes in progress at once.
pub const DEFAULT_MAX_TLS_HANDSHAKES: usize = 256;
/// A TLS handshake that takes longer than this is dropped.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time for a new connection's first request headers (and, over HTTP/1, every
/// request's headers): a client sends them at once.
pub const DEFAULT_REQUEST_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a connection may sit with no request in flight.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default time for a whole request body to arrive (the broker's: 32 MiB at a slow
/// 1 MB/s fits).
pub const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time a socket may accept no byte of a pending write.
pub const DEFAULT_WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default HTTP/2 streams one connection may have open at once.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// How long an idle connection gets to close gracefully (GOAWAY) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Descriptors kept free for everything that is not a client connection (executors,
/// `http:fetch`, files, the listeners themselves), as a share of the limit.
const FD_RESERVE_DIVISOR: u64 = 4;
/// Warnings about refused connections: at most one per this interval per kind.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What a connection may hold, and for how long. See the module docs.
#[derive(Clone, Debug)]
pub struct ConnectionPolicy {
    pub max_connections: usize,
    pub max_tls_handshakes: usize,
    pub tls_handshake_timeout: Duration,
    pub request_header_timeout: Duration,
    pub idle_timeout: Duration,
    /// `None`: request bodies may stream for as long as their call lasts.
    pub request_body_timeout: Option<Duration>,
    pub write_stall_timeout: Duration,
    /// HTTP/2 streams one connection may have open at once.
    pub max_streams_per_connection: u32,
}

impl Default for ConnectionPolicy {
    fn default() -> Self {
        ConnectionPolicy {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_tls_handshakes: DEFAULT_MAX_TLS_HANDSHAKES,
            tls_handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
            request_header_timeout: DEFAULT_REQUEST_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            request_body_timeout: Some(DEFAULT_REQUEST_BODY_TIMEOUT),
            write_stall_timeout: DEFAULT_WRITE_STALL_TIMEOUT,
            max_streams_per_connection: MAX_STREAMS_PER_CONNECTION,
        }
    }
}

/// The connection flags both servers take, each also read from an `ENCLAVE_*` variable.
#[derive(clap::Args, Clone, Debug)]
pub struct ConnectionArgs {
    /// Client connections open at once (the broker: both listeners together), lowered to
    /// fit the file descriptor limit; at the cap an idle connection makes room, or the
    /// new one is refused.
    #[arg(long, env = "ENCLAVE_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,
    /// TLS handshakes in progress at once; more connections are closed at once.
    #[arg(long, env = "ENCLAVE_MAX_TLS_HANDSHAKES", default_value_t = DEFAULT_MAX_TLS_HANDSHAKES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_tls_handshakes: usize,
    /// Seconds for a new connection's first request headers (HTTP: every request's).
    #[arg(long, env = "ENCLAVE_HEADER_TIMEOUT_SECS", default_value_t = DEFAULT_REQUEST_HEADER_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_secs: u64,
    /// Seconds a connection may have no request in flight before it is closed.
    #[arg(long, env = "ENCLAVE_CONNECTION_IDLE_SECS", default_value_t = DEFAULT_IDLE_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub connection_idle_secs: u64,
    /// Seconds a client may read nothing of an answer being written before its
    /// connection is closed.
    #[arg(long, env = "ENCLAVE_WRITE_STALL_SECS", default_value_t = DEFAULT_WRITE_STALL_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub write_stall_secs: u64,
}

impl ConnectionArgs {
    /// The policy these flags ask for, its connection cap lowered (with a warning) to fit
    /// the descriptor limit; the rest as [`ConnectionPolicy::default`].
    pub fn policy(&self) -> ConnectionPolicy {
        let max_connections = fit_to_fd_limit(self.max_connections);
        if max_connections < self.max_connections {
            tracing::warn!(
                max_connections,
                asked = self.max_connections,
                "the file descriptor limit is too low for --max-connections: serving fewer (raise `ulimit -n`)"
            );
        }
        ConnectionPolicy {
            max_connections,
            max_tls_handshakes: self.max_tls_handshakes,
            request_header_timeout: Duration::from_secs(self.header_timeout_secs),
            idle_timeout: Duration::from_secs(self.connection_idle_secs),
            write_stall_timeout: Duration::from_secs(self.write_stall_secs),
            ..ConnectionPolicy::default()
        }
    }
}

/// A listener's address flag (`--http-listen`, `--metrics-listen`): an address, or
/// `off` (also `none` or empty) for no listener at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenAddr(pub Option<SocketAddr>);

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "off" | "none" | "" => Ok(ListenAddr(None)),
            addr => addr.parse().map(|a| ListenAddr(Some(a))).map_err(|e| {
                format!("{addr:?} is neither an address (host:port) nor \"off\": {e}")
            }),
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("off"),
        }
    }
}

impl ListenAddr {
    /// The listener, when there is an address to serve on.
    pub async fn bind(self) -> std::io::Result<Option<TcpListener>> {
        match self.0 {
            Some(addr) => TcpListener::bind(addr).await.map(Some),
            None => Ok(None),
        }
    }
}

/// Counters of what the policy did, for logs and metrics.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    pub accepted: AtomicU64,
    /// Refused at the cap with no idle connection to replace.
    pub refused: AtomicU64,
    /// Idle connections closed to make room for a new one.
    pub evicted: AtomicU64,
    /// Closed after their header or idle timeout.
    pub timed_out: AtomicU64,
    /// Closed because a write made no progress.
    pub write_stalls: AtomicU64,
    /// Refused because [`ConnectionPolicy::max_tls_handshakes`] were in progress.
    pub tls_refused: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub tls_failed: AtomicU64,
    /// Requests whose body did not arrive in time.
    pub body_timeouts: AtomicU64,
    /// Requests refused because the request memory budget was spent.
    pub memory_refused: AtomicU64,
}

/// The HTTP version a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpVersion {
    /// HTTP/1.1 (the broker's HTTP API).
    Http1,
    /// HTTP/2 only (gRPC).
    Http2,
}

/// The TCP peer of the connection a request came on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The budget for the memory held by requests in flight.
#[derive(Debug)]
pub struct RequestMemory {
    limit: usize,
    used: AtomicUsize,
}

impl RequestMemory {
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes of request bodies held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    fn reserve(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// The connections of one process: the cap, the TLS handshake slots, the request
/// memory budget and the counters, shared by all its listeners.
pub struct Connections {
    policy: ConnectionPolicy,
    stats: ConnectionStats,
    open: Mutex<HashMap<u64, Arc<ConnState>>>,
    next_id: AtomicU64,
    tls_handshakes: Arc<Semaphore>,
    memory: Option<Arc<RequestMemory>>,
    epoch: Instant,
    warned: [AtomicU64; 3],
}

impl Connections {
    pub fn new(policy: ConnectionPolicy) -> Arc<Connections> {
        Arc::new(Connections::build(policy, None))
    }

    /// [`Connections::new`] with a budget of `limit` bytes for the bodies of requests
    /// in flight.
    pub fn with_request_memory(policy: ConnectionPolicy, limit: usize) -> Arc<Connections> {
        let memory = Arc::new(RequestMemory {
            limit,
            used: AtomicUsize::new(0),
        });
        Arc::new(Connections::build(policy, Some(memory)))
    }

    fn build(policy: ConnectionPolicy, memory: Option<Arc<RequestMemory>>) -> Connections {
        Connections {
            tls_handshakes: Arc::new(Semaphore::new(policy.max_tls_handshakes)),
            policy,
            stats: ConnectionStats::default(),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            memory,
            epoch: Instant::now(),
            warned: Default::default(),
        }
    }

    pub fn policy(&self) -> &ConnectionPolicy {
        &self.policy
    }

    pub fn stats(&self) -> &ConnectionStats {
        &self.stats
    }

    pub fn request_memory(&self) -> Option<&RequestMemory> {
        self.memory.as_deref()
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().len()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a warning of kind `kind` may be logged now (at most every [`WARN_EVERY`]).
    fn may_warn(&self, kind: usize) -> bool {
        let now = self.now_ms() + WARN_EVERY.as_millis() as u64;
        let last = &self.warned[kind];
        let before = last.load(Ordering::Relaxed);
        now.saturating_sub(before) >= WARN_EVERY.as_millis() as u64
            && last
                .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// A slot for a new connection from `peer`: free, or taken from an idle connection,
    /// or none.
    fn admit(&self, peer: SocketAddr) -> Option<Arc<ConnState>> {
        let mut open = self.lock();
        if open.len() >= self.policy.max_connections {
            // Never-used connections first (oldest first), then the longest idle.
            let victim = open
                .values()
                .filter(|c| c.in_flight.load(Ordering::Acquire) == 0)
                .min_by_key(|c| {
                    (
                        c.requests.load(Ordering::Acquire) > 0,
                        c.idle_since_ms.load(Ordering::Acquire),
                    )
                })
                .cloned();
            match victim {
                Some(victim) => {
                    open.remove(&victim.id);
                    victim.evicted.cancel();
                    self.stats.evicted.fetch_add(1, Ordering::Relaxed);
                    if self.may_warn(0) {
                        tracing::warn!(
                            max_connections = self.policy.max_connections,
                            evicted_total = self.stats.evicted.load(Ordering::Relaxed),
                            %peer,
                            "connection cap reached: closed an idle connection to admit a new one"
                        );
                    }
                }
                None => {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    if self.may_warn(1) {
                        tracing::warn!(
                            max_connections = self.policy.max_connections,
                            refused_total = self.stats.refused.load(Ordering::Relaxed),
                            %peer,
                            "connection cap reached and every connection busy: refused a connection"
                        );
                    }
                    return None;
                }
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            id,
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(self.now_ms()),
            activity: Notify::new(),
            evicted: CancellationToken::new(),
        });
        open.insert(id, state.clone());
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Some(state)
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }
}

/// One connection's activity, shared by its task and its requests.
struct ConnState {
    id: u64,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// When `in_flight` last became 0 (ms since [`Connections::epoch`]).
    idle_since_ms: AtomicU64,
    /// Woken when `in_flight` goes to or from 0.
    activity: Notify,
    /// Cancelled when the slot was given to a newer connection: close at once.
    evicted: CancellationToken,
}

/// Serves `service` on `listener` under the policy of `connections` until `shutdown`
/// resolves; then stops accepting, lets every connection finish its requests
/// (gracefully: HTTP/2 GOAWAY, HTTP/1 close after the response) and returns.
pub async fn serve<S, B>(
    listener: TcpListener,
    connections: Arc<Connections>,
    version: HttpVersion,
    tls: Option<Arc<rustls::ServerConfig>>,
    service: S,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let tls = tls.map(TlsAcceptor::from);
    let tasks = TaskTracker::new();
    let stop = CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors (or another transient failure): wait instead of
                    // spinning; connections that close give them back.
                    if connections.may_warn(2) {
                        tracing::warn!(error = %e, open = connections.open(), "accepting a connection failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(state) = connections.admit(peer) else {
            drop(tcp);
            continue;
        };
        // Events and replies are small writes that must leave at once: without this,
        // Nagle's algorithm and the peer's delayed ACKs hold each ~40 ms.
        let _ = tcp.set_nodelay(true);
        tasks.spawn(connection(
            connections.clone(),
            state,
            tcp,
            peer,
            version,
            tls.clone(),
            service.clone(),
            stop.clone(),
        ));
    }
    drop(listener);
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// Takes the connection out of the table when its task ends, however it ends.
struct Registered(Arc<Connections>, u64);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.remove(self.1);
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection<S, B>(
    connections: Arc<Connections>,
    state: Arc<ConnState>,
    tcp: TcpStream,
    peer: SocketAddr,
    version: HttpVersion,
    tls: Option<TlsAcceptor>,
    service: S,
    stop: CancellationToken,
) where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let _registered = Registered(connections.clone(), state.id);
    let policy = connections.policy.clone();
    let io = match tls {
        None => Either::Left(tcp),
        Some(acceptor) => {
            let Ok(_handshaking) = connections.tls_handshakes.clone().try_acquire_owned() else {
                connections
                    .stats
                    .tls_refused
                    .fetch_add(1, Ordering::Relaxed);
                if connections.may_warn(1) {
                    tracing::warn!(
                        max_tls_handshakes = policy.max_tls_handshakes,
                        %peer,
                        "TLS handshake cap reached: refused a connection"
                    );
                }
                return;
            };
            let handshake =
                tokio::time::timeout(policy.tls_handshake_timeout, acceptor.accept(tcp));
            let done = tokio::select! {
                done = handshake => done,
                _ = state.evicted.cancelled() => return,
                _ = stop.cancelled() => return,
            };
            match done {
                Ok(Ok(tls)) => Either::Right(tls),
                Ok(Err(e)) => {
                    connections.stats.tls_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    connections.stats.tls_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let io = StallGuard {
        io,
        stall: policy.write_stall_timeout,
        timer: None,
        connections: connections.clone(),
    };
    let service = ConnectionService {
        inner: service,
        state: state.clone(),
        connections: connections.clone(),
        peer,
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    match version {
        HttpVersion::Http1 => {
            builder = builder.http1_only();
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(policy.request_header_timeout)
                .keep_alive(true);
        }
        HttpVersion::Http2 => {
            builder = builder.http2_only();
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(policy.max_streams_per_connection);
        }
    }
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let mut draining = false;
    let mut grace: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(Duration::MAX));
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = state.evicted.cancelled() => return,
            _ = stop.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            // Drained: a peer that does not take the GOAWAY and go (does not answer its
            // ping, keeps the connection open) cannot keep the server from stopping.
            _ = no_request_in_flight(&state), if draining && !closing => {
                closing = true;
                grace.as_mut().reset(tokio::time::Instant::now() + CLOSE_GRACE);
            }
            _ = idle(&connections, &state), if !closing && !draining => {
                connections.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                // A peer that never completed a request has nothing to drain (and an
                // HTTP/2 peer that never sent its preface cannot take a GOAWAY).
                if state.requests.load(Ordering::Acquire) == 0 {
                    tracing::debug!(%peer, "closing a connection that sent no request in time");
                    return;
                }
                closing = true;
                tracing::debug!(%peer, "closing an idle connection");
                conn.as_mut().graceful_shutdown();
                grace.as_mut().reset(tokio::time::Instant::now() + CLOSE_GRACE);
            }
            _ = grace.as_mut(), if closing => return,
        }
    }
}

/// Resolves once the connection has no request in flight.
async fn no_request_in_flight(state: &ConnState) {
    loop {
        let activity = state.activity.notified();
        if state.in_flight.load(Ordering::Acquire) == 0 {
            return;
        }
        activity.await;
    }
}

/// Resolves once the connection has had no request in flight for its timeout: the
/// header timeout before its first request, the idle timeout after.
async fn idle(connections: &Connections, state: &ConnState) {
    let policy = &connections.policy;
    loop {
        let activity = state.activity.notified();
        if state.in_flight.load(Ordering::Acquire) > 0 {
            activity.await;
            continue;
        }
        let timeout = if state.requests.load(Ordering::Acquire) == 0 {
            policy.request_header_timeout
        } else {
            policy.idle_timeout
        };
        let since = state.idle_since_ms.load(Ordering::Acquire);
        let deadline = connections.epoch + Duration::from_millis(since) + timeout;
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {
                if state.in_flight.load(Ordering::Acquire) == 0
                    && state.idle_since_ms.load(Ordering::Acquire) == since
                {
                    return;
                }
            }
            _ = activity => {}
        }
    }
}

/// A request in flight on its connection, until its response body is done.
struct InFlight {
    state: Arc<ConnState>,
    connections: Arc<Connections>,
}

impl InFlight {
    fn start(state: &Arc<ConnState>, connections: &Arc<Connections>) -> InFlight {
        state.requests.fetch_add(1, Ordering::AcqRel);
        if state.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            state.activity.notify_one();
        }
        InFlight {
            state: state.clone(),
            connections: connections.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state
            .idle_since_ms
            .store(self.connections.now_ms(), Ordering::Release);
        if self.state.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.state.activity.notify_one();
        }
    }
}

/// The bytes a request holds against the [`RequestMemory`] budget, given back when
/// both its body and its response are gone.
struct Reservation {
    memory: Arc<RequestMemory>,
    bytes: AtomicUsize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.memory.release(*self.bytes.get_mut());
    }
}

#[derive(Clone)]
struct ConnectionService<S> {
    inner: S,
    state: Arc<ConnState>,
    connections: Arc<Connections>,
    peer: SocketAddr,
}

impl<S, B> hyper::service::Service<http::Request<Incoming>> for ConnectionService<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<ResponseBody<B>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn call(&self, mut request: http::Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::start(&self.state, &self.connections);
        request.extensions_mut().insert(PeerAddr(self.peer));
        let reservation = self.connections.memory.as_ref().map(|memory| {
            Arc::new(Reservation {
                memory: memory.clone(),
                bytes: AtomicUsize::new(0),
            })
        });
        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let deadline = self
            .connections
            .policy
            .request_body_timeout
            .map(|t| Box::pin(tokio::time::sleep(t)));
        let connections = self.connections.clone();
        let body_reservation = reservation.clone();
        let request = request.map(move |inner| RequestBody {
            inner,
            reservation: body_reservation,
            declared,
            arrived: 0,
            counted: 0,
            deadline,
            connections,
            failed: false,
        });
        let call = self.inner.clone().oneshot(request);
        Box::pin(async move {
            let response = call.await.map_err(Into::into)?;
            Ok(response.map(|inner| ResponseBody {
                inner: Box::pin(inner),
                _in_flight: in_flight,
                _reservation: reservation,
            }))
        })
    }
}

/// A request's body as the service sees it: counted against the request memory budget
/// as it arrives, and cut off at the request body timeout. Its errors are
/// `tonic::Status` values (RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED), which tonic passes
/// on as the call's status and the HTTP API finds in the error's source chain.
pub struct RequestBody {
    inner: Incoming,
    reservation: Option<Arc<Reservation>>,
    /// `Content-Length`, reserved in full on the first poll.
    declared: Option<usize>,
    /// Body bytes received, and bytes counted against the budget so far.
    arrived: usize,
    counted: usize,
    deadline: Option<Pin<Box<Sleep>>>,
    connections: Arc<Connections>,
    failed: bool,
}

impl RequestBody {
    /// Counts `bytes` more against the budget, past what was already reserved.
    fn reserve(&mut self, bytes: usize) -> Result<(), BoxError> {
        let Some(reservation) = &self.reservation else {
            return Ok(());
        };
        if reservation.memory.reserve(bytes) {
            reservation.bytes.fetch_add(bytes, Ordering::AcqRel);
            self.counted += bytes;
            return Ok(());
        }
        self.connections
            .stats
            .memory_refused
            .fetch_add(1, Ordering::Relaxed);
        let limit = reservation.memory.limit;
        Err(Box::new(tonic::Status::resource_exhausted(format!(
            "the server holds its maximum of {} MiB of requests in flight; retry later",
            limit >> 20
        ))))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        if let Some(declared) = this.declared.take()
            && declared > 0
            && let Err(e) = this.reserve(declared)
        {
            this.failed = true;
            return Poll::Ready(Some(Err(e)));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.arrived += data.len();
                    // Bytes past what was declared (none, for a well-formed request)
                    // are counted as they come.
                    if this.arrived > this.counted {
                        let more = this.arrived - this.counted;
                        if let Err(e) = this.reserve(more) {
                            this.failed = true;
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                this.deadline = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some(deadline) = &mut this.deadline
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    this.failed = true;
                    this.connections
                        .stats
                        .body_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    let limit = this
                        .connections
                        .policy
                        .request_body_timeout
                        .unwrap_or_default();
                    return Poll::Ready(Some(Err(Box::new(tonic::Status::deadline_exceeded(
                        format!(
                            "the request body did not arrive within {} s",
                            limit.as_secs()
                        ),
                    )))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response's body; the request counts as in flight, and its bytes against the
/// budget, until this is dropped (hyper drops it once the body is sent, or the peer
/// went away).
pub struct ResponseBody<B> {
    inner: Pin<Box<B>>,
    _in_flight: InFlight,
    _reservation: Option<Arc<Reservation>>,
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.inner.as_mut().poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, closed with an error when a pending write (or flush) makes no progress
/// for the stall timeout: a peer that stops reading holds nothing for long.
struct StallGuard<IO> {
    io: IO,
    stall: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    connections: Arc<Connections>,
}

impl<IO> StallGuard<IO> {
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match result {
            Poll::Pending => {
                let stall = self.stall;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                if timer.as_mut().poll(cx).is_ready() {
                    self.connections
                        .stats
                        .write_stalls
                        .fetch_add(1, Ordering::Relaxed);
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the peer read nothing for {} s", stall.as_secs()),
                    )));
                }
                Poll::Pending
            }
            ready => {
                self.timer = None;
                ready
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for StallGuard<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for StallGuard<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.io).poll_flush(cx);
        this.watch(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The cap on connections that leaves a quarter of the process's file descriptors (its
/// soft `RLIMIT_NOFILE`, read from `/proc/self/limits`) for everything else, at most
/// `wanted`; `wanted` where the limit cannot be read.
pub fn fit_to_fd_limit(wanted: usize) -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    match soft_fd_limit(&limits) {
        Some(fds) => {
            let usable = fds - fds / FD_RESERVE_DIVISOR;
            (usable.min(wanted as u64) as usize).max(1)
        }
        None => wanted,
    }
}

/// The soft limit of the `Max open files` line of `/proc/<pid>/limits`.
fn soft_fd_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_fits_the_descriptor_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             63428                63428                processes\n\
                      Max open files            256                  4096                 files\n";
        assert_eq!(soft_fd_limit(limits), Some(256));
        assert_eq!(
            soft_fd_limit("Max open files  unlimited unlimited files"),
            None
        );
        assert_eq!(soft_fd_limit(""), None);
        // This process's own limit is readable on Linux.
        assert!(fit_to_fd_limit(usize::MAX) < usize::MAX);
        assert_eq!(fit_to_fd_limit(1), 1);
    }
}
