//! The tool path: script -> executor -> broker -> back, and how failures reach the script.

use std::sync::Arc;
use std::time::{Duration, Instant};

use enclave_broker::tools::{Tool, ToolContext, ToolError, ToolFuture, ToolJob, ToolSpec};
use enclave_broker::{JobEvent, Tools};
use serde_json::json;

use crate::support::*;

/// Answers with its arguments after `ms` milliseconds.
pub struct Sleep;

impl Tool for Sleep {
    fn call<'a>(&'a self, _cx: &'a ToolContext<'a>, args: serde_json::Value) -> ToolFuture<'a> {
        Box::pin(async move {
            let ms = args
                .get("ms")
                .and_then(|v| v.as_u64())
                .ok_or_else(|| ToolError::bad_args("need {ms}"))?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(args)
        })
    }
}

/// Never answers.
pub struct Hang;

impl Tool for Hang {
    fn call<'a>(&'a self, _cx: &'a ToolContext<'a>, _args: serde_json::Value) -> ToolFuture<'a> {
        Box::pin(std::future::pending())
    }
}

fn default_tools() -> Tools {
    Tools::from_config(&Default::default()).unwrap()
}

#[tokio::test]
async fn echo_round_trip_with_events_in_order() {
    let broker = broker(default_tools()).await;
    let run = run_code(
        &broker,
        "console.log('before'); const r = await callTool('echo', {a: 1, s: 'x'}); console.log('after'); return r;",
    )
    .await;
    assert_eq!(run.result(), json!({"a": 1, "s": "x"}));
    match run.events.as_slice() {
        [
            JobEvent::Console(before),
            JobEvent::ToolCall(call),
            JobEvent::ToolResult {
                call_id,
                name,
                error: None,
            },
            JobEvent::Console(after),
        ] => {
            assert_eq!(before.text, "before");
            assert_eq!(call.name, "echo");
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&call.args_json).unwrap(),
                json!({"a": 1, "s": "x"})
            );
            assert_eq!((*call_id, name.as_str()), (call.call_id, "echo"));
            assert_eq!(after.text, "after");
        }
        other => panic!("unexpected events: {other:#?}"),
    }
}

#[tokio::test]
async fn promise_all_runs_tool_calls_concurrently() {
    let mut tools = default_tools();
    tools
        .register(
            "sleep",
            Arc::new(Sleep),
            ToolSpec::any("a test tool"),
            Duration::from_secs(5),
        )
        .unwrap();
    let broker = broker(tools).await;
    let started = Instant::now();
    let run = run_code(
        &broker,
        "const r = await Promise.all([1, 2, 3, 4, 5].map(i => callTool('sleep', {ms: 400, i}))); return r.map(x => x.i);",
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(run.result(), json!([1, 2, 3, 4, 5]));
    assert_eq!(run.tool_calls().len(), 5);
    assert_eq!(run.tool_results().len(), 5);
    // One after another would take 2 s.
    assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");
}

#[tokio::test]
async fn unknown_tool_rejects_catchably() {
    let broker = broker(default_tools()).await;
    let run = run_code(
        &broker,
        "try { await callTool('shell:exec', {cmd: 'ls'}); return 'no'; } catch (e) { return e.message; }",
    )
    .await;
    let message = run.result();
    let message = message.as_str().unwrap();
    assert!(message.contains("unknown tool `shell:exec`"), "{message}");
    assert!(message.contains("echo"), "lists what exists: {message}");
    let reported = message.strip_prefix("tool shell:exec failed: ").unwrap();
    assert_eq!(run.tool_results(), vec![("shell:exec", Some(reported))]);
}

#[tokio::test]
async fn bad_arguments_reject_catchably() {
    let mut tools = default_tools();
    tools
        .register(
            "sleep",
            Arc::new(Sleep),
            ToolSpec::any("a test tool"),
            Duration::from_secs(5),
        )
        .unwrap();
    let broker = broker(tools).await;
    let run = run_code(
        &broker,
        "try { await callTool('sleep', {seconds: 1}); } catch (e) { return e.message; }",
    )
    .await;
    assert_eq!(run.result(), json!("tool sleep failed: need {ms}"));
    // An uncaught rejection fails the job as a script error, not the broker.
    let run = run_code(&broker, "await callTool('sleep', 'x');").await;
    assert_eq!(run.code(), enclave_proto::v1::ErrorCode::ScriptError);
    assert!(
        run.error().message.contains("need {ms}"),
        "{:?}",
        run.error()
    );
}

#[tokio::test]
async fn a_tool_that_hangs_is_cut_off_at_its_deadline() {
    let mut tools = default_tools();
    tools
        .register(
            "hang",
            Arc::new(Hang),
            ToolSpec::any("a test tool"),
            Duration::from_millis(300),
        )
        .unwrap();
    let broker = broker(tools).await;
    let started = Instant::now();
    let run = run_code(
        &broker,
        "try { await callTool('hang', {}); return 'answered'; } catch (e) { return e.message; }",
    )
    .await;
    assert_eq!(
        run.result(),
        json!("tool hang failed: no answer within 300 ms")
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_tool_deadline_is_capped_by_the_job_time_left() {
    let mut tools = default_tools();
    tools
        .register(
            "hang",
            Arc::new(Hang),
            ToolSpec::any("a test tool"),
            Duration::from_secs(60),
        )
        .unwrap();
    let secrets = tools.job_secrets();
    let started = Instant::now();
    let job_deadline = tokio::time::Instant::now() + Duration::from_millis(200);
    let job = ToolJob {
        id: "job",
        secrets: &secrets,
        deadline: job_deadline,
        client_tools: &[],
    };
    let err = tools.call(&job, "hang", "{}").await.unwrap_err();
    assert_eq!(err.kind, enclave_broker::ToolErrorKind::Timeout);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // Through a job: the executor ends it at its limit and the broker answers at once.
    let broker = broker(tools).await;
    let started = Instant::now();
    let run = run(
        &broker,
        job_with_timeout("await callTool('hang', {});", 800),
    )
    .await;
    assert_eq!(run.code(), enclave_proto::v1::ErrorCode::Timeout);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
