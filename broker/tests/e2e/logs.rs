//! `--log-format json`: every line is one JSON object, and a job's line says how it went
//! (outcome, duration, tool calls), never what it did (code, arguments, secrets).

use enclave_proto::v1::Suite;
use serde_json::{Value, json};

use crate::support::*;

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
    assert_eq!(value(&raw.execute(&code).await.unwrap()), json!(MARKER));

    // The line is written before the answer is sent, but read from the pipe by a thread.
    let mut finished = None;
    for _ in 0..100 {
        finished = broker
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["fields"]["message"] == "job finished");
        if finished.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let finished = finished.expect("a `job finished` line");
    assert_eq!(finished["level"], "INFO", "{finished}");
    assert_eq!(finished["fields"]["outcome"], "OK", "{finished}");
    assert_eq!(finished["fields"]["tool_calls"], 2, "{finished}");
    assert!(finished["fields"]["elapsed_ms"].is_u64(), "{finished}");

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
