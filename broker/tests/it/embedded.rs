//! Embedded mode: jobs in the broker's process, same sandbox and limits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use enclave_broker::config::{Config, JobsConfig};
use enclave_broker::embedded::Embedded;
use enclave_broker::tools::ToolSpec;
use enclave_broker::{Broker, FailureKind, Tools};
use enclave_proto::v1::{ErrorCode, Limits};
use serde_json::json;
use tokio::sync::mpsc;

use crate::support::*;

async fn embedded_broker() -> Broker {
    let tools = Tools::from_config(&Default::default()).unwrap();
    Broker::new(
        tools,
        Arc::new(Embedded::with_sandbox(shared_sandbox().await)),
        JobsConfig::default(),
    )
}

#[tokio::test]
async fn runs_jobs_and_tools_in_process() {
    let broker = embedded_broker().await;
    let run = run_code(
        &broker,
        "console.log('hi'); const r = await Promise.all([1, 2].map(i => callTool('echo', {i}))); return r;",
    )
    .await;
    assert_eq!(run.result(), json!([{"i": 1}, {"i": 2}]));
    assert_eq!(run.console()[0].text, "hi");
    assert_eq!(run.tool_calls().len(), 2);
    assert_eq!(run.tool_results().len(), 2);
}

#[tokio::test]
async fn the_job_limits_still_apply() {
    let broker = embedded_broker().await;
    let timed_out = run(&broker, job_with_timeout("while (true) {}", 300)).await;
    assert_eq!(timed_out.code(), ErrorCode::Timeout);
    let mut too_much = job("return 1");
    too_much.limits = Some(Limits {
        timeout_ms: Some(3_600_000),
        ..Default::default()
    });
    let refused = run(&broker, too_much).await;
    assert_eq!(refused.failure().kind, FailureKind::InvalidJob);
    assert!(
        refused.failure().message.contains("timeout_ms"),
        "{:?}",
        refused.failure()
    );
    let mut bad_input = job("return input");
    bad_input.input_json = "{nope".into();
    assert_eq!(
        run(&broker, bad_input).await.failure().kind,
        FailureKind::InvalidJob
    );
}

#[tokio::test]
async fn a_caller_that_stops_listening_cancels_the_job() {
    let broker = embedded_broker().await;
    let (tx, rx) = mpsc::channel(1);
    drop(rx);
    let started = Instant::now();
    let outcome = broker
        .run_job(
            job_with_timeout("console.log('x'); while (true) {}", 20_000),
            tx,
        )
        .await;
    assert_eq!(outcome.unwrap_err().kind, FailureKind::Cancelled);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_empty_config_is_an_embedded_broker_with_echo() {
    let broker = Broker::from_config(&Config::default()).await.unwrap();
    assert!(
        broker.backend().describe().contains("embedded"),
        "{}",
        broker.backend().describe()
    );
    assert_eq!(broker.tools().names().collect::<Vec<_>>(), ["echo"]);
    assert_eq!(
        run_code(&broker, "return await callTool('echo', 'x')")
            .await
            .result(),
        json!("x")
    );
}

#[tokio::test]
async fn a_full_embedded_sandbox_refuses_as_busy() {
    use enclave_broker::tools::{Tool, ToolContext, ToolFuture};
    struct Hang;
    impl Tool for Hang {
        fn call<'a>(&'a self, _: &'a ToolContext<'a>, _: serde_json::Value) -> ToolFuture<'a> {
            Box::pin(std::future::pending())
        }
    }
    let sandbox = enclave_executor::Sandbox::new(enclave_executor::SandboxConfig {
        max_concurrent_jobs: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut tools = Tools::new();
    tools
        .register(
            "hang",
            Arc::new(Hang),
            ToolSpec::any("a test tool"),
            Duration::from_secs(30),
        )
        .unwrap();
    let broker = Broker::new(
        tools,
        Arc::new(Embedded::with_sandbox(Arc::new(sandbox))),
        JobsConfig::default(),
    );
    let (tx, mut rx) = mpsc::channel(8);
    let first = broker.run_job(job_with_timeout("await callTool('hang', {})", 10_000), tx);
    tokio::pin!(first);
    tokio::select! {
        _ = &mut first => panic!("the first job ended"),
        _ = rx.recv() => {} // its tool call: it is running
    }
    let second = run_code(&broker, "return 1").await;
    assert_eq!(
        second.failure().kind,
        FailureKind::Busy,
        "{:?}",
        second.outcome
    );
}
