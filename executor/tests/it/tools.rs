//! Tool calls: round trip, concurrency, errors.

use enclave_proto::v1::{
    ErrorCode, RunRequest, ToolCall, ToolResult, run_event::Event, run_request::Msg,
    tool_result::Outcome,
};
use serde_json::json;
use tokio::sync::mpsc;

use crate::support::*;

#[tokio::test]
async fn tool_round_trip() {
    let t = run(job(
        "const r = await callTool('echo', {x: 1, s: 'é'}); return r.x + r.s",
    ))
    .await;
    assert_eq!(t.result(), json!("1é"));
    let calls = t.tool_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].name, "echo");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&calls[0].args_json).unwrap(),
        json!({"x": 1, "s": "é"})
    );
    // No arguments travel as null.
    let t = run(job("return await callTool('echo')")).await;
    assert_eq!(t.result(), json!(null));
}

#[tokio::test]
async fn concurrent_calls_are_in_flight_together_and_may_be_answered_out_of_order() {
    // No call is answered until all three have arrived; then they are answered in
    // reverse. This completes only if Promise.all really has them in flight at once.
    let code = "const [a, b, c] = await Promise.all([callTool('t', 'a'), callTool('t', 'b'), callTool('t', 'c')]); return a + b + c";
    let (tx, rx) = mpsc::channel(8);
    tx.send(RunRequest {
        msg: Some(Msg::Job(job(code))),
    })
    .await
    .unwrap();
    let mut stream = open_run(server(), rx).await;
    let mut transcript = Transcript::default();
    let mut held: Vec<ToolCall> = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        if let Some(Event::ToolCall(call)) = &event.event {
            held.push(call.clone());
            if held.len() == 3 {
                for call in held.iter().rev() {
                    tx.send(RunRequest {
                        msg: Some(Msg::ToolResult(echo(call))),
                    })
                    .await
                    .unwrap();
                }
            }
        }
        transcript.events.push(event);
    }
    assert_eq!(transcript.result(), json!("abc"));
    let ids: std::collections::HashSet<u64> = held.iter().map(|c| c.call_id).collect();
    assert_eq!(ids.len(), 3, "call ids are unique");
}

#[tokio::test]
async fn a_tool_error_rejects_catchably_with_its_message() {
    let handler: ToolHandler = Box::new(|call| {
        Some(ToolResult {
            call_id: call.call_id,
            outcome: Some(Outcome::Error("no such key".into())),
        })
    });
    let code = "try { await callTool('secrets:get', {key: 'x'}); return 'no' } catch (e) { return e instanceof Error ? e.message : 'not an Error' }";
    let t = run_with(&mut client().await, job(code), handler)
        .await
        .unwrap();
    assert_eq!(t.result(), json!("tool secrets:get failed: no such key"));
    // Uncaught, it fails the job as a script error.
    let handler: ToolHandler = Box::new(|call| {
        Some(ToolResult {
            call_id: call.call_id,
            outcome: Some(Outcome::Error("denied".into())),
        })
    });
    let t = run_with(&mut client().await, job("await callTool('x', 1)"), handler)
        .await
        .unwrap();
    assert_eq!(t.code(), ErrorCode::ScriptError);
    assert!(t.error().message.contains("denied"));
}

#[tokio::test]
async fn bad_tool_arguments_reject_catchably() {
    let t = run(job(
        "const o = {}; o.o = o; try { await callTool('echo', o) } catch (e) { return e.name } return 'no'",
    ))
    .await;
    assert_eq!(t.result(), json!("TypeError"));
    let t = run(job(
        "try { await callTool(42) } catch (e) { return e.message } return 'no'",
    ))
    .await;
    assert!(t.result().as_str().unwrap().contains("tool name"));
}

#[tokio::test]
async fn a_promise_that_can_never_settle_ends_the_job() {
    let t = run(job("await new Promise(() => {}); return 1")).await;
    assert_eq!(t.code(), ErrorCode::ScriptError);
    assert!(
        t.error().message.contains("never settle"),
        "{:?}",
        t.error()
    );
}
