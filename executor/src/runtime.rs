//! The tokio runtime the server binaries run on, with a worker count operators choose.
//!
//! A multi-thread runtime wakes an idle sibling worker whenever one worker finds work
//! (so that the sibling can steal), and on a small machine that wake-up costs more than
//! a short job: measured on 2 cores with client, broker and executor as separate
//! processes (`cargo bench -p enclave-broker -- deployed`), sealed `return 1+1` took p50
//! 529–552 µs with a worker per core in each server and 252 µs with one, at less than
//! half the CPU per job. Hence `--worker-threads`: all cores by default, 1 for a
//! process per core (e.g. `docker compose --scale executor=N`, one executor per core).

use std::num::NonZeroUsize;

use tokio::runtime::{Builder, Runtime};

/// A runtime with `worker_threads` workers (all cores when `None`); 1 builds a
/// current-thread runtime, which has no siblings to wake.
pub fn build(worker_threads: Option<NonZeroUsize>) -> std::io::Result<Runtime> {
    match worker_threads.map(NonZeroUsize::get) {
        Some(1) => Builder::new_current_thread().enable_all().build(),
        Some(n) => Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => Builder::new_multi_thread().enable_all().build(),
    }
}
