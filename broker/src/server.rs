//! Serving the broker: the Broker service with health and reflection
//! ([`enclave_server::grpc`]), on a listener
//! the caller binds (tests bind port 0), under the connection policy of
//! [`enclave_server::listener`], until a shutdown signal.

use std::future::Future;
use std::sync::Arc;

use enclave_server::grpc;
use enclave_server::listener::{self, ConnectionPolicy, Connections, HttpVersion};
use tokio::net::TcpListener;

use crate::service::BrokerService;

/// Default budget for the bodies of requests in flight, both listeners together: four
/// requests of the largest size (a 16 MiB plaintext is a 20 MiB gRPC message and ~27
/// MiB of JSON) fit, and the memory a burst of oversized requests can take is bounded.
pub const DEFAULT_MAX_REQUEST_MEMORY: usize = 128 << 20;

/// The broker's connections under the default policy, for tests and embedders.
pub fn default_connections() -> Arc<Connections> {
    Connections::with_request_memory(ConnectionPolicy::default(), DEFAULT_MAX_REQUEST_MEMORY)
}

pub async fn serve(
    listener: TcpListener,
    service: BrokerService,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, service, default_connections(), None, shutdown).await
}

/// [`serve`] under `connections` (shared with the HTTP listener), over TLS when `tls` is
/// given (`--tls-cert` / `--tls-key`, see [`crate::tls`]).
pub async fn serve_with(
    listener: TcpListener,
    service: BrokerService,
    connections: Arc<Connections>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    service
        .sessions()
        .spawn_sweeper(crate::session::DEFAULT_SWEEP_INTERVAL);
    let (_health, routes) = grpc::routes(service.into_server()).await;
    listener::serve(
        listener,
        connections,
        HttpVersion::Http2,
        tls,
        routes,
        shutdown,
    )
    .await
}
