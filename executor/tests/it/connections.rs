//! The executor's port is served under the listener policy the broker's are: silent and
//! idle connections are closed, and one connection (a broker's) can still carry a stream
//! for every job slot.

use std::time::{Duration, Instant};

use enclave_executor::SandboxConfig;
use enclave_executor::server::ServerConfig;
use enclave_proto::v1::{RunRequest, run_event::Event, run_request::Msg};
use enclave_server::listener::ConnectionPolicy;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::support::*;

/// Whether the peer closes `tcp` within `within` (frames it sends first, such as a
/// GOAWAY, are read and skipped).
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed_and_a_client_carries_on() {
    let addr = start_server_with(
        SandboxConfig {
            max_concurrent_jobs: 4,
            ..SandboxConfig::default()
        },
        ServerConfig::default(),
        ConnectionPolicy {
            request_header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(2),
            ..ConnectionPolicy::default()
        },
    );
    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    for tcp in &mut silent {
        assert!(
            closed_within(tcp, Duration::from_secs(3)).await,
            "a silent connection stayed open"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(4));

    // A client's connection that goes idle is closed (with a GOAWAY); its next job opens
    // a new one.
    let mut client = client_for(addr).await;
    let first = run_with(&mut client, job("return 1"), Box::new(|c| Some(echo(c))))
        .await
        .unwrap();
    assert_eq!(first.result(), json!(1));
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let second = run_with(&mut client, job("return 2"), Box::new(|c| Some(echo(c))))
        .await
        .unwrap();
    assert_eq!(second.result(), json!(2));
}

#[tokio::test]
async fn one_connection_carries_a_stream_for_every_job_slot() {
    // More slots than the listener's default stream cap (256): a broker sends all of an
    // executor's jobs over one connection, and the slots, not the cap, must decide.
    let slots = 300;
    let addr = start_server(
        SandboxConfig {
            max_concurrent_jobs: slots,
            ..SandboxConfig::default()
        },
        ServerConfig::default(),
    );
    let client = client_for(addr).await;
    let mut parked = Vec::new();
    for _ in 0..slots {
        let (tx, rx) = mpsc::channel(1);
        tx.send(RunRequest {
            msg: Some(Msg::Job(job("return await callTool('never', {})"))),
        })
        .await
        .unwrap();
        let mut client = client.clone();
        parked.push(tokio::spawn(async move {
            let mut events = client
                .run(ReceiverStream::new(rx))
                .await
                .expect("stream accepted")
                .into_inner();
            let first = events.message().await.expect("an event").expect("an event");
            assert!(matches!(first.event, Some(Event::ToolCall(_))), "{first:?}");
            (tx, events)
        }));
    }
    // One deadline for all, well inside the jobs' own 30 s: a stream held back by a cap
    // would only start when an earlier job ended.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut open = Vec::new();
    for task in parked {
        let waiting = tokio::time::timeout_at(deadline, task)
            .await
            .expect("every job started: none waits on a stream cap")
            .unwrap();
        open.push(waiting);
    }
    assert_eq!(open.len(), slots as usize);
    // One more is refused by the executor itself, clearly.
    let mut client = client.clone();
    let refused = run_with(&mut client, job("return 1"), Box::new(|c| Some(echo(c))))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
}
