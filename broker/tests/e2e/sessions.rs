//! Session lifecycle: expiry, explicit close, caps, many sessions at once.

use std::time::{Duration, Instant};

use enclave_proto::v1::{CloseSessionResponse, ErrorCode, RecordKind, Suite, execute_result};
use prost::Message;
use serde_json::json;
use tonic::Code;

use crate::support::*;

const SUITE: Suite = Suite::X25519Ed25519Aes256gcmSha256;

#[tokio::test]
async fn an_idle_session_expires() {
    let broker = Broker::start(&["--session-idle-secs", "1"]);
    let mut raw = Raw::connect(&broker, SUITE).await;
    assert_eq!(value(&raw.execute("return 1").await.unwrap()), json!(1));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = raw.execute("return 2").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("expired"), "{err:?}");
}

#[tokio::test]
async fn a_session_dies_at_its_lifetime_however_busy() {
    let broker = Broker::start(&["--session-lifetime-secs", "2"]);
    let mut raw = Raw::connect(&broker, SUITE).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        assert_eq!(value(&raw.execute("return 1").await.unwrap()), json!(1));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        raw.execute("return 1").await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn close_ends_the_session() {
    let broker = Broker::start(&[]);
    let mut raw = Raw::connect(&broker, SUITE).await;
    let record = raw
        .session
        .channel()
        .seal_request(RecordKind::CloseRequest, &[])
        .unwrap();
    let seq = record.seq;
    let reply = raw.rpc.close_session(record).await.unwrap().into_inner();
    let plain = raw
        .session
        .channel()
        .open_reply(seq, RecordKind::CloseResult, &reply)
        .unwrap();
    CloseSessionResponse::decode(plain.as_slice()).unwrap();
    assert_eq!(
        raw.execute("return 1").await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn caps_on_sessions_and_on_jobs_per_session() {
    let broker = Broker::start(&["--max-sessions", "2", "--max-jobs-per-session", "1"]);
    let mut a = Raw::connect(&broker, SUITE).await;
    let mut b = Raw::connect(&broker, SUITE).await;
    // Both have run a job: a table full of used sessions refuses a third handshake.
    assert_eq!(value(&b.execute("return 1").await.unwrap()), json!(1));
    assert_eq!(value(&a.execute("return 1").await.unwrap()), json!(1));
    let err = Raw::connect_as(&broker, SUITE, None)
        .await
        .err()
        .expect("third session refused");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("all of them in use"), "{err:?}");

    // One job in flight on `a` (it sleeps on a tool-less busy wait); a second is refused.
    let busy = a.seal(
        RecordKind::ExecuteRequest,
        job("const t = Date.now(); while (Date.now() - t < 1500) {} return 1"),
    );
    let mut rpc = a.rpc.clone();
    let running = tokio::spawn(async move { rpc.execute(busy).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let err = a.execute("return 2").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(running.await.unwrap().is_ok());
}

#[tokio::test]
async fn a_full_table_drops_the_oldest_session_that_never_ran_a_job() {
    let broker = Broker::start(&["--max-sessions", "2"]);
    let mut used = Raw::connect(&broker, SUITE).await;
    assert_eq!(value(&used.execute("return 1").await.unwrap()), json!(1));
    let mut never_used = Raw::connect(&broker, SUITE).await;
    // Full: the new handshake gets in, in the place of the session that ran nothing.
    let mut newest = Raw::connect(&broker, SUITE).await;
    let err = never_used.execute("return 2").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(value(&newest.execute("return 3").await.unwrap()), json!(3));
    assert_eq!(value(&used.execute("return 4").await.unwrap()), json!(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_sessions() {
    let broker = Broker::start(&[]);
    let broker = std::sync::Arc::new(broker);
    // Ten connections carry the thousand sessions, as a few clients' pools would.
    let mut connections = Vec::new();
    for _ in 0..10 {
        connections.push(broker.rpc().await);
    }
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let broker = broker.clone();
        let rpc = connections[i % 10].clone();
        tasks.push(tokio::spawn(async move {
            let suite = if i % 2 == 0 {
                SUITE
            } else {
                Suite::P256Ed25519Aes256gcmSha256
            };
            let mut raw = Raw::connect_on(rpc, &broker, suite, None).await.unwrap();
            // A burst past the embedded executor's job slots is told UNAVAILABLE, "safe
            // to retry later" (job.proto); a client does, on the same session.
            for _ in 0..500 {
                let result = raw.execute(&format!("return {i}")).await.unwrap();
                match &result.outcome {
                    Some(execute_result::Outcome::Error(e))
                        if e.code() == ErrorCode::Unavailable =>
                    {
                        tokio::time::sleep(Duration::from_millis(10)).await
                    }
                    _ => return value(&result),
                }
            }
            panic!("session {i} never got a job slot")
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), json!(i));
    }
}
