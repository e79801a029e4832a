//! The enclave broker's core, as a library: tools, the executor pool and the job runner.
//! The public gRPC/HTTP service and the encrypted sessions sit on top of [`Broker`].
//!
//! # Layout
//! - [`config`]: the TOML config; every default a named constant with its reason.
//! - [`secrets`]: secret values, their bindings (where each may be sent), per-job
//!   handles, and scrubbing values out of everything that leaves (`secrets/scrub.rs`:
//!   the encodings it undoes).
//! - [`tools`]: the tool registry, argument schemas, the built-ins (`echo`,
//!   `secrets:get`, `http:fetch` with its aliases `http:post` and `http:get`;
//!   `tools/http/address.rs`: which addresses it may reach) and the integrator's tool
//!   services (gRPC and webhook; `tools/source.rs`: tool lists fetched in the background).
//! - [`client_tools`]: tools a client declares for its job and answers itself, and the
//!   routing of its answers to that job.
//! - [`pool`]: the [`Backend`] abstraction and [`RemotePool`] (executors over gRPC:
//!   load balancing, health, retry before start, DNS discovery).
//! - [`embedded`]: jobs in this process, when no executors are configured.
//! - [`jobs`]: [`Broker::run_job`], which pumps a job's events and runs its tool calls.
//! - [`metrics`]: what the broker counts (`enclave_broker_*`), and collectors that read
//!   the session table and the executor pool at each scrape.
//! - [`session`]: the one table of sessions (v1 and legacy): stages, expiry, caps,
//!   eviction, close.
//! - [`service`]: the public `enclave.v1.Broker` gRPC service over sealed records.
//! - [`server`]: serving it with health and reflection, under the connection policy of
//!   `enclave_server::listener` (shared with the HTTP listener).
//! - [`http`]: the HTTP/1.1 API (docs/HTTP.md): protocol v1 in JSON over the same
//!   service, the legacy seed-compatible API, and the browser playground.
//! - [`tls`]: TLS on both listeners (`--tls-cert` / `--tls-key`).
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let config = enclave_broker::Config::load("broker.toml".as_ref())?;
//! let broker = enclave_broker::Broker::from_config(&config).await?;
//! let (events_tx, mut events_rx) = tokio::sync::mpsc::channel(64);
//! let job = enclave_proto::v1::Job { code: "return await callTool('echo', 1)".into(), ..Default::default() };
//! let run = broker.run_job(job, events_tx);
//! # let _ = (run, &mut events_rx);
//! # Ok(()) }
//! ```

pub mod client_tools;
pub mod config;
pub mod embedded;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod pool;
pub mod secrets;
pub mod server;
pub mod service;
pub mod session;
pub mod tls;
pub mod tools;

pub use config::Config;
pub use jobs::{Broker, BuildError, FailureKind, JobEvent, JobFailure, Output};
pub use pool::{Backend, RemotePool, StartError, StartedJob};
pub use secrets::{JobSecrets, SecretStore};
pub use tools::{Tool, ToolContext, ToolError, ToolErrorKind, Tools};
