//! Many jobs at once.

use std::sync::Arc;
use std::time::Duration;

use enclave_proto::v1::{RunRequest, run_event::Event, run_request::Msg};
use serde_json::json;
use tokio::sync::{Barrier, mpsc};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_jobs() {
    const JOBS: usize = 200;
    // Every job is held at its tool call until all 200 are live at once.
    let barrier = Arc::new(Barrier::new(JOBS));
    let addr = server();
    let mut tasks = Vec::new();
    for i in 0..JOBS {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let code = format!("console.log('job {i}'); const r = await callTool('echo', {{i: {i}}}); return r.i * 2");
            let (tx, rx) = mpsc::channel(4);
            tx.send(RunRequest { msg: Some(Msg::Job(job(&code))) }).await.unwrap();
            let mut stream = open_run(addr, rx).await;
            let mut transcript = Transcript::default();
            while let Some(event) = stream.message().await.unwrap() {
                if let Some(Event::ToolCall(call)) = &event.event {
                    barrier.wait().await;
                    tx.send(RunRequest { msg: Some(Msg::ToolResult(echo(call))) }).await.unwrap();
                }
                transcript.events.push(event);
            }
            assert_eq!(transcript.console()[0].text, format!("job {i}"));
            transcript.result()
        }));
    }
    let results = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(tasks))
        .await
        .expect("200 concurrent jobs finish");
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), json!(i * 2));
    }
}
