//! Memory that requests hold: a burst of oversized requests is bounded while it lasts
//! and given back afterwards.

use std::time::Duration;

use enclave_proto::v1::{RecordKind, Suite};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_oversized_requests_is_bounded_and_given_back() {
    let broker = Broker::start_measured(&[]);
    let mut raw = Raw::connect(&broker, Suite::X25519Ed25519Aes256gcmSha256).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = broker.rss();
    // Sixteen records of 20 MiB at once, each over the 16 MiB a plaintext may be.
    let mut record = raw.seal(RecordKind::ExecuteRequest, job("return 1"));
    record.ciphertext.resize(20 << 20, 7);
    let mut calls = Vec::new();
    for _ in 0..16 {
        let (mut rpc, record) = (broker.rpc().await, record.clone());
        calls.push(tokio::spawn(async move { rpc.execute(record).await }));
    }
    let mut codes = Vec::new();
    for call in calls {
        codes.push(call.await.unwrap().unwrap_err().code());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = broker.rss();
    eprintln!(
        "oversized burst: RSS {} MiB before, {} MiB after; statuses {codes:?}",
        baseline >> 20,
        after >> 20
    );
    // Every one refused as PROTOCOL.md §11 says (over the transport limit, or past the
    // request memory budget), none ran.
    assert!(
        codes
            .iter()
            .all(|c| matches!(c, tonic::Code::ResourceExhausted | tonic::Code::OutOfRange)),
        "{codes:?}"
    );
    assert!(
        after < baseline + (64 << 20),
        "RSS {} MiB before, {} MiB after",
        baseline >> 20,
        after >> 20
    );
}
