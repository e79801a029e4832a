//! The broker's metrics (`enclave_broker_*`). What the broker already counts for its
//! logs (sessions, executors) is read at each scrape by a collector; the rest is
//! counted where it happens. Labels are bounded: suites, status codes, outcome codes,
//! reasons, the configured tool names (a name no tool has is `unknown`) and the
//! configured executors; never a session id, script text, argument or secret.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use enclave_proto::v1::{FinalEvent, Suite, final_event};
use enclave_server::listener::Connections;
use enclave_server::metrics::ConnectionMetrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::jobs::{Broker, JobFailure};
use crate::pool::{Backend, Health};
use crate::session::SessionStore;
use crate::tools::{ToolError, ToolErrorKind};

/// Everything the broker exposes: its own counts, the session table, the executor pool
/// (or the embedded executor's jobs) and the listeners' `connections`.
pub fn registry(
    broker: &Broker,
    sessions: &Arc<SessionStore>,
    connections: &Arc<Connections>,
) -> Registry {
    let mut registry = Registry::default();
    broker.metrics().register(&mut registry);
    broker.backend().register_metrics(&mut registry);
    registry.register_collector(Box::new(SessionMetrics(sessions.clone())));
    registry.register_collector(Box::new(PoolMetrics(broker.backend().clone())));
    registry.register_collector(Box::new(ConnectionMetrics(connections.clone())));
    registry
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Handshake {
    suite: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolCall {
    tool: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Tool {
    tool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Endpoint {
    endpoint: &'static str,
}

/// 1 ms to about 65 s.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Why a sealed record was refused, for `enclave_broker_records_refused_total`.
#[derive(Clone, Copy, Debug)]
pub enum Refused {
    /// The session is unknown or expired.
    UnknownSession,
    /// The record did not authenticate: tampered, or sealed under another key.
    Tampered,
    /// A sequence number already used, or too old to tell.
    Replay,
    /// Sealed under an epoch that is not the session's.
    WrongEpoch,
    /// Anything else: a wrong kind or session, too large, not decodable.
    Malformed,
}

impl Refused {
    /// The reason of a record that did not open.
    pub fn of(error: &enclave_proto::Error) -> Refused {
        use enclave_proto::Error;
        match error {
            Error::UnknownSession => Refused::UnknownSession,
            Error::RecordAuth => Refused::Tampered,
            Error::Replay(_) | Error::TooOld(_) => Refused::Replay,
            Error::StaleEpoch(_) | Error::EpochAhead { .. } => Refused::WrongEpoch,
            _ => Refused::Malformed,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Refused::UnknownSession => "unknown_session",
            Refused::Tampered => "tampered",
            Refused::Replay => "replay",
            Refused::WrongEpoch => "wrong_epoch",
            Refused::Malformed => "malformed",
        }
    }
}

/// What the broker counts as it works. Cheap to clone (every metric is shared).
#[derive(Debug, Clone)]
pub struct BrokerMetrics {
    handshakes: Family<Handshake, Counter>,
    client_auths: Family<Outcome, Counter>,
    jobs_started: Counter,
    jobs_finished: Family<Outcome, Counter>,
    job_duration: Histogram,
    first_event: Histogram,
    tool_calls: Family<ToolCall, Counter>,
    tool_duration: Family<Tool, Histogram, fn() -> Histogram>,
    records_refused: Family<Reason, Counter>,
    legacy_requests: Family<Endpoint, Counter>,
}

impl Default for BrokerMetrics {
    fn default() -> Self {
        BrokerMetrics {
            handshakes: Family::default(),
            client_auths: Family::default(),
            jobs_started: Counter::default(),
            jobs_finished: Family::default(),
            job_duration: seconds(),
            first_event: seconds(),
            tool_calls: Family::default(),
            tool_duration: Family::new_with_constructor(seconds),
            records_refused: Family::default(),
            legacy_requests: Family::default(),
        }
    }
}

impl BrokerMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry;
        r.register(
            "enclave_broker_handshakes",
            "ClientHellos answered, by suite and outcome (ok or the gRPC status)",
            self.handshakes.clone(),
        );
        r.register(
            "enclave_broker_client_auths",
            "ClientAuths answered, by outcome (ok or the gRPC status)",
            self.client_auths.clone(),
        );
        r.register(
            "enclave_broker_jobs_started",
            "Jobs an executor (or the embedded one) accepted",
            self.jobs_started.clone(),
        );
        r.register(
            "enclave_broker_jobs_finished",
            "Jobs ended, by outcome: OK, the job's error code, or the broker's (UNAVAILABLE, EXECUTOR_LOST, ...)",
            self.jobs_finished.clone(),
        );
        r.register(
            "enclave_broker_job_duration_seconds",
            "Time from a job's arrival at the broker to its end",
            self.job_duration.clone(),
        );
        r.register(
            "enclave_broker_job_first_event_seconds",
            "Time from a job's arrival at the broker to its first event (output, tool call or end)",
            self.first_event.clone(),
        );
        r.register(
            "enclave_broker_tool_calls",
            "Tool calls, by tool and outcome (ok, unknown_tool, bad_arguments, denied, timeout, failed)",
            self.tool_calls.clone(),
        );
        r.register(
            "enclave_broker_tool_call_duration_seconds",
            "Time tool calls took, by tool",
            self.tool_duration.clone(),
        );
        r.register(
            "enclave_broker_records_refused",
            "Sealed records refused, by reason (unknown_session, tampered, replay, wrong_epoch, malformed)",
            self.records_refused.clone(),
        );
        r.register(
            "enclave_broker_legacy_requests",
            "Requests to the legacy API, by endpoint",
            self.legacy_requests.clone(),
        );
    }

    pub(crate) fn handshake(&self, suite: Option<Suite>, outcome: Result<(), tonic::Code>) {
        let suite = match suite {
            Some(Suite::X25519Ed25519Aes256gcmSha256) => "x25519",
            Some(Suite::P256Ed25519Aes256gcmSha256) => "p256",
            _ => "unknown",
        };
        let outcome = status_label(outcome);
        self.handshakes
            .get_or_create(&Handshake { suite, outcome })
            .inc();
    }

    pub(crate) fn client_auth(&self, outcome: Result<(), tonic::Code>) {
        let outcome = status_label(outcome);
        self.client_auths.get_or_create(&Outcome { outcome }).inc();
    }

    pub(crate) fn job_started(&self) {
        self.jobs_started.inc();
    }

    pub(crate) fn first_event(&self, after: Duration) {
        self.first_event.observe(after.as_secs_f64());
    }

    /// A job's end, `None` when its caller went away.
    pub(crate) fn job_finished(
        &self,
        outcome: Option<&Result<FinalEvent, JobFailure>>,
        after: Duration,
    ) {
        let code = match outcome {
            None => "CANCELLED",
            Some(Ok(event)) => match &event.outcome {
                Some(final_event::Outcome::Error(e)) => e.code().as_str_name(),
                _ => "OK",
            },
            Some(Err(failure)) => failure.code().as_str_name(),
        };
        let outcome = code.strip_prefix("ERROR_CODE_").unwrap_or(code);
        self.jobs_finished.get_or_create(&Outcome { outcome }).inc();
        self.job_duration.observe(after.as_secs_f64());
    }

    /// `tool` is the tool's configured name, or `unknown`.
    pub(crate) fn tool_call(
        &self,
        tool: &str,
        outcome: &Result<String, ToolError>,
        took: Duration,
    ) {
        let outcome = match outcome {
            Ok(_) => "ok",
            Err(e) => match e.kind {
                ToolErrorKind::UnknownTool => "unknown_tool",
                ToolErrorKind::BadArguments => "bad_arguments",
                ToolErrorKind::Denied => "denied",
                ToolErrorKind::Timeout => "timeout",
                ToolErrorKind::Failed => "failed",
            },
        };
        let tool = tool.to_string();
        self.tool_duration
            .get_or_create(&Tool { tool: tool.clone() })
            .observe(took.as_secs_f64());
        self.tool_calls
            .get_or_create(&ToolCall { tool, outcome })
            .inc();
    }

    pub(crate) fn record_refused(&self, why: Refused) {
        self.records_refused
            .get_or_create(&Reason {
                reason: why.label(),
            })
            .inc();
    }

    pub(crate) fn legacy_request(&self, endpoint: &'static str) {
        self.legacy_requests
            .get_or_create(&Endpoint { endpoint })
            .inc();
    }
}

fn status_label(outcome: Result<(), tonic::Code>) -> &'static str {
    use tonic::Code;
    match outcome {
        Ok(()) => "ok",
        Err(code) => match code {
            Code::InvalidArgument => "invalid_argument",
            Code::Unauthenticated => "unauthenticated",
            Code::PermissionDenied => "permission_denied",
            Code::FailedPrecondition => "failed_precondition",
            Code::ResourceExhausted => "resource_exhausted",
            Code::Aborted => "aborted",
            Code::Unavailable => "unavailable",
            _ => "other",
        },
    }
}

/// Sessions by stage and what the table did under pressure, read from the table at
/// each scrape: `enclave_broker_sessions{stage}` and `enclave_broker_sessions_*_total`.
pub struct SessionMetrics(pub Arc<SessionStore>);

impl fmt::Debug for SessionMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionMetrics")
    }
}

impl Collector for SessionMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let store = &self.0;
        let (all, unused, pending) = (store.len(), store.unused(), store.pending());
        let mut family = encoder.encode_descriptor(
            "enclave_broker_sessions",
            "Sessions held, by stage: active (has run a job), unused (has not yet), pending (waiting for its ClientAuth)",
            None,
            MetricType::Gauge,
        )?;
        for (stage, count) in [
            ("active", all.saturating_sub(unused)),
            ("unused", unused.saturating_sub(pending)),
            ("pending", pending),
        ] {
            let gauge = ConstGauge::new(count as i64);
            gauge.encode(family.encode_family(&[("stage", stage)])?)?;
        }
        let stats = store.stats();
        for (name, help, value) in [
            (
                "enclave_broker_sessions_evicted_unused",
                "Unused sessions dropped to make room for new ones",
                &stats.evicted_unused,
            ),
            (
                "enclave_broker_sessions_evicted_pending",
                "Sessions waiting for their ClientAuth dropped to make room",
                &stats.evicted_pending,
            ),
            (
                "enclave_broker_sessions_refused_source",
                "Handshakes refused: their source address held its maximum of unused sessions",
                &stats.refused_source,
            ),
            (
                "enclave_broker_sessions_refused_full",
                "Handshakes refused: every session in the table had run a job",
                &stats.refused_full,
            ),
        ] {
            let counter = ConstCounter::new(value.load(Ordering::Relaxed));
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// The executor pool read at each scrape: `enclave_broker_executors{state}` and
/// `enclave_broker_executor_jobs{executor}` (jobs in flight per configured executor).
pub struct PoolMetrics(pub Arc<dyn Backend>);

impl fmt::Debug for PoolMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PoolMetrics")
    }
}

impl Collector for PoolMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let executors = self.0.executors();
        if executors.is_empty() {
            // Embedded mode: the executor's own metrics tell.
            return Ok(());
        }
        let count =
            |state: fn(&Health) -> bool| executors.iter().filter(|e| state(&e.health)).count();
        let mut family = encoder.encode_descriptor(
            "enclave_broker_executors",
            "Executors in the pool, by state (healthy; unhealthy: failing health checks or starts; draining: shutting down)",
            None,
            MetricType::Gauge,
        )?;
        for (state, count) in [
            ("healthy", count(|h| matches!(h, Health::Up))),
            ("unhealthy", count(|h| matches!(h, Health::Down { .. }))),
            ("draining", count(|h| matches!(h, Health::Draining { .. }))),
        ] {
            let gauge = ConstGauge::new(count as i64);
            gauge.encode(family.encode_family(&[("state", state)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "enclave_broker_executor_jobs",
            "Jobs in flight on each executor",
            None,
            MetricType::Gauge,
        )?;
        for executor in &executors {
            let gauge = ConstGauge::new(executor.in_flight as i64);
            gauge.encode(family.encode_family(&[("executor", executor.endpoint.as_str())])?)?;
        }
        Ok(())
    }
}
