//! TLS on the broker's listeners (`--tls-cert` / `--tls-key`), for deployments that
//! terminate TLS at the broker rather than at a proxy in front of it.
//!
//! TLS only protects the hop: jobs are end-to-end encrypted whatever the transport. Both
//! listeners use the same certificate, gRPC with ALPN `h2` and HTTP with `http/1.1`; the
//! handshakes run under the connection policy of [`enclave_server::listener`] (a cap
//! on handshakes in progress, [`TLS_HANDSHAKE_TIMEOUT`] each). rustls on ring, like the
//! rest of the workspace.

use std::path::Path;
use std::sync::Arc;

pub use enclave_server::listener::TLS_HANDSHAKE_TIMEOUT;

/// The certificate and key of `--tls-cert` / `--tls-key`, ready for both listeners.
#[derive(Clone)]
pub struct ServerTls {
    pub grpc: Arc<rustls::ServerConfig>,
    pub http: Arc<rustls::ServerConfig>,
}

impl ServerTls {
    /// Both PEM files, or neither (`None`: plaintext). The certificate file may hold the
    /// chain after the leaf. Every failure names the file and what is wrong with it.
    pub fn load(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<ServerTls>, String> {
        let grpc = enclave_server::tls::load(cert, key, b"h2")?;
        let http = enclave_server::tls::load(cert, key, b"http/1.1")?;
        Ok(grpc.zip(http).map(|(grpc, http)| ServerTls { grpc, http }))
    }
}
