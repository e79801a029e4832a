use std::time::Duration;

use enclave_client::RekeyPolicy;
use serde_json::json;

use crate::support::Broker;

fn every(records: u64) -> RekeyPolicy {
    RekeyPolicy {
        max_records: records,
        ..RekeyPolicy::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_rekey_mid_session() {
    let broker = Broker::start("rekey");
    let client = broker
        .builder()
        .rekey_policy(every(3))
        .connect()
        .await
        .unwrap();

    for i in 0..10 {
        let run = client.execute(format!("return {i}")).await.unwrap();
        assert_eq!(run.result, Ok(json!(i)));
    }
    let info = client.session().unwrap();
    assert_eq!(info.handshakes, 1);
    // Every third record: the rekey request itself is the new key's first record.
    assert!(info.rekeys >= 3, "{info:?}");
    assert_eq!(info.send_epoch as u64, info.rekeys);
    assert_eq!(info.recv_epoch as u64, info.rekeys);

    // Concurrent requests racing the key updates still all go through.
    let runs = (0..20).map(|i| client.execute(format!("return {i} * 10")));
    for (i, run) in futures::future::join_all(runs)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(run.unwrap().result, Ok(json!(i * 10)));
    }
    let after = client.session().unwrap();
    assert!(after.rekeys > info.rekeys, "{after:?}");

    // And on demand.
    client.rekey().await.unwrap();
    assert_eq!(client.session().unwrap().rekeys, after.rekeys + 1);
    assert_eq!(
        client.execute("return 'still here'").await.unwrap().result,
        Ok(json!("still here"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_session_is_replaced_by_a_new_handshake() {
    let broker = Broker::start("close");
    let client = broker.client().await;
    let first = client.session().unwrap();

    client.close().await.unwrap();
    assert!(client.session().is_none());
    assert_eq!(
        client.execute("return 1").await.unwrap().result,
        Ok(json!(1))
    );
    let second = client.session().unwrap();
    assert_eq!(second.handshakes, 2);
    assert_ne!(second.session_id, first.session_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_is_renewed_transparently() {
    let broker = Broker::start_with("expiry", &["--session-idle-secs", "1"]);
    let client = broker.client().await;
    assert_eq!(
        client.execute("return 1").await.unwrap().result,
        Ok(json!(1))
    );
    let first = client.session().unwrap();

    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The broker answers UNAUTHENTICATED (unknown session) and ran nothing; the client
    // handshakes again and retries once, and the caller sees only the result.
    assert_eq!(
        client.execute("return 2").await.unwrap().result,
        Ok(json!(2))
    );
    let second = client.session().unwrap();
    assert_eq!(second.handshakes, 2);
    assert_ne!(second.session_id, first.session_id);

    // Many requests noticing at once share one new session.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let runs = (0..10).map(|i| client.execute(format!("return {i}")));
    for (i, run) in futures::future::join_all(runs)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(run.unwrap().result, Ok(json!(i)));
    }
    assert_eq!(
        client.session().unwrap().handshakes,
        3,
        "one new session for all ten"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_is_survived() {
    let mut broker = Broker::start("restart");
    let client = broker.client().await;
    assert_eq!(
        client.execute("return 1").await.unwrap().result,
        Ok(json!(1))
    );

    broker.restart();
    let events: Vec<_> =
        futures::StreamExt::collect::<Vec<_>>(client.execute_streaming("return 2")).await;
    let last = events.last().unwrap().as_ref().unwrap();
    assert!(
        matches!(last, enclave_client::Event::Final { result, .. } if result == &json!(2)),
        "{events:?}"
    );
    assert_eq!(client.session().unwrap().handshakes, 2);
}
