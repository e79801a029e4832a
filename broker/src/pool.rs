//! Where jobs run: a [`Backend`] starts a job and hands back its event stream and a way
//! to answer its tool calls. [`RemotePool`] spreads jobs over executor processes;
//! [`crate::embedded::Embedded`] runs them in this process.
//!
//! # Remote executors
//!
//! Executors come from a fixed list or from one DNS name resolved again every few
//! seconds (so `docker compose --scale executor=N` needs no broker restart). A job goes
//! to the executor with the fewest of this broker's jobs in flight (ties broken at
//! random). An executor that cannot be reached, or says it is draining, is skipped for a
//! while; periodic grpc.health.v1 checks bring it back as soon as it serves again.
//!
//! A job that could not *start* (connect error, UNAVAILABLE, RESOURCE_EXHAUSTED, start
//! timeout) is retried on another executor: nothing of it has run, so nothing can run
//! twice. Once started it is never retried: the script may have called tools with side
//! effects. If its executor dies, the stream errors or ends without a final event, and
//! the job ends with EXECUTOR_LOST (see [`crate::jobs`]).

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use enclave_executor::{Limits, ToolResults};
use enclave_proto::v1::{
    Job, RunEvent, RunRequest, executor_client::ExecutorClient, run_event::Event, run_request::Msg,
};
use futures::{Stream, StreamExt};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::config::ExecutorsConfig;

/// Flow control on executor connections. Every job on one connection shares its
/// connection window, so it is made large enough never to fill: a job whose events the
/// broker stops reading (its client is slow, see [`crate::jobs`]) then holds at most one
/// stream window of it, and every other job and health check goes on.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = (1 << 31) - 1;
/// A health check that takes longer than this counts as a failure.
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 pings on executor connections: a host that vanished without closing its
/// sockets (power loss, partition) is noticed within interval + timeout, so a running
/// job ends with EXECUTOR_LOST instead of waiting for its deadline.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A job's events as the executor sends them: console and tool calls, then one final
/// event. `Err` (with a reason) or the end of the stream before the final event means
/// the executor was lost.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>;

/// A job that an executor accepted.
pub struct StartedJob {
    /// Which executor runs it, for logs: `embedded` or its address.
    pub executor: String,
    pub events: EventStream,
    /// Answers to the job's tool calls, in any order; never waits.
    pub tool_results: ToolResults,
    /// Dropped with the job: releases its slot, and for embedded jobs stops the script.
    _guard: Box<dyn Send + Sync>,
}

impl StartedJob {
    pub fn new(
        executor: String,
        events: EventStream,
        tool_results: ToolResults,
        guard: impl Send + Sync + 'static,
    ) -> StartedJob {
        StartedJob {
            executor,
            events,
            tool_results,
            _guard: Box::new(guard),
        }
    }
}

/// Why a job did not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The job itself was refused (limits above the ceiling, code too large, bad input
    /// JSON): trying elsewhere would not help.
    #[error("{0}")]
    Invalid(String),
    /// Every executor tried was at its maximum of concurrent jobs.
    #[error("{0}")]
    Busy(String),
    /// No executor could be reached.
    #[error("{0}")]
    Unavailable(String),
}

/// Runs jobs somewhere.
pub trait Backend: Send + Sync + 'static {
    /// Starts `job`, retrying wherever that is safe. The job is running when this
    /// returns `Ok`; dropping the [`StartedJob`] cancels it. Its spans, wherever it
    /// runs, are children of `span`.
    fn start(
        &self,
        job: Job,
        span: &tracing::Span,
    ) -> BoxFuture<'_, Result<StartedJob, StartError>>;

    /// A line for logs and status pages.
    fn describe(&self) -> String;

    /// The executors jobs go to and their state; none when jobs run in this process.
    fn executors(&self) -> Vec<ExecutorStatus> {
        Vec::new()
    }

    /// Adds what the backend itself counts (the embedded executor's job metrics).
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}
}

/// The backend the config asks for: embedded without executors, else a remote pool.
pub async fn from_config(
    config: &ExecutorsConfig,
) -> Result<Arc<dyn Backend>, crate::embedded::EmbeddedError> {
    if config.is_embedded() {
        let sandbox = enclave_executor::SandboxConfig {
            max_concurrent_jobs: config.embedded_max_jobs,
            snapshot_dir: config.embedded_snapshot_dir.clone(),
            ..Default::default()
        };
        Ok(Arc::new(crate::embedded::Embedded::new(sandbox).await?))
    } else {
        Ok(Arc::new(RemotePool::new(config.clone()).await))
    }
}

/// Health as this broker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    /// Skipped until this instant (unless nothing else is left) or a passing check.
    Down {
        until: Instant,
    },
    /// Says it is shutting down (its health check answers NOT_SERVING): skipped like a
    /// down executor, and told apart from one that cannot be reached.
    Draining {
        until: Instant,
    },
}

struct Member {
    endpoint: String,
    client: ExecutorClient<Channel>,
    health: HealthClient<Channel>,
    in_flight: AtomicUsize,
    state: Mutex<Health>,
}

impl Member {
    /// `tls` (from `ca_file`) is used for `https://` endpoints, which need it.
    fn new(
        endpoint: String,
        config: &ExecutorsConfig,
        tls: Option<&ClientTlsConfig>,
    ) -> Result<Member, String> {
        let mut channel =
            Endpoint::from_shared(endpoint.clone()).map_err(|e| format!("{endpoint}: {e}"))?;
        if endpoint.starts_with("https://") {
            let tls = tls.ok_or_else(|| {
                format!("{endpoint}: https needs a CA (--executor-ca or [executors] ca_file)")
            })?;
            channel = channel
                .tls_config(tls.clone())
                .map_err(|e| format!("{endpoint}: {e}"))?;
        }
        let channel = channel
            .connect_timeout(config.connect_timeout())
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW);
        let max = enclave_server::grpc::MAX_MESSAGE_BYTES;
        Ok(Member {
            endpoint,
            client: ExecutorClient::new(channel.connect_lazy())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            // A connection of its own: health must not depend on how the jobs' streams
            // are doing, or a busy executor would be marked down.
            health: HealthClient::new(channel.connect_lazy()),
            in_flight: AtomicUsize::new(0),
            state: Mutex::new(Health::Up),
        })
    }

    fn health(&self) -> Health {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_health(&self, health: Health) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match (*state, health) {
            (Health::Up, Health::Up) => {}
            (_, Health::Up) => tracing::info!(executor = %self.endpoint, "executor up"),
            (Health::Up, Health::Down { .. }) => {
                tracing::warn!(executor = %self.endpoint, "executor down")
            }
            (Health::Draining { .. }, Health::Draining { .. }) => {}
            (_, Health::Draining { .. }) => {
                tracing::info!(executor = %self.endpoint, "executor draining")
            }
            _ => {}
        }
        *state = health;
    }

    /// A job could not start on it: skipped until `until`, still draining if it was
    /// (what refused the job was the drain).
    fn set_down(&self, until: Instant) {
        let draining = matches!(self.health(), Health::Draining { .. });
        self.set_health(if draining {
            Health::Draining { until }
        } else {
            Health::Down { until }
        });
    }

    fn is_up(&self, now: Instant) -> bool {
        match self.health() {
            Health::Up => true,
            Health::Down { until } | Health::Draining { until } => now >= until,
        }
    }
}

/// Counts a job against its executor until dropped.
struct InFlight(Arc<Member>);

impl InFlight {
    fn new(member: Arc<Member>) -> InFlight {
        member.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(member)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One executor as reported by [`RemotePool::executors`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorStatus {
    pub endpoint: String,
    pub in_flight: usize,
    pub health: Health,
}

struct Shared {
    config: ExecutorsConfig,
    /// `config.ca_file`, loaded once.
    tls: Option<ClientTlsConfig>,
    members: RwLock<Vec<Arc<Member>>>,
    /// Held while a job picks its executor and counts itself there, so that jobs
    /// arriving together see each other's picks and spread out.
    picking: Mutex<()>,
}

/// Executors reached over gRPC. Cheap to clone; background tasks (DNS refresh, health
/// checks) stop when the last clone is dropped.
#[derive(Clone)]
pub struct RemotePool {
    shared: Arc<Shared>,
}

impl RemotePool {
    /// Sets up the executors of `config` (`endpoints` or `dns`). With `dns`, the name is
    /// resolved once before this returns (a failure leaves the pool empty until the next
    /// refresh). Spawns the refresh and health tasks on the current runtime.
    pub async fn new(config: ExecutorsConfig) -> RemotePool {
        // `enclave-broker` checks the CA file before it gets here; a library caller with
        // a bad one gets its https executors refused, each with the reason.
        let tls = config.tls().unwrap_or_else(|e| {
            tracing::error!(error = %e, "executor CA not loaded");
            None
        });
        let shared = Arc::new(Shared {
            config: config.clone(),
            tls,
            members: RwLock::new(Vec::new()),
            picking: Mutex::new(()),
        });
        let pool = RemotePool { shared };
        for endpoint in &config.endpoints {
            pool.add(endpoint.clone());
        }
        if let Some(name) = &config.dns {
            pool.resolve(name).await;
            tokio::spawn(refresh_dns(
                Arc::downgrade(&pool.shared),
                name.clone(),
                config.refresh(),
            ));
        }
        tokio::spawn(check_health(
            Arc::downgrade(&pool.shared),
            config.health_interval(),
        ));
        pool
    }

    fn add(&self, endpoint: String) {
        match Member::new(endpoint, &self.shared.config, self.shared.tls.as_ref()) {
            Ok(member) => {
                tracing::info!(executor = %member.endpoint, "executor added");
                self.shared
                    .members
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Arc::new(member));
            }
            Err(e) => tracing::error!(error = %e, "executor endpoint refused"),
        }
    }

    fn members(&self) -> Vec<Arc<Member>> {
        self.shared
            .members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The executors known now.
    pub fn executors(&self) -> Vec<ExecutorStatus> {
        self.members()
            .iter()
            .map(|m| ExecutorStatus {
                endpoint: m.endpoint.clone(),
                in_flight: m.in_flight.load(Ordering::SeqCst),
                health: m.health(),
            })
            .collect()
    }

    /// Makes the member set match what `name` resolves to now. Members that disappear
    /// are only forgotten: their running jobs keep their own handle on the connection.
    async fn resolve(&self, name: &str) {
        let addrs: HashSet<SocketAddr> = match tokio::net::lookup_host(name).await {
            Ok(addrs) => addrs.collect(),
            Err(e) => {
                tracing::warn!(name, error = %e, "resolving executors failed; keeping the current set");
                return;
            }
        };
        // With a CA the executors serve TLS, with certificates for the DNS name (the
        // addresses it resolves to change; the name does not).
        let tls = self.shared.tls.clone().map(|tls| {
            let host = name.rsplit_once(':').map_or(name, |(host, _)| host);
            tls.domain_name(host.trim_start_matches('[').trim_end_matches(']'))
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let wanted: HashSet<String> = addrs.iter().map(|a| format!("{scheme}://{a}")).collect();
        let mut members = self
            .shared
            .members
            .write()
            .unwrap_or_else(|p| p.into_inner());
        members.retain(|m| {
            let keep = wanted.contains(&m.endpoint);
            if !keep {
                tracing::info!(executor = %m.endpoint, "executor removed (no longer in DNS)");
            }
            keep
        });
        let known: HashSet<String> = members.iter().map(|m| m.endpoint.clone()).collect();
        let mut new: Vec<&String> = wanted.iter().filter(|e| !known.contains(*e)).collect();
        new.sort();
        for endpoint in new {
            match Member::new(endpoint.clone(), &self.shared.config, tls.as_ref()) {
                Ok(member) => {
                    tracing::info!(executor = %endpoint, "executor added");
                    members.push(Arc::new(member));
                }
                Err(e) => tracing::error!(error = %e, "executor endpoint refused"),
            }
        }
    }

    /// The least loaded executor not tried yet for this job: up ones first, then (so a
    /// job is not refused while a down mark is merely stale) the rest. The job counts
    /// against it from here on, as long as the returned guard lives.
    fn pick(&self, tried: &HashSet<String>) -> Option<InFlight> {
        let _picking = self
            .shared
            .picking
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let candidates: Vec<Arc<Member>> = self
            .members()
            .into_iter()
            .filter(|m| !tried.contains(&m.endpoint))
            .collect();
        let least = |members: Vec<&Arc<Member>>| -> Option<Arc<Member>> {
            // One reading of each load: read twice, concurrent jobs can move every load
            // off the minimum between the readings and leave nothing to choose from.
            let loads: Vec<(usize, &Arc<Member>)> = members
                .into_iter()
                .map(|m| (m.in_flight.load(Ordering::SeqCst), m))
                .collect();
            let min = loads.iter().map(|(load, _)| *load).min()?;
            let best: Vec<&Arc<Member>> = loads
                .into_iter()
                .filter(|(load, _)| *load == min)
                .map(|(_, m)| m)
                .collect();
            let i = rand::random_range(0..best.len());
            Some(best[i].clone())
        };
        least(candidates.iter().filter(|m| m.is_up(now)).collect())
            .or_else(|| least(candidates.iter().collect()))
            .map(InFlight::new)
    }

    /// `trace`: the job's trace context, for the executor.
    async fn start_job(&self, job: Job, trace: http::HeaderMap) -> Result<StartedJob, StartError> {
        let config = &self.shared.config;
        let mut tried = HashSet::new();
        let mut busy = Vec::new();
        let mut failures = Vec::new();
        for _ in 0..config.max_start_attempts {
            let Some(in_flight) = self.pick(&tried) else {
                break;
            };
            let member = in_flight.0.clone();
            tried.insert(member.endpoint.clone());
            match self.attempt(in_flight, job.clone(), &trace).await {
                Ok(started) => return Ok(started),
                Err(Attempt::Invalid(message)) => return Err(StartError::Invalid(message)),
                Err(Attempt::Busy(message)) => {
                    tracing::debug!(executor = %member.endpoint, "executor full; trying another");
                    busy.push(format!("{}: {message}", member.endpoint));
                }
                Err(Attempt::Down(message)) => {
                    tracing::warn!(executor = %member.endpoint, reason = %message, "job could not start; trying another");
                    member.set_down(Instant::now() + config.down_retry());
                    failures.push(format!("{}: {message}", member.endpoint));
                }
                Err(Attempt::Failed(message)) => {
                    tracing::warn!(executor = %member.endpoint, reason = %message, "job could not start; trying another");
                    failures.push(format!("{}: {message}", member.endpoint));
                }
            }
        }
        if tried.is_empty() {
            return Err(StartError::Unavailable(
                "no executors are known (check [executors] and DNS)".into(),
            ));
        }
        if failures.is_empty() && !busy.is_empty() {
            return Err(StartError::Busy(format!(
                "every executor tried is running its maximum of jobs ({})",
                busy.join("; ")
            )));
        }
        let mut all = failures;
        all.extend(busy);
        Err(StartError::Unavailable(format!(
            "no executor could start the job ({})",
            all.join("; ")
        )))
    }

    async fn attempt(
        &self,
        in_flight: InFlight,
        job: Job,
        trace: &http::HeaderMap,
    ) -> Result<StartedJob, Attempt> {
        let member = &in_flight.0;
        let max_tool_calls = Limits::requested(job.level(), job.limits.as_ref()).max_tool_calls;
        let (results_tx, results_rx) = ToolResults::channel(max_tool_calls);
        let first = RunRequest {
            msg: Some(Msg::Job(job)),
        };
        let requests = futures::stream::once(async move { first }).chain(
            ReceiverStream::new(results_rx).map(|r| RunRequest {
                msg: Some(Msg::ToolResult(r)),
            }),
        );
        let mut request = tonic::Request::new(requests);
        request.metadata_mut().as_mut().extend(trace.clone());
        let mut client = member.client.clone();
        let timeout = self.shared.config.start_timeout();
        let response = match tokio::time::timeout(timeout, client.run(request)).await {
            Err(_) => {
                return Err(Attempt::Down(format!(
                    "no answer within {} ms",
                    timeout.as_millis()
                )));
            }
            Ok(Err(status)) => return Err(Attempt::from_status(&status)),
            Ok(Ok(response)) => response,
        };
        member.set_health(Health::Up);
        let events = numbered(response.into_inner());
        Ok(StartedJob::new(
            member.endpoint.clone(),
            events,
            results_tx,
            in_flight,
        ))
    }
}

enum Attempt {
    Invalid(String),
    Busy(String),
    /// Unreachable or draining: mark it down.
    Down(String),
    /// Refused for another reason: try elsewhere, but do not mark it down.
    Failed(String),
}

impl Attempt {
    fn from_status(status: &tonic::Status) -> Attempt {
        let message = status.message().to_string();
        match status.code() {
            tonic::Code::InvalidArgument => Attempt::Invalid(message),
            tonic::Code::ResourceExhausted => Attempt::Busy(message),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded => {
                Attempt::Down(format!("{:?}: {message}", status.code()))
            }
            code => Attempt::Failed(format!("{code:?}: {message}")),
        }
    }
}

/// The executor's stream as a stream of events, checking its numbering: a gap would
/// mean a lost event, and the job's transcript must not silently miss one.
fn numbered(stream: tonic::Streaming<RunEvent>) -> EventStream {
    let stream = futures::stream::unfold(
        (stream, 0u64, false),
        |(mut stream, expected, done)| async move {
            if done {
                return None;
            }
            let item = match stream.message().await {
                Ok(None) => return None,
                Err(status) => Err(format!(
                    "the executor's stream failed: {}",
                    status.message()
                )),
                Ok(Some(RunEvent { seq, .. })) if seq != expected => Err(format!(
                    "the executor sent event {seq} where {expected} was due"
                )),
                Ok(Some(RunEvent { event: None, .. })) => {
                    Err("the executor sent an empty event".to_string())
                }
                Ok(Some(RunEvent {
                    event: Some(event), ..
                })) => Ok(event),
            };
            let done = item.is_err();
            Some((item, (stream, expected + 1, done)))
        },
    );
    Box::pin(stream)
}

impl Backend for RemotePool {
    fn start(
        &self,
        job: Job,
        span: &tracing::Span,
    ) -> BoxFuture<'_, Result<StartedJob, StartError>> {
        let mut trace = http::HeaderMap::new();
        enclave_server::telemetry::inject(span, &mut trace);
        Box::pin(self.start_job(job, trace))
    }

    fn describe(&self) -> String {
        match &self.shared.config.dns {
            Some(name) => format!("executors at {name} ({} resolved)", self.members().len()),
            None => format!("{} executors", self.members().len()),
        }
    }

    fn executors(&self) -> Vec<ExecutorStatus> {
        RemotePool::executors(self)
    }
}

/// How often a DNS name that resolved to no executor is asked again: compose and swarm
/// start the broker and its executors together, and the first resolution often comes
/// before the executors' records exist; jobs meanwhile get UNAVAILABLE.
const EMPTY_DNS_REFRESH: Duration = Duration::from_secs(1);

async fn refresh_dns(shared: Weak<Shared>, name: String, every: Duration) {
    loop {
        let empty = shared.upgrade().is_some_and(|shared| {
            shared
                .members
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
        });
        tokio::time::sleep(if empty {
            every.min(EMPTY_DNS_REFRESH)
        } else {
            every
        })
        .await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        RemotePool { shared }.resolve(&name).await;
    }
}

async fn check_health(shared: Weak<Shared>, every: Duration) {
    let service = enclave_proto::v1::executor_server::SERVICE_NAME.to_string();
    loop {
        tokio::time::sleep(every).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let members = shared
            .members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let down_for = shared.config.down_retry();
        drop(shared);
        let checks = members.into_iter().map(|member| {
            let service = service.clone();
            async move {
                let request = HealthCheckRequest { service };
                let mut health = member.health.clone();
                let answer =
                    tokio::time::timeout(HEALTH_CHECK_TIMEOUT, health.check(request)).await;
                let until = Instant::now() + down_for;
                member.set_health(match answer {
                    Ok(Ok(response)) => match response.get_ref().status() {
                        ServingStatus::Serving => Health::Up,
                        ServingStatus::NotServing => Health::Draining { until },
                        _ => Health::Down { until },
                    },
                    _ => Health::Down { until },
                });
            }
        });
        futures::future::join_all(checks).await;
    }
}
