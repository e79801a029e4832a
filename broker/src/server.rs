//! Serving the broker: the Broker service with health and reflection, on a listener
//! the caller binds (tests bind port 0), until a shutdown signal.

use std::future::Future;

use enclave_proto::v1::broker_server::BrokerServer;
use tokio::net::TcpListener;
use tonic::transport::ServerTlsConfig;

use crate::service::BrokerService;

pub async fn serve(
    listener: TcpListener,
    service: BrokerService,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    serve_with_tls(listener, service, None, shutdown).await
}

/// [`serve`], over TLS when `tls` is given (`--tls-cert` / `--tls-key`, see
/// [`crate::tls`]).
pub async fn serve_with_tls(
    listener: TcpListener,
    service: BrokerService,
    tls: Option<ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<BrokerServer<BrokerService>>().await;
    service
        .sessions()
        .spawn_sweeper(crate::session::DEFAULT_SWEEP_INTERVAL);
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    server
        .add_service(health_service)
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
        .serve_with_incoming_shutdown(
            // No Nagle: events and replies are small frames; with Nagle's algorithm and
            // the peer's delayed ACKs each would wait ~40 ms (measured: p50 44 ms).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
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
