//! Broker integration tests: one binary (one link) with a module per feature. Executors
//! are real: in-process servers on loopback ports, the `enclave-executor` binary as a
//! child process, and the embedded sandbox.

mod support;

mod embedded;
mod executors;
mod flow;
mod http;
mod secrets;
mod services;
mod tools;
