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
async fn out_of_memory_ends_the_job_at_every_level_whatever_allocates_and_cannot_be_caught() {
    // Arrays, strings, typed arrays, objects and one huge request: each through a
    // different allocation path; every one inside a `try` that would swallow an exception.
    let bombs = [
        "const a = []; while (true) a.push(new Array(1e5).fill(1));",
        "let s = 'x'; const a = []; while (true) { s = s.repeat(2); a.push(s); }",
        "const a = []; while (true) a.push(new Uint8Array(1 << 20));",
        "const a = []; for (let i = 0; ; i++) a.push({i, s: 'v' + i});",
        "new ArrayBuffer(2 ** 31 - 1);",
    ];
    for level in [
        SecurityLevel::Strict,
        SecurityLevel::Secure,
        SecurityLevel::Standard,
    ] {
        for bomb in bombs {
            let code =
                format!("try {{ {bomb} }} catch (e) {{ return 'caught ' + e }} return 'survived'");
            let t = run(job_with(&code, level, Limits::default())).await;
            assert_eq!(
                t.code(),
                ErrorCode::MemoryLimit,
                "{level:?} {bomb}: {:?}",
                t.final_event()
            );
            assert!(
                t.error().message.contains("memory limit"),
                "{level:?} {bomb}: {:?}",
                t.error()
            );
        }
    }
    still_serving().await;
}

#[tokio::test]
async fn a_script_cannot_dress_its_own_failure_up_as_a_limit_or_a_hang() {
    let cases = [
        // a thrown value whose description throws
        "throw { get message() { throw 1 }, toString() { throw 2 } }",
        "throw new Proxy({}, { get() { throw 1 }, getPrototypeOf() { throw 2 } })",
        "const e = new Error('boom'); Object.defineProperty(e, 'stack', { get() { throw 1 } }); throw e",
        // built-ins the reporting must not rely on
        "Function.prototype.call = () => { throw 1 }; throw new Error('boom')",
        "String.prototype.split = () => { throw 1 }; throw new Error('boom')",
        "Object.defineProperty(Error.prototype, 'name', { get() { throw 1 } }); throw new Error('boom')",
        "Promise.prototype.then = function () {}; throw new Error('boom')",
        "Promise.prototype.constructor = function () { throw 1 }; await null; throw new Error('boom')",
        "Object.prototype.toJSON = () => { throw 1 }; throw new Error('boom')",
        "RegExp.prototype.exec = () => { throw 1 }; throw new Error('boom')",
    ];
    for code in cases {
        let t = run(strict(code)).await;
        assert_eq!(
            t.code(),
            ErrorCode::ScriptError,
            "{code}: {:?}",
            t.final_event()
        );
        let message = &t.error().message;
        assert!(
            message == "boom" || message.contains("uncaught"),
            "{code}: {:?}",
            t.error()
        );
    }
    // And a result is still reported when `then` is gone.
    let t = run(strict(
        "Promise.prototype.then = function () {}; Function.prototype.call = null; return 7",
    ))
    .await;
    assert_eq!(t.result(), json!(7));
}

#[tokio::test]
async fn every_field_a_script_controls_is_bounded() {
    // A tool name: its own limit, before anything is sent.
    let t = run(strict("await callTool('t'.repeat(1 << 20), {})")).await;
    assert_eq!(t.code(), ErrorCode::ToolCallLimit, "{:?}", t.final_event());
    assert!(t.error().message.contains("tool name"), "{:?}", t.error());
    assert!(t.tool_calls().is_empty());
    let name = "n".repeat(256);
    let t = run(strict(&format!("return await callTool('{name}', 1)"))).await;
    assert_eq!(t.result(), json!(1));

    // An error's message, name and stack: within the result limit (256 KiB at STRICT),
    // cut with a marker, whatever their size.
    for code in [
        "throw new Error('m'.repeat(3 << 20))",
        "const e = new Error('x'); e.name = 'n'.repeat(3 << 20); throw e",
        "const e = new Error('x'); e.stack = 's'.repeat(3 << 20); throw e",
        "function f(n) { if (n === 0) throw new Error('deep'); return f(n - 1) } f(400)",
    ] {
        let t = run(strict(code)).await;
        assert_eq!(t.code(), ErrorCode::ScriptError, "{code}");
        let e = t.error();
        let size = e.message.len() + e.name.len() + e.stack.len();
        assert!(size <= 256 * 1024, "{code}: {size} bytes");
    }
    let t = run(strict("throw new Error('m'.repeat(3 << 20))")).await;
    assert!(
        t.error()
            .message
            .ends_with("[truncated: 3145728 bytes in all]"),
        "{}",
        &t.error().message[t.error().message.len() - 60..]
    );
}

#[tokio::test]
async fn empty_console_lines_count_against_the_output_limit() {
    let t = run(strict("while (true) console.log('')")).await;
    assert_eq!(t.code(), ErrorCode::OutputLimit);
    // 64 KiB at STRICT, 16 bytes a line
    let lines = t.console().len();
    assert!(lines <= 4096, "{lines} lines");
    assert!(lines >= 4000, "{lines} lines");
    still_serving().await;
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
