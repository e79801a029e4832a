//! Callers that break the protocol get clear statuses; the executor keeps serving.

use std::time::{Duration, Instant};

use enclave_executor::SandboxConfig;
use enclave_executor::server::ServerConfig;
use enclave_proto::v1::{
    Cancel, ErrorCode, RunRequest, SecurityLevel, ToolResult, run_event::Event, run_request::Msg,
    tool_result::Outcome,
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::support::*;

async fn open(requests: Vec<RunRequest>) -> Result<Vec<Event>, tonic::Status> {
    let (tx, rx) = mpsc::channel(8);
    for r in requests {
        tx.send(r).await.unwrap();
    }
    drop(tx);
    let mut stream = client()
        .await
        .run(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut events = Vec::new();
    while let Some(e) = stream.message().await? {
        events.extend(e.event);
    }
    Ok(events)
}

#[tokio::test]
async fn the_first_message_must_be_a_job() {
    let result = ToolResult {
        call_id: 1,
        outcome: Some(Outcome::ResultJson("1".into())),
    };
    let err = open(vec![RunRequest {
        msg: Some(Msg::ToolResult(result)),
    }])
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("first message must be a job"),
        "{err:?}"
    );

    let err = open(vec![]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("no job"), "{err:?}");

    let err = open(vec![RunRequest { msg: None }]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn a_tool_result_for_an_unknown_call_is_refused() {
    let wrong: ToolHandler = Box::new(|call| {
        Some(ToolResult {
            call_id: call.call_id + 1000,
            outcome: Some(Outcome::ResultJson("1".into())),
        })
    });
    let err = run_with(
        &mut client().await,
        job("return await callTool('x', 1)"),
        wrong,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("not pending"), "{err:?}");
}

#[tokio::test]
async fn a_second_job_on_one_stream_is_refused() {
    // Many at once: the refusal races the first job, parked on a tool call, seeing its
    // tool channel close. The refusal must win every time.
    let runs = (0..64).map(|_| async {
        let (tx, rx) = mpsc::channel(8);
        tx.send(RunRequest {
            msg: Some(Msg::Job(job("await callTool('x', 1)"))),
        })
        .await
        .unwrap();
        tx.send(RunRequest {
            msg: Some(Msg::Job(job("return 2"))),
        })
        .await
        .unwrap();
        let mut stream = open_run(server(), rx).await;
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("stream ended without an error"),
                Err(e) => break e,
            }
        }
    });
    for err in futures::future::join_all(runs).await {
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("one job"), "{err:?}");
    }
}

#[tokio::test]
async fn garbage_bytes_are_a_clear_error() {
    // A gRPC frame whose payload is not a RunRequest: field 1 with wire type 7 (invalid).
    let err = raw_run(vec![0x0f, 0xff, 0xff, 0xff]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("malformed"), "{err:?}");
    assert_eq!(run(job("return 'alive'")).await.result(), json!("alive"));
}

#[tokio::test]
async fn oversized_code_and_bad_input_are_refused() {
    let err = open(vec![RunRequest {
        msg: Some(Msg::Job(job(&"x".repeat(2 << 20)))),
    }])
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("bytes"), "{err:?}");
    let bad = enclave_proto::v1::Job {
        input_json: "{nope".into(),
        ..job("return 1")
    };
    let err = open(vec![RunRequest {
        msg: Some(Msg::Job(bad)),
    }])
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn cancel_ends_the_job_with_cancelled() {
    let (tx, rx) = mpsc::channel(8);
    tx.send(RunRequest {
        msg: Some(Msg::Job(job("await null; while (true) {}"))),
    })
    .await
    .unwrap();
    let mut stream = open_run(server(), rx).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    tx.send(RunRequest {
        msg: Some(Msg::Cancel(Cancel {
            reason: "test".into(),
        })),
    })
    .await
    .unwrap();
    let mut last = None;
    while let Some(e) = stream.message().await.unwrap() {
        last = e.event;
    }
    let Some(Event::Final(f)) = last else {
        panic!("no final event")
    };
    let Some(enclave_proto::v1::final_event::Outcome::Error(e)) = f.outcome else {
        panic!("not an error")
    };
    assert_eq!(e.code(), ErrorCode::Cancelled);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "took {:?}",
        started.elapsed()
    );
}

/// A server with two job slots, for admission and drop tests.
fn small_server() -> std::net::SocketAddr {
    static ADDR: std::sync::OnceLock<std::net::SocketAddr> = std::sync::OnceLock::new();
    *ADDR.get_or_init(|| {
        start_server(
            SandboxConfig {
                max_concurrent_jobs: 2,
                ..SandboxConfig::default()
            },
            ServerConfig::default(),
        )
    })
}

/// Opens a job that spins until its stream is dropped.
async fn spinning_job(
    addr: std::net::SocketAddr,
) -> (
    mpsc::Sender<RunRequest>,
    tonic::Streaming<enclave_proto::v1::RunEvent>,
) {
    let (tx, rx) = mpsc::channel(8);
    let spin = job_with(
        "console.log('started'); await null; while (true) {}",
        SecurityLevel::Permissive,
        Default::default(),
    );
    tx.send(RunRequest {
        msg: Some(Msg::Job(spin)),
    })
    .await
    .unwrap();
    let mut stream = open_run(addr, rx).await;
    // Wait until it is really running.
    let first = stream.message().await.unwrap().unwrap();
    assert!(matches!(first.event, Some(Event::Console(_))));
    (tx, stream)
}

#[tokio::test]
async fn past_the_job_limit_new_jobs_are_refused_and_dropping_a_stream_frees_its_slot() {
    let addr = small_server();
    let a = spinning_job(addr).await;
    let b = spinning_job(addr).await;
    let err = run_with(
        &mut client_for(addr).await,
        job("return 1"),
        Box::new(|_| None),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");

    // Dropping a stream stops its job within milliseconds: its slot is free again.
    drop(a);
    let started = Instant::now();
    loop {
        match run_with(
            &mut client_for(addr).await,
            job("return 'in'"),
            Box::new(|_| None),
        )
        .await
        {
            Ok(t) => {
                assert_eq!(t.result(), json!("in"));
                break;
            }
            Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                assert!(
                    started.elapsed() < Duration::from_millis(500),
                    "slot not freed after {:?}",
                    started.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    drop(b);
}
