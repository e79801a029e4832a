//! The broker restarted: its identity comes back from the named volume, so the pin still
//! matches, and a client with a live session goes on (the session is gone with the old
//! process; the client's next call is UNAUTHENTICATED and it shakes hands again).

use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_broker_keeps_its_identity_and_clients_go_on() {
    let _serial = one_at_a_time().await;
    let project = Project::up(1, &[]).await.unwrap();
    let pin = project.fingerprint().await.unwrap();
    let client = project.client().await.unwrap();
    trivial(&client).await.unwrap();
    let handshakes = client.session().expect("a session").handshakes;

    let restarted = Instant::now();
    project.compose(&["restart", "broker"]).await.unwrap();
    project.wait_healthy(Duration::from_secs(60)).await.unwrap();
    let healthy = restarted.elapsed();
    assert_eq!(project.fingerprint().await.unwrap(), pin);
    // The same client, pinned to the key from before the restart.
    let first = Instant::now();
    trivial(&client).await.unwrap();
    println!(
        "broker restart: healthy after {} ms; the live client's next job took {} ms (new handshake)",
        healthy.as_millis(),
        first.elapsed().as_millis()
    );
    assert!(client.session().expect("a session").handshakes > handshakes);

    // Down and up again (an upgrade): the volume keeps the key.
    project.compose(&["down", "-t", "5"]).await.unwrap();
    project
        .compose(&["up", "-d", "--scale", "executor=1"])
        .await
        .unwrap();
    project.wait_healthy(Duration::from_secs(60)).await.unwrap();
    assert_eq!(project.fingerprint().await.unwrap(), pin);
    trivial(&client).await.unwrap();
}
