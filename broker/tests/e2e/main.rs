//! End-to-end tests of the public broker: the real `enclave-broker` process on a
//! loopback port, driven by a raw protocol client (tests/e2e/support.rs).

mod support;

mod attacks;
mod auth;
mod client_tools;
mod collector;
mod connections;
mod executors;
mod floods;
mod memory;
mod operate;
mod secrets;
mod sessions;
mod traces;
