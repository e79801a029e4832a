//! Results and JSON edge cases, errors with their lines, globals a script may rely on.

use enclave_proto::v1::{ErrorCode, Job, SecurityLevel};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn returns_values_as_json() {
    assert_eq!(run(job("return 1 + 1")).await.result(), json!(2));
    assert_eq!(run(job("return 'héllo'")).await.result(), json!("héllo"));
    assert_eq!(
        run(job("return {a: [1, {b: null}], c: true, d: 1.5}"))
            .await
            .result(),
        json!({"a": [1, {"b": null}], "c": true, "d": 1.5})
    );
    // `undefined` and no return at all become null.
    assert_eq!(run(job("return undefined")).await.result(), json!(null));
    assert_eq!(run(job("const x = 1;")).await.result(), json!(null));
    // Top-level await.
    assert_eq!(
        run(job("const v = await Promise.resolve(41); return v + 1"))
            .await
            .result(),
        json!(42)
    );
    // toJSON and Dates follow JSON.stringify.
    assert_eq!(
        run(job("return new Date(0)")).await.result(),
        json!("1970-01-01T00:00:00.000Z")
    );
}

#[tokio::test]
async fn values_json_cannot_hold_give_clear_errors() {
    let cases = [
        ("const o = {}; o.self = o; return o", "circular reference"),
        ("return 10n", "BigInt"),
        ("return {n: 1n}", "BigInt"),
        ("return function f() {}", "function"),
        ("return {f() {}}", "function"),
        ("return Symbol('s')", "symbol"),
    ];
    for (code, needle) in cases {
        let t = run(job(code)).await;
        assert_eq!(t.code(), ErrorCode::ScriptError, "{code}");
        assert!(
            t.error().message.contains(needle),
            "{code}: {:?}",
            t.error()
        );
        assert!(
            !t.error().stack.contains("prelude.js"),
            "internal frames leak: {:?}",
            t.error()
        );
    }
}

#[tokio::test]
async fn a_thrown_error_has_name_message_and_line() {
    let t = run(job(
        "const x = 1;\nconst y = 2;\nthrow new TypeError('bad ' + x);",
    ))
    .await;
    let e = t.error();
    assert_eq!(e.code(), ErrorCode::ScriptError);
    assert_eq!(e.name, "TypeError");
    assert_eq!(e.message, "bad 1");
    assert_eq!(e.line, 3);

    // A rejected promise after an await, and a non-Error throw.
    let t = run(job(
        "await null;\nawait Promise.reject(new RangeError('nope'))",
    ))
    .await;
    assert_eq!(
        (
            t.error().name.as_str(),
            t.error().message.as_str(),
            t.error().line
        ),
        ("RangeError", "nope", 2)
    );
    let t = run(job("throw {code: 7}")).await;
    assert_eq!(t.code(), ErrorCode::ScriptError);
    assert!(t.error().message.contains("code: 7"), "{:?}", t.error());
}

#[tokio::test]
async fn a_syntax_error_has_its_line() {
    let t = run(job("const a = 1;\nconst b = ;\nreturn a")).await;
    assert_eq!(t.code(), ErrorCode::SyntaxError);
    assert_eq!(t.error().name, "SyntaxError");
    assert_eq!(t.error().line, 2);
    // Missing closing brace: the error is at the end of the script, not past it.
    let t = run(job("if (true) {\nreturn 1")).await;
    assert_eq!(t.code(), ErrorCode::SyntaxError);
    assert_eq!(t.error().line, 2);
}

/// Lines are the ones an editor shows, split at `\n`. U+2028, U+2029 and a lone CR end a
/// line for the grammar but are not counted, wherever they stand (the engine counted them
/// between tokens only: see guest/vendor/README.md).
#[tokio::test]
async fn line_separators_do_not_shift_reported_lines() {
    let thrown = [
        ("const a = 1;\u{2028}const b = 2;\nthrow new Error('x')", 2),
        (
            "const a = 1;\u{2029}\u{2028}const b = 2;\nthrow new Error('x')",
            2,
        ),
        ("const a = 1;\rconst b = 2;\r\nthrow new Error('x')", 2),
        ("// a comment\u{2028}throw new Error('x')", 1),
        (
            "const s = '\u{2028}';\n/* \u{2028} */ const t = `\u{2028}`;\nthrow new Error('x')",
            3,
        ),
    ];
    for (code, line) in thrown {
        // Lines after the error: a line past the script's end would be cut to its last.
        let code = format!("{code}\n// more\n// lines\n");
        let t = run(job(&code)).await;
        assert_eq!(t.code(), ErrorCode::ScriptError, "{code:?}");
        assert_eq!(t.error().line, line, "{code:?}: {:?}", t.error());
        let frame = format!("script.js:{line}:");
        assert!(
            t.error().stack.contains(&frame),
            "{code:?}: {:?}",
            t.error()
        );
    }
    let t = run(job("const a = 1;\u{2028}\u{2028}const b = ;\n\n\n")).await;
    assert_eq!(t.code(), ErrorCode::SyntaxError);
    assert_eq!(t.error().line, 1, "{:?}", t.error());
    // They still end a line for automatic semicolon insertion and restricted productions.
    let t = run(job("let a = 1\u{2028}let b = 2\rreturn a + b")).await;
    assert_eq!(t.result(), json!(3));
    let t = run(job("return\u{2029}5")).await;
    assert_eq!(t.result(), json!(null));
}

#[tokio::test]
async fn input_is_visible_as_a_global() {
    let j = Job {
        input_json: r#"{"n": 20, "names": ["a", "b"]}"#.into(),
        ..job("return input.n + input.names.length")
    };
    assert_eq!(run(j).await.result(), json!(22));
    assert_eq!(
        run(job("return typeof input")).await.result(),
        json!("undefined")
    );
}

#[tokio::test]
async fn no_ambient_authority() {
    let t = run(job(
        "return [typeof require, typeof process, typeof std, typeof os, typeof fetch, typeof XMLHttpRequest, typeof WebAssembly]",
    ))
    .await;
    assert_eq!(t.result(), json!(vec!["undefined"; 7]));
    let t = run(job("return await import('fs')")).await;
    assert_eq!(t.code(), ErrorCode::ScriptError);
    let t = run(job("import fs from 'fs'; return 1")).await;
    assert_eq!(t.code(), ErrorCode::SyntaxError);
}

#[tokio::test]
async fn stats_are_reported() {
    let t = run(job_with(
        "console.log('hi'); await callTool('echo', {}); return 1",
        SecurityLevel::Strict,
        Default::default(),
    ))
    .await;
    let stats = t.final_event().stats.expect("stats");
    assert_eq!(stats.tool_calls, 1);
    assert_eq!(stats.console_bytes, 2);
    assert!(stats.memory_bytes > 0);
    assert!(stats.duration_us > 0);
}

#[tokio::test]
async fn events_are_numbered_without_gaps() {
    let t = run(job(
        "for (let i = 0; i < 5; i++) console.log(i); await callTool('echo', 1); return 1",
    ))
    .await;
    let seqs: Vec<u64> = t.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(seqs.len(), 7, "5 console, 1 tool call, 1 final");
}

#[tokio::test]
async fn nul_bytes_are_javascript_like_any_other_character() {
    // Raw NUL bytes inside a string literal and a comment are valid source.
    let t = run(job("/* \0 */ return 'a\0b'.length")).await;
    assert_eq!(t.result(), json!(3));
    // Outside them, a syntax error of the script's own, not an engine failure.
    let t = run(job("return 1 +\0 2")).await;
    assert_eq!(t.code(), ErrorCode::SyntaxError, "{:?}", t.final_event());
    assert!(
        !t.error().message.contains("uninitialized"),
        "{:?}",
        t.error()
    );
}

#[tokio::test]
async fn lone_surrogates_reach_every_client_as_the_replacement_character() {
    let t = run(job("return ['\\ud800', 'a\\udfff', '\\ud83d\\ude00']")).await;
    assert_eq!(t.result(), json!(["\u{fffd}", "a\u{fffd}", "😀"]));
    let t = run(job("return {['k\\ud800']: 1}")).await;
    assert_eq!(t.result(), json!({"k\u{fffd}": 1}));
    // in an error's message, readable rather than garbled
    let t = run(job("throw new Error('bad \\ud800 value')")).await;
    assert_eq!(t.error().message, "bad \u{fffd} value");
    // in console text and tool-call arguments
    let t = run_with(
        &mut client().await,
        job("console.log('c\\ud800'); return await callTool('echo', 'x\\udc00')"),
        Box::new(|call| Some(echo(call))),
    )
    .await
    .unwrap();
    assert_eq!(t.console()[0].text, "c\u{fffd}");
    assert_eq!(t.tool_calls()[0].args_json, "\"x\\ufffd\"");
    assert_eq!(t.result(), json!("x\u{fffd}"));
}

#[tokio::test]
async fn nesting_is_bounded_so_every_client_can_parse_what_it_gets() {
    let nested = |depth: usize| format!("let v = 1; for (let i = 0; i < {depth}; i++) v = [v]; ");
    let t = run(job(&(nested(100) + "return v"))).await;
    let mut value = t.result();
    for _ in 0..100 {
        value = value[0].take();
    }
    assert_eq!(value, json!(1));
    let t = run(job(&(nested(101) + "return v"))).await;
    assert_eq!(t.code(), ErrorCode::ResultTooLarge, "{:?}", t.final_event());
    assert!(
        t.error().message.contains("nested 101 levels"),
        "{:?}",
        t.error()
    );
    let t = run(job(&(nested(200) + "return await callTool('echo', v)"))).await;
    assert_eq!(t.code(), ErrorCode::ToolCallLimit, "{:?}", t.final_event());
    assert!(
        t.error().message.contains("nested 200 levels"),
        "{:?}",
        t.error()
    );
    assert!(t.tool_calls().is_empty());
}

#[tokio::test]
async fn a_script_cannot_close_the_function_it_runs_in() {
    for code in [
        "}); console.log('outside'); (async function () {",
        "}, console.log('outside'), async function () {",
        "return 1 }); Function.prototype.toString = () => ''; (async () => { return 2",
        "}); eval(\"(async function () {\" + \"\\n})\"); (async function () {",
    ] {
        let t = run(job(code)).await;
        assert_eq!(
            t.code(),
            ErrorCode::SyntaxError,
            "{code}: {:?}",
            t.final_event()
        );
        assert!(
            t.error().message.contains("closes the function it runs in"),
            "{code}: {:?}",
            t.error()
        );
        assert!(t.console().is_empty(), "{code}: ran {:?}", t.console());
    }
    // Braces of its own, in code, strings, regexes and templates, are the script's business.
    let t = run(job(
        "function f() { return {a: '}', b: /}/.source, c: `${'}'}` } } if (true) { return f() }",
    ))
    .await;
    assert_eq!(t.result(), json!({"a": "}", "b": "}", "c": "}"}));
    // A missing brace is the script's own syntax error, on its own last line.
    let t = run(job("function f() {\n  return 1\n")).await;
    assert_eq!(t.code(), ErrorCode::SyntaxError);
    assert!(t.error().line <= 3, "{:?}", t.error());
}
