//! Traces (`--otlp-endpoint`): one trace per job, whose spans come from the broker and
//! its executor, both processes exporting to a collector in this test; a client's
//! `traceparent` is the parent of the broker's job span, and the job's log line names
//! the trace.

use std::time::{Duration, Instant};

use enclave_proto::v1::{RecordKind, Suite};
use serde_json::json;

use crate::collector::{Collector, Received};
use crate::executors::start_executor_with;
use crate::support::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const MARKER: &str = "script-text-marker-0b7d";

/// The spans named `name` that `service` sent in `trace`.
fn named<'a>(spans: &'a [Received], service: &str, trace: &str, name: &str) -> Vec<&'a Received> {
    spans
        .iter()
        .filter(|s| s.service == service && s.trace_id() == trace && s.span.name == name)
        .collect()
}

fn one<'a>(spans: &'a [Received], service: &str, trace: &str, name: &str) -> &'a Received {
    let found = named(spans, service, trace, name);
    assert_eq!(found.len(), 1, "{service} {name} in {trace}: {spans:#?}");
    found[0]
}

#[tokio::test]
async fn a_job_is_one_trace_across_broker_and_executor_under_the_clients_span() {
    let collector = Collector::start().await;
    let otlp = collector.endpoint();
    // Export every 100 ms rather than every 5 s.
    let quick = [("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let (_executor, port) = start_executor_with(&["--otlp-endpoint", &otlp], &quick).await;
    let executor = format!("http://127.0.0.1:{port}");
    let broker =
        Broker::start_with_env(&["--executor", &executor, "--otlp-endpoint", &otlp], &quick);
    let mut raw = Raw::connect(&broker, Suite::X25519Ed25519Aes256gcmSha256).await;

    let code = format!("await callTool('echo', '{MARKER}'); return 1");
    let mut request = tonic::Request::new(raw.seal(RecordKind::ExecuteRequest, job(&code)));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE}-{CLIENT_SPAN}-01").parse().unwrap(),
    );
    assert_eq!(value(&raw.send_request(request).await.unwrap()), json!(1));
    // Without a client's context, a trace of the broker's own.
    assert_eq!(value(&raw.execute("return 2").await.unwrap()), json!(2));

    let deadline = Instant::now() + Duration::from_secs(20);
    let (spans, own_trace) = loop {
        let spans = collector.spans();
        let own_trace = spans
            .iter()
            .find(|s| {
                s.service == "enclave-broker" && s.span.name == "job" && s.trace_id() != TRACE
            })
            .map(Received::trace_id);
        let complete = |trace: &str| {
            !named(&spans, "enclave-executor", trace, "sandbox start").is_empty()
                && !named(&spans, "enclave-broker", trace, "job").is_empty()
                && !named(&spans, "enclave-broker", trace, "seal").is_empty()
        };
        if let Some(own) = own_trace.filter(|own| complete(own) && complete(TRACE)) {
            break (spans, own);
        }
        assert!(Instant::now() < deadline, "spans so far: {spans:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let job = one(&spans, "enclave-broker", TRACE, "job");
    assert_eq!(
        job.parent_id(),
        CLIENT_SPAN,
        "the client's span is the parent"
    );
    for name in ["queue", "tool call", "seal"] {
        let child = one(&spans, "enclave-broker", TRACE, name);
        assert_eq!(child.parent_id(), job.span_id(), "{name}");
    }
    let tool = one(&spans, "enclave-broker", TRACE, "tool call");
    assert_eq!(tool.attribute("tool").as_deref(), Some("echo"));
    let remote = one(&spans, "enclave-executor", TRACE, "job");
    assert_eq!(remote.parent_id(), job.span_id(), "the executor's job span");
    let start = one(&spans, "enclave-executor", TRACE, "sandbox start");
    assert_eq!(start.parent_id(), remote.span_id());

    let own = one(&spans, "enclave-broker", &own_trace, "job");
    assert!(own.parent_id().is_empty(), "a root span: {own:?}");
    let own_remote = one(&spans, "enclave-executor", &own_trace, "job");
    assert_eq!(own_remote.parent_id(), own.span_id());

    // Names and ids, never what the job did.
    let exported = format!("{spans:?}");
    assert!(!exported.contains(MARKER), "script text in a span");

    let log = broker.log_with("job finished").await;
    let line = log
        .lines()
        .find(|l| l.contains("job finished") && l.contains(&format!("trace_id={TRACE}")));
    assert!(line.is_some(), "no job line names the trace:\n{log}");
}

/// A collector that cannot be reached costs no job, and the operator hears of it: the
/// exporter's failure is in the broker's log.
#[tokio::test]
async fn an_unreachable_collector_is_logged_and_jobs_go_on() {
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let broker = Broker::start_with_env(
        &["--otlp-endpoint", &format!("http://{nowhere}")],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let mut raw = Raw::connect(&broker, Suite::X25519Ed25519Aes256gcmSha256).await;
    for _ in 0..3 {
        assert_eq!(value(&raw.execute("return 1").await.unwrap()), json!(1));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = broker.log();
        let reported = log.lines().any(|l| {
            l.contains("opentelemetry") && (l.contains(" WARN ") || l.contains(" ERROR "))
        });
        if reported {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no exporter failure in the log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
