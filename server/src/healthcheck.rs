//! The `healthcheck` subcommand of both binaries: asks a running server whether it
//! serves, so that `docker compose` (`healthcheck:`) and orchestrators need no shell,
//! curl or grpcurl in the image. Exit status 0 when healthy.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A check that takes longer than this fails: a healthy server answers in milliseconds.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// Where to reach a server listening on `listen`: the same port on loopback when it
/// listens on every address (`0.0.0.0:7701` in a container).
pub fn local(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, listen.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, listen.port()).into(),
        _ => listen,
    }
}

/// The standard gRPC health check for `service` at `addr` (plaintext).
pub async fn grpc(addr: SocketAddr, service: &str) -> Result<(), String> {
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map_err(|e| format!("gRPC health of {service} at {addr}: {e}"))?
            .into_inner()
            .status();
        match status {
            ServingStatus::Serving => Ok(()),
            other => Err(format!(
                "gRPC health of {service} at {addr}: {}",
                other.as_str_name()
            )),
        }
    };
    tokio::time::timeout(TIMEOUT, check)
        .await
        .map_err(|_| format!("no gRPC health answer from {addr} within {TIMEOUT:?}"))?
}

/// `GET path` at `addr` (plaintext HTTP/1.1) answers 200.
pub async fn http(addr: SocketAddr, path: &str) -> Result<(), String> {
    get(addr, path).await.map(drop)
}

/// An answer to [`get`]: 200, its head and its body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status line and headers, as sent.
    pub head: String,
    pub body: String,
}

/// `GET path` at `addr` (plaintext HTTP/1.1, the connection closed after it): the answer
/// when it is a 200. Also how tests and deployments read a `/metrics` page.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Answer, String> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("GET {path} at {addr}: {e}"))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("GET {path} at {addr}: {e}"))?;
        let response = String::from_utf8_lossy(&response);
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        if !head.starts_with("HTTP/1.1 200") {
            let status = head.lines().next().unwrap_or("no answer");
            return Err(format!("GET {path} at {addr}: {status}"));
        }
        Ok(Answer {
            head: head.to_owned(),
            body: body.to_owned(),
        })
    };
    tokio::time::timeout(TIMEOUT, fetch)
        .await
        .map_err(|_| format!("no HTTP answer from {addr} within {TIMEOUT:?}"))?
}
