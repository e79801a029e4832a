//! Unauthenticated state under pressure: a flood of handshakes, garbage records naming
//! a session, ClientHellos that never authenticate. Real clients keep being served.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use enclave_proto::v1::{
    HandshakeRequest, RecordKind, Suite, broker_client::BrokerClient, handshake_request,
    handshake_response,
};
use enclave_proto::{ClientConfig, ClientHandshake, Fingerprint, IdentityKey};
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::*;

const SUITE: Suite = Suite::X25519Ed25519Aes256gcmSha256;

#[derive(Default)]
struct Flood {
    accepted: AtomicU64,
    refused: AtomicU64,
}

/// Sends ClientHellos (and nothing else) from `rpc`, 16 at a time, until `stop`.
async fn flood(
    rpc: BrokerClient<Channel>,
    pin: Fingerprint,
    stop: Arc<AtomicBool>,
    counts: Arc<Flood>,
) {
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (mut rpc, stop, counts) = (rpc.clone(), stop.clone(), counts.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let (_, hello) = ClientHandshake::start(&ClientConfig::new(pin)).unwrap();
                    let request = HandshakeRequest {
                        step: Some(handshake_request::Step::ClientHello(hello)),
                    };
                    match rpc.handshake(request).await {
                        Ok(_) => counts.accepted.fetch_add(1, Ordering::Relaxed),
                        Err(e) if e.code() == Code::ResourceExhausted => {
                            counts.refused.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => panic!("flood: {e:?}"),
                    };
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
}

/// A real client's session, from the ClientHello to its first job's answer.
async fn time_to_first_job(broker: &Broker, rpc: &BrokerClient<Channel>) -> Duration {
    let started = Instant::now();
    let mut raw = Raw::connect_on(rpc.clone(), broker, SUITE, None)
        .await
        .expect("a real client gets a session during the flood");
    let result = raw.execute("return 7").await.expect("and runs its job");
    assert_eq!(value(&result), json!(7));
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_get_a_session_within_a_second_during_a_hello_flood() {
    // Small caps so the flood reaches them in a bounded test: four flooding sources
    // (127.0.0.2-5), each past its own cap, together past the cap on unused sessions
    // and on all sessions.
    let broker = Broker::start(&[
        "--max-sessions",
        "1500",
        "--max-unused-sessions",
        "1000",
        "--max-unused-sessions-per-source",
        "400",
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Flood::default());
    let mut floods = Vec::new();
    for last in 2..=5u8 {
        let rpc = broker.rpc_from(IpAddr::from([127, 0, 0, last])).await;
        floods.push(tokio::spawn(flood(
            rpc,
            broker.fingerprint,
            stop.clone(),
            counts.clone(),
        )));
    }
    // Until the flood has filled what it can fill.
    let started = Instant::now();
    while counts.accepted.load(Ordering::Relaxed) < 1600 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the flood is too slow to test anything"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let real = broker.rpc().await;
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        slowest = slowest.max(time_to_first_job(&broker, &real).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for f in floods {
        f.await.unwrap();
    }
    eprintln!(
        "hello flood: {} accepted, {} refused; slowest real client {slowest:?}",
        counts.accepted.load(Ordering::Relaxed),
        counts.refused.load(Ordering::Relaxed)
    );
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_holds_at_most_its_share_of_unused_sessions() {
    let broker = Broker::start(&["--max-unused-sessions-per-source", "100"]);
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Flood::default());
    let rpc = broker.rpc_from(IpAddr::from([127, 0, 0, 2])).await;
    let flooding = tokio::spawn(flood(rpc, broker.fingerprint, stop.clone(), counts.clone()));
    let started = Instant::now();
    while counts.refused.load(Ordering::Relaxed) < 200 {
        assert!(started.elapsed() < Duration::from_secs(60), "never refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another source is not affected.
    let real = broker.rpc().await;
    assert!(time_to_first_job(&broker, &real).await < Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    flooding.await.unwrap();
    assert_eq!(counts.accepted.load(Ordering::Relaxed), 100);
}

#[tokio::test]
async fn garbage_records_naming_a_session_do_not_keep_it_alive() {
    let broker = Broker::start(&["--session-idle-secs", "1"]);
    let mut raw = Raw::connect(&broker, SUITE).await;
    assert_eq!(value(&raw.execute("return 1").await.unwrap()), json!(1));
    // Records with the session's id that do not open (tampered), for longer than the
    // idle timeout: the session still expires.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        let mut record = raw.seal(RecordKind::ExecuteRequest, job("return 2"));
        record.ciphertext[0] ^= 1;
        let err = raw.rpc.execute(record).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = raw.execute("return 3").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("expired"), "{err:?}");
}

#[tokio::test]
async fn sessions_waiting_for_client_auth_have_a_deadline_and_a_cap() {
    let key = IdentityKey::generate().unwrap();
    let broker = Broker::start(&[
        "--allow-client",
        &key.fingerprint().to_string(),
        "--client-auth-secs",
        "1",
        "--max-pending-auth",
        "3",
    ]);
    let mut rpc = broker.rpc().await;
    let hello = |rpc: BrokerClient<Channel>| async move {
        let (handshake, hello) =
            ClientHandshake::start(&ClientConfig::new(broker.fingerprint)).unwrap();
        let reply = rpc
            .clone()
            .handshake(HandshakeRequest {
                step: Some(handshake_request::Step::ClientHello(hello)),
            })
            .await
            .unwrap()
            .into_inner();
        let Some(handshake_response::Step::ServerHello(server_hello)) = reply.step else {
            panic!("no ServerHello")
        };
        handshake.finish(&server_hello).unwrap()
    };
    let auth = |rpc: BrokerClient<Channel>, mut session: enclave_proto::ClientSession| {
        let auth = session.authenticate(&key).unwrap();
        async move {
            rpc.clone()
                .handshake(HandshakeRequest {
                    step: Some(handshake_request::Step::ClientAuth(auth)),
                })
                .await
        }
    };
    // Four ClientHellos against a cap of three pending: the oldest is gone.
    let first = hello(rpc.clone()).await;
    let mut rest = Vec::new();
    for _ in 0..3 {
        rest.push(hello(rpc.clone()).await);
    }
    let err = auth(rpc.clone(), first).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("unknown or expired"), "{err:?}");
    auth(rpc.clone(), rest.pop().unwrap())
        .await
        .expect("a recent one authenticates");
    // Past the deadline, a ClientAuth finds no session.
    let late = rest.pop().unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let err = auth(rpc.clone(), late).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // An authenticated session is an ordinary one.
    let mut raw = Raw::connect_on(rpc.clone(), &broker, SUITE, Some(&key))
        .await
        .unwrap();
    assert_eq!(value(&raw.execute("return 5").await.unwrap()), json!(5));
    let _ = &mut rpc;
}
