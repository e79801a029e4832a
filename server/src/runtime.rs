//! What the server binaries set up around serving: their tokio runtime, with a worker
//! count operators choose, and the signal that stops them.
//!
//! A multi-thread runtime wakes an idle sibling worker whenever one worker finds work
//! (so that the sibling can steal), and on a small machine that wake-up costs more than
//! a short job (`cargo bench -p enclave-broker -- deployed`; the figures are in
//! docs/PERFORMANCE.md). Hence `--worker-threads`: all cores by default, 1 for a
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

/// A token cancelled on SIGTERM (`docker stop`, systemd) or Ctrl-C: every server of the
/// process drains on it, letting its open requests finish.
pub fn shutdown_on_signal() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let token = token.clone();
        async move {
            shutdown_signal().await;
            token.cancel();
        }
    });
    token
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
