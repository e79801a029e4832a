//! `ListTools`: what a session's scripts may call, through the library and the CLI.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use enclave_client::{ClientTools, Event};
use futures::StreamExt;
use serde_json::json;

use crate::support::{Broker, TempDir};

/// A broker with the built-in `echo` and a webhook service's `search:web` (never
/// called here: listing needs no request to the service).
fn broker_with_a_service(name: &str) -> (Broker, TempDir) {
    let dir = TempDir::new(name);
    let config = dir.path().join("broker.toml");
    std::fs::write(
        &config,
        r#"
[tool_services.search]
webhook = "http://127.0.0.1:9/hook"
[tool_services.search.tools."search:web"]
description = "Searches the web."
input_schema = { type = "object", properties = { q = { type = "string" } }, required = ["q"] }
"#,
    )
    .unwrap();
    let broker = Broker::start_with(name, &["--config", config.to_str().unwrap()]);
    (broker, dir)
}

#[tokio::test]
async fn list_tools_gives_names_descriptions_and_schemas() {
    let (broker, _dir) = broker_with_a_service("list-tools");
    let client = broker.client().await;
    let tools = client.list_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["echo", "search:web"]);
    assert_eq!(tools[1].description, "Searches the web.");
    let schema: serde_json::Value = serde_json::from_str(&tools[1].input_schema_json).unwrap();
    assert_eq!(schema["required"], serde_json::json!(["q"]));
    assert!(tools[0].description.contains("Returns its arguments"));
    assert_eq!(tools[0].input_schema_json, "{}");
    // The same list reaches scripts.
    let listed = client
        .execute("return (await listTools()).map(t => t.name + ': ' + t.description);")
        .await
        .unwrap();
    assert_eq!(
        listed.into_value().unwrap(),
        serde_json::json!([
            tools[0].name.clone() + ": " + &tools[0].description,
            "search:web: Searches the web."
        ])
    );
}

#[test]
fn enclave_tools_prints_the_list() {
    let (broker, _dir) = broker_with_a_service("cli-tools");
    let run = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_enclave"));
        cmd.args(["tools", "--server", &broker.url(), "--pin"])
            .arg(broker.fingerprint.to_string())
            .env_remove("ENCLAVE_JSON");
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let text = run(false);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("echo\t"), "{text}");
    assert_eq!(lines[1], "search:web\tSearches the web.");
    let json = run(true);
    let tools: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(tools[1]["name"], "search:web");
    assert_eq!(tools[1]["inputSchema"]["properties"]["q"]["type"], "string");
}

// ---- Client-provided tools -----------------------------------------------------------

/// A broker whose client tool calls wait at most 1 s, allowing one job per session.
fn broker_for_client_tools(name: &str) -> (Broker, TempDir) {
    broker_with_client_tool_timeout(name, 1000)
}

fn broker_with_client_tool_timeout(name: &str, ms: u64) -> (Broker, TempDir) {
    let dir = TempDir::new(name);
    let config = dir.path().join("broker.toml");
    std::fs::write(&config, format!("[jobs]\nclient_tool_timeout_ms = {ms}\n")).unwrap();
    let broker = Broker::start_with(
        name,
        &[
            "--config",
            config.to_str().unwrap(),
            "--max-jobs-per-session",
            "1",
        ],
    );
    (broker, dir)
}

fn job(code: &str) -> enclave_client::Job {
    enclave_client::Job {
        code: code.into(),
        ..Default::default()
    }
}

async fn collect(mut events: enclave_client::EventStream) -> Vec<Event> {
    let mut all = Vec::new();
    while let Some(event) = events.next().await {
        all.push(event.unwrap());
    }
    all
}

fn outcome(events: &[Event]) -> &Event {
    events.last().expect("a final event")
}

/// `sleep {ms}` answers `ms` after `ms` milliseconds; `fail` answers an error; `hang`
/// never answers. Counts its calls.
fn tools(calls: Arc<AtomicUsize>) -> ClientTools {
    let counted = calls.clone();
    ClientTools::new()
        .tool(
            "sleep",
            "Waits, then answers how long it waited.",
            json!({"type": "object", "properties": {"ms": {"type": "integer"}}, "required": ["ms"]}),
            move |args| {
                counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    let ms = args["ms"].as_u64().unwrap();
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(json!(ms))
                }
            },
        )
        .tool("fail", "Always fails.", json!({}), |_| async {
            Err("the ledger is closed".to_string())
        })
        .tool("hang", "Never answers.", json!({}), move |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::pending()
        })
}

#[tokio::test]
async fn a_clients_own_tools_answer_its_script_concurrently() {
    let (broker, _dir) = broker_for_client_tools("client-tools");
    let client = broker.client().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let events = collect(client.execute_with_tools(
        job(
            r#"
            const [slow, fast] = await Promise.all([callTool('sleep', {ms: 400}), callTool('sleep', {ms: 10})]);
            let failed, bad, hung;
            try { await callTool('fail', {}); } catch (e) { failed = e.message; }
            try { await callTool('sleep', {ms: 'soon'}); } catch (e) { bad = e.message; }
            try { await callTool('hang', {}); } catch (e) { hung = e.message; }
            const names = (await listTools()).map(t => t.name);
            return {slow, fast, failed, bad, hung, names, echo: await callTool('echo', 1)};
            "#,
        ),
        tools(calls.clone()),
    ))
    .await;
    let Event::Final { result, .. } = outcome(&events) else {
        panic!("{events:#?}")
    };
    assert_eq!(result["slow"], 400);
    assert_eq!(result["fast"], 10);
    assert_eq!(result["failed"], "tool fail failed: the ledger is closed");
    assert!(
        result["bad"]
            .as_str()
            .unwrap()
            .starts_with("tool sleep failed: arguments do not match the tool's schema at /ms"),
        "{result}"
    );
    assert_eq!(
        result["hung"],
        "tool hang failed: the client did not answer within 1000 ms"
    );
    assert_eq!(result["names"], json!(["echo", "fail", "hang", "sleep"]));
    assert_eq!(result["echo"], 1, "the broker's tools still answer");
    // The schema refused `soon` before the closure saw it: two sleeps and the hang.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // The answers came out of order: the short sleep's result event first.
    let results: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::ToolResult { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(results[..2], ["sleep", "sleep"]);
    let ids: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::ToolCall { call_id, .. } => Some(*call_id),
            _ => None,
        })
        .collect();
    let first_result = events
        .iter()
        .find_map(|e| match e {
            Event::ToolResult { call_id, .. } => Some(*call_id),
            _ => None,
        })
        .unwrap();
    assert_eq!(first_result, ids[1], "{events:#?}");
}

#[tokio::test]
async fn a_script_cannot_reach_another_clients_tools() {
    let (broker, _dir) = broker_for_client_tools("client-tools-isolated");
    let owner = broker.client().await;
    let other = broker.client().await;
    let calls = Arc::new(AtomicUsize::new(0));
    // The owner's job waits in its own tool while the other client's script tries it.
    let owning = owner.execute_with_tools(
        job("return await callTool('sleep', {ms: 500});"),
        tools(calls.clone()),
    );
    let owning = tokio::spawn(collect(owning));
    let stolen = other
        .execute("try { return await callTool('sleep', {ms: 1}); } catch (e) { return e.message; }")
        .await
        .unwrap();
    let message = stolen.into_value().unwrap();
    assert!(
        message
            .as_str()
            .unwrap()
            .starts_with("tool sleep failed: unknown tool `sleep`"),
        "{message}"
    );
    let events = owning.await.unwrap();
    assert!(matches!(outcome(&events), Event::Final { result, .. } if *result == json!(500)));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "only the owner's own call");
}

#[tokio::test]
async fn declarations_that_take_a_brokers_name_refuse_the_job() {
    let (broker, _dir) = broker_for_client_tools("client-tools-refused");
    let client = broker.client().await;
    let tools = ClientTools::new().tool("echo", "Mine.", json!({}), |_| async { Ok(json!(0)) });
    let events = collect(client.execute_with_tools(job("return 1"), tools)).await;
    let [Event::Error { failure, .. }] = events.as_slice() else {
        panic!("{events:#?}")
    };
    assert_eq!(failure.code_name(), "INVALID_JOB");
    assert!(
        failure
            .message
            .contains("`echo` has the name of one of the broker's tools"),
        "{failure:?}"
    );
}

#[tokio::test]
async fn a_client_that_goes_away_mid_call_cancels_its_job() {
    // The unanswered call would end only after a minute: the job must end sooner, when
    // the broker sees the client gone.
    let (broker, _dir) = broker_with_client_tool_timeout("client-tools-gone", 60_000);
    let client = broker.client().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let mut events = client.execute_with_tools(
        job("await callTool('hang', {}); while (true) {}"),
        tools(calls),
    );
    // Wait for the call to reach the client, then go away.
    loop {
        match events.next().await.unwrap().unwrap() {
            Event::ToolCall { name, .. } if name == "hang" => break,
            _ => {}
        }
    }
    drop(events);
    // One job per session: the next one runs only once the broker has ended the first,
    // which it does when it sees the call gone (long before the 30 s time limit).
    let started = std::time::Instant::now();
    let value = loop {
        match client.execute("return 'next'").await {
            Ok(execution) => break execution.into_value().unwrap(),
            Err(e) if started.elapsed() < Duration::from_secs(5) => {
                tracing::debug!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the first job still holds the session's slot: {e}"),
        }
    };
    assert_eq!(value, "next");
}
