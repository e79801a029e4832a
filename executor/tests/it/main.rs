//! Executor integration tests: one binary (one link) with a module per feature. They
//! start real servers on loopback port 0 and drive them with the tonic client.

mod support;

mod admission;
mod concurrency;
mod connections;
mod console;
mod isolation;
mod limits;
mod process;
mod protocol;
mod results;
mod tools;
