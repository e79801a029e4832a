use enclave_client::{ConsoleLevel, ErrorCode, Job, SecurityLevel};
use serde_json::json;

use crate::support::Broker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_returns_value_console_and_stats() {
    let broker = Broker::start("execute");
    let client = broker.client().await;

    let run = client
        .execute(
            "console.log('adding', 1, 2); console.warn('careful');\n\
             const r = await callTool('echo', {n: 3});\n\
             return {sum: 1 + 2, echoed: r.n};",
        )
        .await
        .unwrap();
    assert_eq!(run.result, Ok(json!({"sum": 3, "echoed": 3})));
    assert_eq!(run.console.len(), 2);
    assert_eq!(run.console[0].level, ConsoleLevel::Log);
    assert_eq!(run.console[0].text, "adding 1 2");
    assert_eq!(run.console[1].level, ConsoleLevel::Warn);
    let stats = run.stats.unwrap();
    assert_eq!(stats.tool_calls, 1);
    assert!(stats.duration_us > 0);

    // `undefined` comes back as null; `input` reaches the script.
    assert_eq!(
        client.execute("1 + 1").await.unwrap().result,
        Ok(json!(null))
    );
    let job = Job {
        code: "return input.a * 2".into(),
        input_json: r#"{"a": 21}"#.into(),
        level: SecurityLevel::Strict as i32,
        ..Default::default()
    };
    assert_eq!(
        client.execute_job(job).await.unwrap().into_value().unwrap(),
        42
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_failures_are_results_with_code_and_line() {
    let broker = Broker::start("failures");
    let client = broker.client().await;

    let run = client
        .execute("const a = 1;\nconsole.log('before');\nthrow new TypeError('nope');")
        .await
        .unwrap();
    let failure = run.result.clone().unwrap_err();
    assert_eq!(failure.code, ErrorCode::ScriptError);
    assert_eq!(failure.name.as_deref(), Some("TypeError"));
    assert_eq!(failure.line, Some(3));
    assert_eq!(
        failure.to_string(),
        "SCRIPT_ERROR: TypeError: nope (line 3)"
    );
    assert_eq!(
        run.console.len(),
        1,
        "console output before the throw is kept"
    );
    assert!(run.stats.is_some());
    assert!(matches!(
        run.into_value(),
        Err(enclave_client::ClientError::JobFailed(_))
    ));

    let syntax = client.execute("return (").await.unwrap();
    assert_eq!(syntax.result.unwrap_err().code, ErrorCode::SyntaxError);

    let timeout = client
        .execute_job(Job {
            code: "while (true) {}".into(),
            limits: Some(enclave_client::Limits {
                timeout_ms: Some(200),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(timeout.result.unwrap_err().code, ErrorCode::Timeout);
}

/// Every call has a deadline by default, and a custom one cancels the call when it
/// passes: a unary call and a stream alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_end_at_the_request_timeout() {
    assert_eq!(
        enclave_client::builder::DEFAULT_REQUEST_TIMEOUT,
        std::time::Duration::from_secs(120)
    );
    let broker = Broker::start("timeout");
    let client = broker
        .builder()
        .request_timeout(std::time::Duration::from_millis(800))
        .connect()
        .await
        .unwrap();
    let slow = "const t = Date.now(); while (Date.now() - t < 3000) {} return 1";
    let started = std::time::Instant::now();
    let err = client.execute(slow).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::DeadlineExceeded), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    let mut events = client.execute_streaming(format!("console.log('started'); {slow}"));
    use futures::StreamExt;
    assert!(events.next().await.unwrap().is_ok());
    let err = events.next().await.unwrap().unwrap_err();
    assert!(
        matches!(
            &err,
            enclave_client::ClientError::StreamTruncated {
                status: Some((tonic::Code::DeadlineExceeded, _))
            }
        ),
        "{err:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    // The client goes on.
    let run = client.execute("return 2").await.unwrap();
    assert_eq!(run.result, Ok(serde_json::json!(2)));
}
