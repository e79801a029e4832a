//! Serving the broker: the Broker service with health and reflection, on a listener
//! the caller binds (tests bind port 0), under the connection policy of
//! [`enclave_executor::listener`], until a shutdown signal.

use std::future::Future;
use std::sync::Arc;

use enclave_executor::listener::{self, ConnectionPolicy, Connections, HttpVersion};
use enclave_proto::v1::broker_server::BrokerServer;
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
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<BrokerServer<BrokerService>>().await;
    service
        .sessions()
        .spawn_sweeper(crate::session::DEFAULT_SWEEP_INTERVAL);
    let routes = tonic::service::Routes::new(health_service)
        .add_service(
            reflection()
                .build_v1()
                .expect("embedded descriptors are valid"),
        )
        .add_service(
            reflection()
                .build_v1alpha()
                .expect("embedded descriptors are valid"),
        )
        .add_service(service.into_server())
        .prepare();
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

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(enclave_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // The descriptor set holds every enclave service; advertise only the ones this
        // binary serves.
        .with_service_name("enclave.v1.Broker")
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .with_service_name("grpc.reflection.v1alpha.ServerReflection")
}
