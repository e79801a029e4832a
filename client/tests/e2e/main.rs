//! End-to-end tests against the real `enclave-broker` process (embedded executor), and
//! against a hand-written broker for the failures a correct broker never produces.
//! One test binary, a module per concern, to keep link time down.

mod cli;
mod concurrency;
mod execute;
mod misbehaving_broker;
mod security;
mod sessions;
mod streaming;
mod support;
mod tools;
