//! Connections that hold without asking: silent, slowloris, idle, and more of them than
//! the broker has file descriptors. Each is closed in time, and real clients get in.

use std::time::{Duration, Instant};

use enclave_proto::v1::Suite;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const SUITE: Suite = Suite::X25519Ed25519Aes256gcmSha256;

/// Whether the broker closes `tcp` within `within` (reads until EOF or an error).
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // a SETTINGS or GOAWAY frame before the close
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn silent_slow_and_idle_connections_are_closed() {
    let broker = Broker::start(&["--header-timeout-secs", "1", "--connection-idle-secs", "2"]);
    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(broker.addr).await.unwrap());
    }
    // Slowloris: the HTTP/2 preface, one byte every 200 ms.
    let mut slow = TcpStream::connect(broker.addr).await.unwrap();
    let trickle = tokio::spawn(async move {
        for byte in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" {
            if slow.write_all(&[*byte]).await.is_err() {
                return Some(slow);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    });
    for tcp in &mut silent {
        assert!(
            closed_within(tcp, Duration::from_secs(3)).await,
            "a silent connection stayed open"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    let mut slow = trickle
        .await
        .unwrap()
        .expect("the slow connection was cut off mid-preface");
    assert!(closed_within(&mut slow, Duration::from_secs(1)).await);

    // A real client's connection that goes idle is closed too (with a GOAWAY), and its
    // next request simply opens a new one.
    let mut raw = Raw::connect(&broker, SUITE).await;
    assert_eq!(value(&raw.execute("return 1").await.unwrap()), json!(1));
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert_eq!(value(&raw.execute("return 2").await.unwrap()), json!(2));
}

#[tokio::test]
async fn more_idle_connections_than_descriptors_do_not_lock_real_clients_out() {
    // 128 descriptors: the broker serves at most 96 connections and keeps the rest.
    let broker = Broker::start_with_fd_limit(&["--metrics-listen", "127.0.0.1:0"], 128);
    assert!(
        has_field(&broker.serving_line(), "max_connections=96"),
        "{}",
        broker.serving_line()
    );
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(broker.addr).await.unwrap());
    }
    // A real client, several times over: each gets in within a second, in the place of
    // a connection that never sent a request.
    for i in 0..5 {
        let started = Instant::now();
        let mut raw = tokio::time::timeout(Duration::from_secs(5), Raw::connect(&broker, SUITE))
            .await
            .expect("a real client connects while idle connections fill the broker");
        assert_eq!(
            value(&raw.execute(&format!("return {i}")).await.unwrap()),
            json!(i)
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        idle.push(TcpStream::connect(broker.addr).await.unwrap());
    }
    let log = broker.log_with("connection cap reached").await;
    assert!(log.contains("connection cap reached"), "{log}");
    // And a metric counts it: the idle connections that made room.
    let metrics = broker.scrape_metrics().await;
    let evicted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("enclave_connections_evicted_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no eviction count in\n{metrics}"));
    assert!(evicted >= 5, "{evicted}");
}
