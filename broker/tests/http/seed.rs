//! The compatibility target itself: the seed documentation's `EncryptedEnclaveClient`,
//! verbatim but for its TypeScript types (tests/http/seed_client.mjs), under Node with
//! WebCrypto, against the live broker's legacy API.

use std::process::Command;

use serde_json::{Value, json};

use crate::support::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/http/seed_client.mjs");

/// Node 20 or newer (global fetch, WebCrypto and web streams); a clear failure if absent.
fn node() -> &'static str {
    let version = Command::new("node").arg("--version").output().unwrap_or_else(|e| {
        panic!("this test runs the seed's JavaScript client and needs Node.js 20+ on PATH (apt-get install nodejs): {e}")
    });
    let version = String::from_utf8_lossy(&version.stdout);
    let major: u32 = version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 20,
        "Node.js 20+ is needed for global fetch and crypto.subtle, found {version:?}"
    );
    "node"
}

#[tokio::test]
async fn the_seed_client_works_unchanged() {
    let node = node();
    let broker = Broker::start(&["--legacy-api"]);
    let base = broker.base.clone();
    let output =
        tokio::task::spawn_blocking(move || Command::new(node).arg(SCRIPT).arg(base).output())
            .await
            .unwrap()
            .expect("running node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "node failed ({}):\n{stderr}\n{stdout}\nbroker:\n{}",
        output.status,
        broker.log()
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));

    let uuid = |v: &Value| {
        v.as_str()
            .is_some_and(|s| s.len() == 36 && s.matches('-').count() == 4)
    };
    assert!(
        uuid(&seen["sessionId"]) && uuid(&seen["otherSessionId"]),
        "{seen}"
    );
    assert_ne!(seen["sessionId"], seen["otherSessionId"]);

    let result = &seen["result"];
    assert_eq!(result["success"], true, "{seen}");
    assert_eq!(result["value"], json!({"n": 42}));
    assert_eq!(result["stats"]["toolCallCount"], 1);
    assert_eq!(result["console"][0]["text"], "hello from the seed client");

    let thrown = &seen["thrown"];
    assert_eq!(thrown["success"], false);
    assert_eq!(thrown["error"]["name"], "RangeError", "{thrown}");
    assert_eq!(thrown["error"]["message"], "out of range");
    assert_eq!(thrown["error"]["code"], "SCRIPT_ERROR");
    assert_eq!(thrown["error"]["line"], 3);

    let events = seen["events"].as_array().unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["stdout", "tool_call", "tool_result", "stdout", "final"],
        "{seen}"
    );
    assert_eq!(events[0]["data"], "one");
    assert_eq!(events[1]["tool"], "echo");
    assert_eq!(events[1]["args"], json!({"x": "y"}));
    assert_eq!(events[2]["tool"], "echo");
    assert_eq!(
        (&events[3]["data"], &events[3]["level"]),
        (&json!("two"), &json!("warn"))
    );
    assert_eq!(events[4]["result"]["value"], json!({"x": "y"}));

    assert_eq!(seen["otherResult"]["value"], 7);
}
