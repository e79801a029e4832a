//! The enclave executor: runs untrusted JavaScript, one fresh wasmtime instance per job.
//!
//! # Layout
//! - [`sandbox`]: the engine, the Wizer snapshot of the QuickJS guest, running a job.
//! - `epoch`: the clock thread behind time limits, asleep while no job runs.
//! - [`host`]: per-job state and the `enclave` imports, where limits are enforced.
//! - `json`: JSON leaving the sandbox made readable by every client (no lone
//!   surrogates, bounded nesting).
//! - [`wasi`]: the handful of WASI functions the guest's libc needs, stubbed.
//! - [`limits`]: security-level presets, overrides, ceilings.
//! - [`jobs`]: the one job API: admission (checks, limits, a slot) and running (events
//!   out, tool results in), used by the gRPC service and the broker's embedded mode.
//! - [`metrics`]: what the job API counts (`enclave_executor_*`).
//! - [`server`]: the `enclave.v1.Executor` gRPC service and its draining, served with
//!   what every enclave server shares (`enclave-server`: listener, TLS, health,
//!   reflection, runtime and logs).
//!
//! Executors hold no secrets and make no outbound connections: a script reaches the
//! world only through tool calls, which travel back to the broker on the job's stream.

mod cpu_time;
mod epoch;
pub mod host;
pub mod jobs;
mod json;
pub mod limits;
pub mod metrics;
mod priority;
pub mod sandbox;
pub mod server;
pub mod wasi;

pub use jobs::{Jobs, Refusal, RunningJob, ToolResults};
pub use limits::Limits;
pub use sandbox::{JobSpec, Sandbox, SandboxConfig, SandboxError, SnapshotSource};
