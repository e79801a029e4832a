//! TLS on the broker's listeners (`--tls-cert` / `--tls-key`), for deployments that
//! terminate TLS at the broker rather than at a proxy in front of it.
//!
//! TLS only protects the hop: jobs are end-to-end encrypted whatever the transport. Both
//! listeners use the same certificate, gRPC with ALPN `h2` and HTTP with `http/1.1`; the
//! handshakes run under the connection policy of [`enclave_executor::listener`] (a cap
//! on handshakes in progress, [`TLS_HANDSHAKE_TIMEOUT`] each). rustls on ring, like the
//! rest of the workspace.

use std::path::Path;
use std::sync::Arc;

pub use enclave_executor::listener::TLS_HANDSHAKE_TIMEOUT;

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
        let (cert, key) = match (cert, key) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            (Some(_), None) => return Err("--tls-cert needs --tls-key (ENCLAVE_TLS_KEY)".into()),
            (None, Some(_)) => return Err("--tls-key needs --tls-cert (ENCLAVE_TLS_CERT)".into()),
        };
        use enclave_executor::listener::tls_config;
        Ok(Some(ServerTls {
            grpc: tls_config(cert, key, b"h2")?,
            http: tls_config(cert, key, b"http/1.1")?,
        }))
    }
}
