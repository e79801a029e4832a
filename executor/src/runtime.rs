//! The tokio runtime the server binaries run on, with a worker count operators choose.
//!
//! A multi-thread runtime wakes an idle sibling worker whenever one worker finds work
//! (so that the sibling can steal), and on a small machine that wake-up costs more than
//! a short job: measured on 2 cores with client, broker and executor as separate
//! processes, sealed `return 1+1` took p50 330–520 µs with 2 workers per process and
//! 190 µs with 1, at half the CPU per job and higher throughput. Hence `--worker-threads`:
//! all cores by default, 1 for a process per core (e.g. `docker compose --scale
//! executor=N` with one executor per core).

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
