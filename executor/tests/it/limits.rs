//! Every limit ends the job with its own code and a readable message, and the executor
//! keeps serving afterwards.

use std::time::{Duration, Instant};

use enclave_proto::v1::{ErrorCode, Limits, SecurityLevel, ToolResult, tool_result::Outcome};
use serde_json::json;

use crate::support::*;

fn strict(code: &str) -> enclave_proto::v1::Job {
    job_with(code, SecurityLevel::Strict, Limits::default())
}

async fn still_serving() {
    assert_eq!(run(job("return 'alive'")).await.result(), json!("alive"));
}

#[tokio::test]
async fn busy_loop_after_an_await_times_out() {
    let limits = Limits {
        timeout_ms: Some(300),
        ..Default::default()
    };
    let started = Instant::now();
    let t = run(job_with(
        "await null; while (true) {}",
        SecurityLevel::Strict,
        limits,
    ))
    .await;
    let took = started.elapsed();
    assert_eq!(t.code(), ErrorCode::Timeout);
    assert!(t.error().message.contains("300 ms"), "{:?}", t.error());
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "took {took:?}"
    );
    still_serving().await;
}

#[tokio::test]
async fn the_timeout_covers_waiting_for_a_tool() {
    let limits = Limits {
        timeout_ms: Some(300),
        ..Default::default()
    };
    let started = Instant::now();
    let never: ToolHandler = Box::new(|_| None);
    let t = run_with(
        &mut client().await,
        job_with("await callTool('slow', {})", SecurityLevel::Strict, limits),
        never,
    )
    .await
    .unwrap();
    assert_eq!(t.code(), ErrorCode::Timeout);
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[tokio::test]
async fn unbounded_allocation_hits_the_memory_limit() {
    let t = run(strict(
        "const a = []; while (true) a.push(new Array(1e5).fill(1));",
    ))
    .await;
    assert_eq!(t.code(), ErrorCode::MemoryLimit);
    assert!(
        t.error().message.contains("memory limit"),
        "{:?}",
        t.error()
    );
    // Strings and typed arrays go through different allocation paths.
    let t = run(strict(
        "const a = []; while (true) a.push(new Uint8Array(1 << 20));",
    ))
    .await;
    assert_eq!(t.code(), ErrorCode::MemoryLimit);
    still_serving().await;
}

#[tokio::test]
async fn a_caught_out_of_memory_leaves_the_script_running() {
    let t = run(strict(
        "let caught = false; try { const a = []; while (true) a.push(new Array(1e5).fill(1)); } catch (e) { caught = e.message } return caught",
    ))
    .await;
    assert_eq!(t.result(), json!("out of memory"));
}

#[tokio::test]
async fn deep_recursion_is_a_stack_overflow() {
    let t = run(strict("function f(n) { return f(n + 1) + 1 } return f(0)")).await;
    assert_eq!(t.code(), ErrorCode::StackOverflow);
    assert!(t.error().message.contains("recursed too deeply"));
    still_serving().await;
}

#[tokio::test]
async fn ordinary_recursion_depth_works() {
    let t = run(strict(
        "function f(n) { return n === 0 ? 0 : f(n - 1) + 1 } return f(500)",
    ))
    .await;
    assert_eq!(t.result(), json!(500));
}

#[tokio::test]
async fn a_console_flood_hits_the_output_limit() {
    let t = run(strict("while (true) console.log('spam spam spam spam')")).await;
    assert_eq!(t.code(), ErrorCode::OutputLimit);
    assert!(t.error().message.contains("65536"), "{:?}", t.error());
    let printed: usize = t.console().iter().map(|c| c.text.len()).sum();
    assert!(printed <= 64 * 1024, "printed {printed} bytes");
    still_serving().await;
}

#[tokio::test]
async fn a_huge_result_is_refused() {
    let t = run(strict("return 'x'.repeat(300 * 1024)")).await;
    assert_eq!(t.code(), ErrorCode::ResultTooLarge);
    // Just under the limit is fine.
    let t = run(strict("return 'x'.repeat(200 * 1024).length")).await;
    assert_eq!(t.result(), json!(200 * 1024));
}

#[tokio::test]
async fn too_many_tool_calls() {
    let t = run(strict(
        "for (let i = 0; i < 11; i++) await callTool('echo', i); return 'done'",
    ))
    .await;
    assert_eq!(t.code(), ErrorCode::ToolCallLimit);
    assert_eq!(t.tool_calls().len(), 10);
    // Exactly the limit is allowed.
    let t = run(strict(
        "for (let i = 0; i < 10; i++) await callTool('echo', i); return 'done'",
    ))
    .await;
    assert_eq!(t.result(), json!("done"));
}

#[tokio::test]
async fn oversized_tool_arguments() {
    let t = run(strict("await callTool('echo', 'x'.repeat(70 * 1024))")).await;
    assert_eq!(t.code(), ErrorCode::ToolCallLimit);
    assert!(t.error().message.contains("arguments"), "{:?}", t.error());
    assert!(
        t.tool_calls().is_empty(),
        "the oversized call never left the executor"
    );
}

#[tokio::test]
async fn overrides_apply_and_ceilings_are_refused() {
    let limits = Limits {
        max_tool_calls: Some(1),
        ..Default::default()
    };
    let t = run(job_with(
        "await callTool('a', 1); await callTool('b', 2)",
        SecurityLevel::Permissive,
        limits,
    ))
    .await;
    assert_eq!(t.code(), ErrorCode::ToolCallLimit);
    let limits = Limits {
        memory_bytes: Some(1 << 40),
        ..Default::default()
    };
    let err = run_with(
        &mut client().await,
        job_with("return 1", SecurityLevel::Strict, limits),
        Box::new(|_| None),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("memory_bytes"), "{err:?}");
}

#[tokio::test]
async fn a_tool_result_arriving_after_the_deadline_does_not_revive_the_job() {
    let limits = Limits {
        timeout_ms: Some(200),
        ..Default::default()
    };
    let late: ToolHandler = Box::new(|call| {
        std::thread::sleep(Duration::from_millis(400));
        Some(ToolResult {
            call_id: call.call_id,
            outcome: Some(Outcome::ResultJson("1".into())),
        })
    });
    let t = run_with(
        &mut client().await,
        job_with(
            "return await callTool('x', 1)",
            SecurityLevel::Strict,
            limits,
        ),
        late,
    )
    .await
    .unwrap();
    assert_eq!(t.code(), ErrorCode::Timeout);
}
