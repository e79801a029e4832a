//! What an operator uses: `--metrics-listen` (after a known mix of handshakes, jobs, tool
//! calls and refused records, `/metrics` shows exactly those counts, in an exposition
//! `promtool` accepts), `--log-format json` (every line one JSON object; a job's line
//! says how it went, never what it did), and the `healthcheck` subcommand.

use std::collections::BTreeMap;

use enclave_proto::v1::{Limits, RecordKind, Suite};
use serde_json::{Value, json};
use tonic::Code;

use crate::support::*;

/// Samples by `name{labels}` as the exposition writes them.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// `promtool check metrics` from Debian's `prometheus` package (`$PROMTOOL`, else on
/// the PATH; ./scripts/test provides it).
fn promtool_accepts(exposition: &str) {
    use std::io::Write;
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let mut child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "running {promtool} (Debian's prometheus package; ./scripts/test fetches it): {e}"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn metrics_count_exactly_what_happened() {
    let broker = Broker::start(&["--metrics-listen", "127.0.0.1:0"]);
    let mut x25519 = Raw::connect(&broker, Suite::X25519Ed25519Aes256gcmSha256).await;
    let mut p256 = Raw::connect(&broker, Suite::P256Ed25519Aes256gcmSha256).await;
    // Two jobs that end OK, one with a tool call that works and one that fails.
    assert_eq!(
        value(
            &x25519
                .execute("return await callTool('echo', 1)")
                .await
                .unwrap()
        ),
        json!(1)
    );
    assert_eq!(
        value(
            &p256
                .execute("try { await callTool('no such tool', {}) } catch (e) { return 'caught' }")
                .await
                .unwrap()
        ),
        json!("caught")
    );
    // One TIMEOUT.
    let slow = enclave_proto::v1::Job {
        limits: Some(Limits {
            timeout_ms: Some(100),
            ..Default::default()
        }),
        ..job("while (true) {}")
    };
    let record = x25519.seal(RecordKind::ExecuteRequest, slow);
    let result = x25519.send(record).await.unwrap();
    assert!(format!("{result:?}").contains("Timeout"), "{result:?}");
    // One tampered record and one replay: neither runs.
    let mut tampered = x25519.seal(RecordKind::ExecuteRequest, job("return 1"));
    tampered.ciphertext[0] ^= 1;
    assert_eq!(
        x25519.send(tampered).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let record = p256.seal(RecordKind::ExecuteRequest, job("return 'once'"));
    let copy = record.clone();
    assert_eq!(value(&p256.send(record).await.unwrap()), json!("once"));
    assert_eq!(
        p256.rpc.execute(copy).await.unwrap_err().code(),
        Code::Aborted
    );

    let text = broker.scrape_metrics().await;
    let got = samples(&text);
    let expected = [
        (
            r#"enclave_broker_handshakes_total{suite="x25519",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"enclave_broker_handshakes_total{suite="p256",outcome="ok"}"#,
            1.0,
        ),
        ("enclave_broker_jobs_started_total", 4.0),
        (r#"enclave_broker_jobs_finished_total{outcome="OK"}"#, 3.0),
        (
            r#"enclave_broker_jobs_finished_total{outcome="TIMEOUT"}"#,
            1.0,
        ),
        (
            r#"enclave_broker_tool_calls_total{tool="echo",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"enclave_broker_tool_calls_total{tool="unknown",outcome="unknown_tool"}"#,
            1.0,
        ),
        (
            r#"enclave_broker_records_refused_total{reason="tampered"}"#,
            1.0,
        ),
        (
            r#"enclave_broker_records_refused_total{reason="replay"}"#,
            1.0,
        ),
        (r#"enclave_broker_sessions{stage="active"}"#, 2.0),
        (r#"enclave_broker_sessions{stage="unused"}"#, 0.0),
        ("enclave_broker_job_duration_seconds_count", 4.0),
        // The embedded executor's own view of the same jobs.
        ("enclave_executor_jobs_admitted_total", 4.0),
        (r#"enclave_executor_jobs_finished_total{outcome="OK"}"#, 3.0),
        (
            r#"enclave_executor_jobs_finished_total{outcome="TIMEOUT"}"#,
            1.0,
        ),
        ("enclave_executor_jobs_running", 0.0),
        ("enclave_executor_instantiate_seconds_count", 4.0),
        ("enclave_executor_job_cpu_seconds_count", 4.0),
    ];
    for (key, value) in expected {
        assert_eq!(got.get(key), Some(&value), "{key} in\n{text}");
    }
    // Nothing else was refused or failed.
    for (key, value) in &got {
        if key.starts_with("enclave_broker_records_refused_total")
            || key.starts_with("enclave_broker_jobs_finished_total")
        {
            assert!(
                expected.iter().any(|(k, _)| k == key) || *value == 0.0,
                "{key} {value}"
            );
        }
    }
    assert!(got["enclave_connections_accepted_total"] >= 1.0, "{text}");
    // The TIMEOUT job spun for its 100 ms of wall time: counted as CPU time, even on a
    // machine busy enough to give it a tenth of a core (the three short jobs together
    // take about a millisecond).
    let cpu = got["enclave_executor_job_cpu_seconds_sum"];
    assert!((0.01..5.0).contains(&cpu), "{cpu} s of CPU");
    // No label carries a session id, script text or argument.
    assert!(!text.contains("while (true)") && !text.contains("no such tool"));
    promtool_accepts(&text);
}

const SECRET: &str = "v4lue-of-the-secret-91c3";
const MARKER: &str = "script-text-marker-5e07";

#[tokio::test]
async fn json_logs_parse_and_tell_how_a_job_went_not_what_it_did() {
    let config = temp_path("broker.toml");
    std::fs::write(
        &config,
        "[tools.\"secrets:get\"]\nenv = [\"API_KEY\"]\n\n[tools.\"secrets:get\".secrets.api_key]\nhosts = [\"api.example.com\"]\ninject = { header = \"Authorization\" }\n\n[tools.\"http:fetch\"]\nallow_hosts = [\"api.example.com\"]\n",
    )
    .unwrap();
    let broker = Broker::start_with_env(
        &["--config", config.to_str().unwrap(), "--log-format", "json"],
        &[("API_KEY", SECRET)],
    );
    let mut raw = Raw::connect(&broker, Suite::X25519Ed25519Aes256gcmSha256).await;
    let code = format!(
        "const key = await callTool('secrets:get', {{key: 'api_key'}});
         await callTool('echo', {{key, note: '{MARKER}'}});
         console.log('{MARKER}', key);
         return '{MARKER}';"
    );
    // With the client's trace context: the job's line names its trace.
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let mut request = tonic::Request::new(raw.seal(RecordKind::ExecuteRequest, job(&code)));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace}-b7ad6b7169203331-01").parse().unwrap(),
    );
    assert_eq!(
        value(&raw.send_request(request).await.unwrap()),
        json!(MARKER)
    );

    let finished = broker
        .log_with("job finished")
        .await
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["message"] == "job finished");
    let finished = finished.expect("a `job finished` line");
    assert_eq!(finished["level"], "INFO", "{finished}");
    assert_eq!(finished["fields"]["outcome"], "OK", "{finished}");
    assert_eq!(finished["fields"]["tool_calls"], 2, "{finished}");
    assert!(finished["fields"]["elapsed_ms"].is_u64(), "{finished}");
    assert_eq!(finished["span"]["trace_id"], trace, "{finished}");

    let log = broker.log();
    for line in log.lines() {
        let parsed: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            parsed["timestamp"].is_string() && parsed["level"].is_string(),
            "{line}"
        );
    }
    assert!(!log.contains(SECRET), "the secret's value is in the log");
    assert!(!log.contains(MARKER), "script text is in the log");
}

#[tokio::test]
async fn healthcheck_answers_for_a_serving_broker_and_fails_for_none() {
    let broker = Broker::start(&["--http-listen", "127.0.0.1:0"]);
    let line = broker.serving_line();
    let http = line
        .split("http_addr=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_owned();
    let check = |listen: &str, http: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_enclave-broker"))
            .args(["--listen", listen, "--http-listen", http, "healthcheck"])
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let grpc = broker.addr.to_string();
    let ok = check(&grpc, &http);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // Nothing serves on a port just freed: both checks fail, saying where.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down = check(&free.to_string(), &http);
    assert!(!down.status.success());
    assert!(String::from_utf8_lossy(&down.stderr).contains(&free.to_string()));
    let down = check(&grpc, &free.to_string());
    assert!(!down.status.success());
    assert!(String::from_utf8_lossy(&down.stderr).contains(&free.to_string()));
}

/// `fingerprint` prints what a client pins, read from the identity key the broker
/// serves with (how a compose user reads it); without a key it fails and says where.
#[test]
fn fingerprint_prints_the_served_identity() {
    let broker = Broker::start(&["--http-listen", "off"]);
    let print = |identity: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_enclave-broker"))
            .arg("--identity")
            .arg(identity)
            .arg("fingerprint")
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let out = print(&broker.identity);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        broker.fingerprint.to_string()
    );
    let missing = temp_path("none.key");
    let out = print(&missing);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&missing.display().to_string()),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!missing.exists(), "`fingerprint` must not create a key");
}
