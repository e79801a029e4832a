//! What every enclave server process shares, so that the broker and the executor serve
//! the same way: their runtime and the signal that stops them ([`runtime`]), their logs
//! and traces ([`telemetry`]), one connection policy for every listener ([`listener`]),
//! TLS from PEM files ([`tls`]),
//! gRPC with health, reflection and one message-size budget ([`grpc`]), and the
//! Prometheus endpoint ([`metrics`]), and the `healthcheck` subcommand's checks
//! ([`healthcheck`]).

pub mod grpc;
pub mod healthcheck;
pub mod listener;
pub mod metrics;
pub mod runtime;
pub mod telemetry;
pub mod tls;
