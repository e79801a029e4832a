//! TLS on the broker's listeners (`--tls-cert` / `--tls-key`), for deployments that
//! terminate TLS at the broker rather than at a proxy in front of it.
//!
//! TLS only protects the hop: jobs are end-to-end encrypted whatever the transport. Both
//! listeners use the same certificate: gRPC through tonic's own TLS acceptor (ALPN `h2`),
//! HTTP through [`TlsListener`], which hands axum connections whose handshake is done
//! (ALPN `http/1.1`). rustls on ring, like the rest of the workspace.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::ServerTlsConfig;

pub use enclave_executor::server::TLS_HANDSHAKE_TIMEOUT;

/// Handshakes done and waiting for axum to take them.
const ACCEPTED_BACKLOG: usize = 64;

/// The certificate and key of `--tls-cert` / `--tls-key`, ready for both listeners.
#[derive(Clone)]
pub struct ServerTls {
    pub grpc: ServerTlsConfig,
    pub http: Arc<rustls::ServerConfig>,
}

impl ServerTls {
    /// Both PEM files, or neither (`None`: plaintext). The certificate file may hold the
    /// chain after the leaf. Every failure names the file and what is wrong with it.
    pub fn load(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<ServerTls>, String> {
        let Some(grpc) = enclave_executor::server::tls_config(cert, key)? else {
            return Ok(None);
        };
        let (Some(cert), Some(key)) = (cert, key) else {
            unreachable!("tls_config checked that both are given");
        };
        Ok(Some(ServerTls {
            grpc,
            http: Arc::new(http_config(cert, key)?),
        }))
    }
}

/// The rustls server config of the HTTP listener: HTTP/1.1 only, like the server.
fn http_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("reading the TLS certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "the TLS certificate {} holds no certificate",
            cert.display()
        ));
    }
    let private_key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("reading the TLS key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(|e| {
            format!(
                "the TLS certificate {} or key {}: {e}",
                cert.display(),
                key.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// An [`axum::serve::Listener`] that yields TLS connections. Each handshake runs in its
/// own task under [`TLS_HANDSHAKE_TIMEOUT`], so a slow or silent client holds up nobody
/// else; failed handshakes are logged (debug) and dropped. The accept task stops, and
/// the socket closes, when this listener is dropped.
pub struct TlsListener {
    local_addr: SocketAddr,
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// Starts accepting on `listener` (spawns a task on the current runtime).
    pub fn new(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<TlsListener> {
        let local_addr = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(ACCEPTED_BACKLOG);
        tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx));
        Ok(TlsListener {
            local_addr,
            accepted: rx,
        })
    }
}

async fn accept_loop(
    mut listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
            _ = tx.closed() => return,
        };
        // Stream events are small writes that must leave at once, not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(connection) => connection,
            // The accept task only ends once this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}
