//! Serving one enclave gRPC service the same way in every server: beside it the standard
//! health service (reporting it serving) and reflection (v1 and v1alpha, advertising
//! only what this server serves, so `grpcurl list` and `describe` work without .proto
//! files), all under one message-size budget.

use std::convert::Infallible;

use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic_health::server::HealthReporter;

/// The largest gRPC message any enclave server or its broker-side client takes or sends:
/// a sealed record of the protocol's largest plaintext, and on a job stream a job of that
/// size (the broker forwards what a record carried), each with room for its framing.
pub const MAX_MESSAGE_BYTES: usize = 20 << 20;

const _: () = assert!(
    MAX_MESSAGE_BYTES >= enclave_proto::MAX_PLAINTEXT_LEN + (1 << 20),
    "a record or job of the protocol's largest plaintext must fit in one gRPC message"
);

/// Health and reflection for a server whose service is `S`, with `S` (built with
/// [`MAX_MESSAGE_BYTES`] by the caller) added by `add`. The reporter lets the server
/// report itself not serving when it drains.
pub async fn routes<S>(service: S) -> (HealthReporter, Routes)
where
    S: tower::Service<http::Request<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Response: axum::response::IntoResponse,
    S::Future: Send + 'static,
{
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<S>().await;
    let routes = Routes::new(health_service)
        .add_service(
            reflection(S::NAME)
                .build_v1()
                .expect("embedded descriptors are valid"),
        )
        .add_service(
            reflection(S::NAME)
                .build_v1alpha()
                .expect("embedded descriptors are valid"),
        )
        .add_service(service)
        .prepare();
    (health, routes)
}

fn reflection(service: &'static str) -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(enclave_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // The descriptor set holds every enclave service; advertise only the one this
        // server serves.
        .with_service_name(service)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .with_service_name("grpc.reflection.v1alpha.ServerReflection")
}
