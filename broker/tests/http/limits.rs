//! What an HTTP client can hold: slow headers, a slow body, and request memory.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

async fn connect(broker: &Broker) -> TcpStream {
    TcpStream::connect(broker.base.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Everything the broker sends until it closes, or what came within `within`.
async fn read_until_closed(tcp: &mut TcpStream, within: Duration) -> (bool, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (true, String::from_utf8_lossy(&got).into()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (false, String::from_utf8_lossy(&got).into()),
        }
    }
}

#[tokio::test]
async fn slow_headers_and_slow_bodies_are_cut_off() {
    let broker = Broker::start(&["--header-timeout-secs", "1", "--body-timeout-secs", "1"]);
    // Slowloris: headers one byte every 200 ms, never finished in time.
    let mut slow = connect(&broker).await;
    let started = Instant::now();
    let head =
        b"POST /v1/handshake HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    for byte in head {
        if slow.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    let (closed, _) = read_until_closed(&mut slow, Duration::from_secs(1)).await;
    assert!(
        closed,
        "slow headers kept the connection for {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // A body that stops arriving: its request fails as DEADLINE_EXCEEDED (504).
    let mut stalled = connect(&broker).await;
    stalled
        .write_all(b"POST /v1/handshake HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"clientHello\":")
        .await
        .unwrap();
    let started = Instant::now();
    let (closed, answer) = read_until_closed(&mut stalled, Duration::from_secs(4)).await;
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(answer.contains("DEADLINE_EXCEEDED"), "{answer}");
    assert!(closed, "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn requests_in_flight_share_one_memory_budget() {
    let broker = Broker::start(&["--max-request-memory-mib", "32"]);
    let head = |len: usize| {
        format!(
            "POST /v1/execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
        )
    };
    // One 20 MiB request on its way holds 20 MiB of the 32 ...
    let mut first = connect(&broker).await;
    first.write_all(head(20 << 20).as_bytes()).await.unwrap();
    first.write_all(&[b' '; 1 << 20]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ... so a second one is refused at once, before its body is read,
    let mut second = connect(&broker).await;
    second.write_all(head(20 << 20).as_bytes()).await.unwrap();
    let (_, answer) = read_until_closed(&mut second, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("RESOURCE_EXHAUSTED"), "{answer}");
    assert!(answer.contains("32 MiB of requests in flight"), "{answer}");
    // ... and the budget comes back when the first one is gone.
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = post(&broker.url("/v1/execute"), &" ".repeat(20 << 20), &[]).await;
    assert_eq!(
        status,
        400,
        "{}",
        String::from_utf8_lossy(&body[..200.min(body.len())])
    );
}
