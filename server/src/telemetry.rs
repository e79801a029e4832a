//! What a server tells its operators besides metrics: log lines (text or JSON) and, with
//! `--otlp-endpoint`, traces.
//!
//! Traces are the `tracing` spans the code already opens, bridged to OpenTelemetry and
//! exported over OTLP/gRPC; off (no exporter, no bridge) unless an endpoint is given.
//! A job's trace crosses processes by the W3C `traceparent` header in gRPC metadata and
//! HTTP headers: a client's becomes the parent of the broker's job span, and the broker's
//! job span the parent of the executor's. Spans carry no script text, arguments, results
//! or secrets: names, a tool's configured name, and ids.

use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// How long exporting what is left may take at shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// `--log-format`: how log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event, for people.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`, and the
    /// `span` the event happened in), for log shippers.
    Json,
}

/// The flags both servers take for their logs and traces.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TelemetryArgs {
    /// Log lines as text, or as one JSON object each (for log shippers).
    #[arg(long, env = "ENCLAVE_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,
    /// Export traces over OTLP/gRPC to this collector (`http://host:4317`); without it,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`, else off.
    #[arg(long, env = "ENCLAVE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

impl TelemetryArgs {
    /// The collector traces go to, if any: the flag, then OpenTelemetry's standard
    /// variables (empty counts as unset).
    pub fn endpoint(&self) -> Option<String> {
        let standard = |name| std::env::var(name).ok();
        self.otlp_endpoint
            .clone()
            .or_else(|| standard("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
            .or_else(|| standard("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "the OTLP endpoint {0:?} is not an http:// URL (the exporter speaks plaintext OTLP/gRPC; put a collector beside the server for TLS)"
    )]
    Endpoint(String),
    #[error("building the OTLP exporter: {0}")]
    Exporter(String),
}

/// The process's logging and, when on, its trace exporter. [`Telemetry::shutdown`]
/// exports the spans still buffered; call it before the process exits.
#[must_use = "shut it down before exiting, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Logs to stderr in `args.log_format`, filtered by `ENCLAVE_LOG` (tracing's
/// `EnvFilter` syntax; `info` when unset, and with a warning when invalid), and, for a
/// process that serves (`traced_as` its service name), exports its spans when an OTLP
/// endpoint is configured. Traces need a tokio runtime: call it from inside one.
pub fn init(
    args: &TelemetryArgs,
    traced_as: Option<&'static str>,
) -> Result<Telemetry, TelemetryError> {
    let wanted = std::env::var("ENCLAVE_LOG").ok();
    let (filter, invalid) = log_filter(wanted.as_deref());
    // Colours only for a person at a terminal: not in files, journald or `docker logs`.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match args.log_format {
        LogFormat::Text => logs.with_ansi(colour).with_filter(filter).boxed(),
        LogFormat::Json => logs.json().with_ansi(false).with_filter(filter).boxed(),
    };
    let endpoint = traced_as.and_then(|service| Some((args.endpoint()?, service)));
    let provider = endpoint
        .as_ref()
        .map(|(endpoint, service)| tracer_provider(endpoint, service))
        .transpose()?;
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("enclave"))
            // Per span, not per poll: the job's futures enter their spans at every poll,
            // and busy/idle times, an activated context, source locations and thread
            // names would cost at each one (or each span) for nothing a trace needs.
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            // Only our own spans: a dependency's would be noise, and could carry what
            // ours are careful to leave out. Log events stay in the logs.
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.is_span()
                    && *meta.level() <= tracing::Level::INFO
                    && meta.target().starts_with("enclave_")
            }))
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
    if let Some(error) = invalid {
        tracing::warn!(%error, "ENCLAVE_LOG is not a valid filter; logging at info");
    }
    if let Some((endpoint, _)) = endpoint {
        tracing::info!(%endpoint, "exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}

fn tracer_provider(
    endpoint: &str,
    service: &'static str,
) -> Result<SdkTracerProvider, TelemetryError> {
    if !endpoint.starts_with("http://") {
        return Err(TelemetryError::Endpoint(endpoint.to_string()));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    // Batches go out from a thread of the SDK's own, which a finished span never wakes
    // (only a full batch or the timer does): no wake-up per span. Its gRPC channel was
    // made here, on this runtime, whose tasks carry the exports' I/O.
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

impl Telemetry {
    /// Exports the spans still buffered (within a few seconds) and stops exporting.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // `shutdown` blocks until the last batch is out, and that export's I/O runs on
        // this runtime: block a thread of its own, so that a one-thread runtime goes on.
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(FLUSH_TIMEOUT, flushed).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "exporting the last spans failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "exporting the last spans failed"),
            Err(_) => tracing::warn!("exporting the last spans took too long; some are lost"),
        }
    }
}

/// The span of one job: a child of the trace context in `headers` (a client's or the
/// broker's `traceparent`) if there is one. Its `trace_id` field, which log lines of the
/// job carry, is the trace's id: this process's when it exports traces, else the
/// caller's, else empty.
pub fn job_span(headers: &http::HeaderMap) -> tracing::Span {
    let span = tracing::info_span!("job", trace_id = tracing::field::Empty);
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let callers = parent.span().span_context().trace_id();
    // Refused when traces are off (no bridge): then there is no span of ours to parent.
    let _ = span.set_parent(parent);
    let trace_id = Some(span.context().span().span_context().trace_id())
        .filter(|id| *id != TraceId::INVALID)
        .or(Some(callers).filter(|id| *id != TraceId::INVALID));
    if let Some(trace_id) = trace_id {
        span.record("trace_id", tracing::field::display(trace_id));
    }
    span
}

/// Writes `span`'s trace context into `headers` as `traceparent`, so that the next
/// process's spans join its trace. Writes nothing when traces are off.
pub fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
    let context = span.context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Cranelift logs a few lines per compiled function at `debug`, thousands at start-up,
/// which would bury ours: it stays at `info` unless the filter names it.
const QUIET_COMPILER: [&str; 2] = ["cranelift_codegen=info", "wasmtime_internal_cranelift=info"];

fn log_filter(wanted: Option<&str>) -> (EnvFilter, Option<String>) {
    let wanted = wanted.map(str::trim).filter(|w| !w.is_empty());
    let (mut filter, invalid) = match EnvFilter::try_new(wanted.unwrap_or("info")) {
        Ok(filter) => (filter, None),
        Err(e) => (EnvFilter::new("info"), Some(e.to_string())),
    };
    if !wanted.is_some_and(|w| w.contains("cranelift")) {
        for quiet in QUIET_COMPILER {
            filter = filter.add_directive(quiet.parse().expect("a valid directive"));
        }
    }
    (filter, invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(wanted: Option<&str>) -> String {
        log_filter(wanted).0.to_string()
    }

    #[test]
    fn unset_or_empty_means_info_not_off() {
        for wanted in [None, Some(""), Some("  ")] {
            let filter = shown(wanted);
            assert!(filter.split(',').any(|d| d == "info"), "{filter}");
        }
    }

    #[test]
    fn debug_leaves_the_compiler_at_info_unless_named() {
        let filter = shown(Some("debug"));
        assert!(filter.split(',').any(|d| d == "debug"), "{filter}");
        assert!(
            filter.contains("wasmtime_internal_cranelift=info"),
            "{filter}"
        );
        assert!(filter.contains("cranelift_codegen=info"), "{filter}");

        let filter = shown(Some("info,wasmtime_internal_cranelift=debug"));
        assert!(
            filter.contains("wasmtime_internal_cranelift=debug"),
            "{filter}"
        );
        assert!(
            !filter.contains("wasmtime_internal_cranelift=info"),
            "{filter}"
        );
    }

    #[test]
    fn an_invalid_filter_is_reported_and_logs_at_info() {
        let (filter, invalid) = log_filter(Some("enclave_broker=loud"));
        assert!(invalid.is_some());
        assert!(filter.to_string().split(',').any(|d| d == "info"));
        assert!(log_filter(Some("debug")).1.is_none());
    }

    /// Log lines written while `f` runs, as text.
    fn logged(traces: Option<&SdkTracerProvider>, f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || writer.clone())
                    .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
            )
            .with(traces.map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("test"))));
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    const CALLERS: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// A job for the caller's `traceparent`: its log line, and what it passes on.
    fn callers_job(traces: Option<&SdkTracerProvider>) -> (String, http::HeaderMap) {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", CALLERS.parse().unwrap());
        let mut injected = http::HeaderMap::new();
        let logs = logged(traces, || {
            let span = job_span(&headers);
            span.in_scope(|| tracing::info!("job finished"));
            inject(&span, &mut injected);
        });
        (logs, injected)
    }

    #[test]
    fn a_callers_trace_id_names_the_job_even_with_traces_off() {
        let (logs, injected) = callers_job(None);
        assert!(
            logs.contains("job{trace_id=4bf92f3577b34da6a3ce929d0e0e4736}: "),
            "{logs}"
        );
        // No span of ours to pass on.
        assert!(injected.is_empty());

        let logs = logged(None, || {
            job_span(&http::HeaderMap::new()).in_scope(|| tracing::info!("job finished"))
        });
        assert!(logs.contains("job: "), "{logs}");
    }

    #[test]
    fn a_malformed_traceparent_is_ignored() {
        let provider = SdkTracerProvider::builder().build();
        for traces in [None, Some(&provider)] {
            for value in [
                "garbage",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-zzzzzzzzzzzzzzzz-01",
            ] {
                let mut headers = http::HeaderMap::new();
                headers.insert("traceparent", value.parse().unwrap());
                let logs = logged(traces, || {
                    job_span(&headers).in_scope(|| tracing::info!("job finished"))
                });
                assert!(!logs.contains("4bf92f3577b34da6a3ce929d0e0e4736"), "{logs}");
                // Off: no trace id at all; on: a trace of its own.
                assert_eq!(logs.contains("job{trace_id="), traces.is_some(), "{logs}");
            }
        }
    }

    #[test]
    fn with_traces_on_the_job_is_the_callers_child_and_passes_its_own_context_on() {
        let provider = SdkTracerProvider::builder().build();
        let (logs, injected) = callers_job(Some(&provider));
        assert!(
            logs.contains("job{trace_id=4bf92f3577b34da6a3ce929d0e0e4736}: "),
            "{logs}"
        );
        let passed = injected["traceparent"].to_str().unwrap();
        let parts: Vec<&str> = passed.split('-').collect();
        assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "{passed}");
        assert_ne!(
            parts[2], "00f067aa0ba902b7",
            "the job's own span id: {passed}"
        );

        // Without a caller, a trace of its own.
        let logs = logged(Some(&provider), || {
            job_span(&http::HeaderMap::new()).in_scope(|| tracing::info!("job finished"))
        });
        assert!(logs.contains("job{trace_id="), "{logs}");
    }

    #[test]
    fn only_http_endpoints_are_accepted() {
        let refused = tracer_provider("https://collector:4317", "test")
            .err()
            .unwrap();
        assert!(
            refused.to_string().contains("not an http:// URL"),
            "{refused}"
        );
        assert!(tracer_provider("collector:4317", "test").is_err());
    }
}
