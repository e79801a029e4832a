//! Job slots are taken by jobs, not by streams, and a job's time limit runs on the
//! executor's clock whatever its reader does.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use enclave_executor::SandboxConfig;
use enclave_executor::server::ServerConfig;
use enclave_proto::v1::{Limits, RunRequest, SecurityLevel, run_request::Msg};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::support::*;

fn one_slot_server(server: ServerConfig) -> SocketAddr {
    start_server(
        SandboxConfig {
            max_concurrent_jobs: 1,
            ..SandboxConfig::default()
        },
        server,
    )
}

/// Opens a stream that never sends its job. The returned sender keeps it open.
async fn idle_stream(
    addr: SocketAddr,
) -> (
    mpsc::Sender<RunRequest>,
    tokio::task::JoinHandle<Result<(), tonic::Status>>,
) {
    let (tx, rx) = mpsc::channel(1);
    let mut client = client_for(addr).await;
    let call = tokio::spawn(async move {
        let mut stream = client.run(ReceiverStream::new(rx)).await?.into_inner();
        while stream.message().await?.is_some() {}
        Ok(())
    });
    (tx, call)
}

async fn trivial(addr: SocketAddr) -> Result<Transcript, tonic::Status> {
    run_with(
        &mut client_for(addr).await,
        job("return 'ran'"),
        Box::new(|_| None),
    )
    .await
}

#[tokio::test]
async fn a_stream_without_a_job_takes_no_slot() {
    let addr = one_slot_server(ServerConfig::default());
    let _idle = idle_stream(addr).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The only slot is still free for a stream that sends its job.
    assert_eq!(trivial(addr).await.unwrap().result(), json!("ran"));
}

#[tokio::test]
async fn streams_waiting_for_their_job_are_bounded_and_time_out() {
    let addr = one_slot_server(ServerConfig {
        max_waiting_streams: 2,
        first_message_timeout: Duration::from_millis(400),
        ..ServerConfig::default()
    });
    let (_a, a) = idle_stream(addr).await;
    let (_b, b) = idle_stream(addr).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_c, c) = idle_stream(addr).await;
    let refused = c.await.unwrap().unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(refused.message().contains("waiting"), "{refused:?}");
    for waiting in [a, b] {
        let status = waiting.await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    }
    // Once they are gone, streams are accepted again.
    assert_eq!(trivial(addr).await.unwrap().result(), json!("ran"));
}

#[tokio::test]
async fn an_unread_job_still_ends_at_its_time_limit_and_frees_its_slot() {
    let addr = one_slot_server(ServerConfig::default());
    // Endless output far beyond any flow-control window, and a reader that never reads.
    let (tx, rx) = mpsc::channel(1);
    let flood = job_with(
        "const line = 'y'.repeat(1000); for (;;) console.log(line);",
        SecurityLevel::Permissive,
        Limits {
            timeout_ms: Some(800),
            ..Default::default()
        },
    );
    tx.send(RunRequest {
        msg: Some(Msg::Job(flood)),
    })
    .await
    .unwrap();
    let _unread = open_run(addr, rx).await;
    let started = Instant::now();
    // The slot must come back at the job's deadline, not when someone reads.
    loop {
        match trivial(addr).await {
            Ok(t) => {
                assert_eq!(t.result(), json!("ran"));
                break;
            }
            Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                assert!(
                    started.elapsed() < Duration::from_secs(3),
                    "the unread job still held its slot after {:?}",
                    started.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    drop(tx);
}

#[tokio::test]
async fn more_tool_results_than_the_job_may_make_calls_are_refused() {
    // A STRICT job may make 10 calls. This one makes one and then computes without
    // taking results, so they queue: an 11th cannot answer any call it could make.
    let (tx, rx) = mpsc::channel(32);
    tx.send(RunRequest {
        msg: Some(Msg::Job(job_with(
            "callTool('echo', 1); const t = Date.now(); while (Date.now() - t < 3000) {} return 1",
            SecurityLevel::Strict,
            Default::default(),
        ))),
    })
    .await
    .unwrap();
    let mut stream = open_run(server(), rx).await;
    let _call = stream.message().await.unwrap().unwrap();
    for call_id in 1..=11 {
        let result = enclave_proto::v1::ToolResult {
            call_id,
            outcome: Some(enclave_proto::v1::tool_result::Outcome::ResultJson(
                "1".into(),
            )),
        };
        let _ = tx
            .send(RunRequest {
                msg: Some(Msg::ToolResult(result)),
            })
            .await;
    }
    let started = Instant::now();
    let status = match stream.message().await {
        Ok(Some(event)) => panic!("the job went on: {event:?}"),
        Ok(None) => panic!("the stream ended without saying why"),
        Err(e) => e,
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("more results"), "{status:?}");
    // Refused as they arrived, not when the job next looked at its queue.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_caller_that_closes_its_side_after_the_job_gets_every_event() {
    // What grpcurl does: the job, then end of stream, before any event comes back. The
    // reader is done at once; the response must still carry the job to its end.
    for _ in 0..40 {
        let (tx, rx) = mpsc::channel(1);
        tx.send(RunRequest {
            msg: Some(Msg::Job(job("console.log('hi'); return 6 * 7"))),
        })
        .await
        .unwrap();
        drop(tx);
        let mut stream = open_run(server(), rx).await;
        let mut events = Vec::new();
        while let Some(event) = stream.message().await.expect("the stream ends cleanly") {
            events.extend(event.event);
        }
        assert_eq!(events.len(), 2, "{events:?}");
    }
}
