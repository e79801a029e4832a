//! What the server binaries set up around serving: their tokio runtime, with a worker
//! count operators choose, their logs, and the signal that stops them.
//!
//! A multi-thread runtime wakes an idle sibling worker whenever one worker finds work
//! (so that the sibling can steal), and on a small machine that wake-up costs more than
//! a short job (`cargo bench -p enclave-broker -- deployed`; the figures are in
//! docs/PERFORMANCE.md). Hence `--worker-threads`: all cores by default, 1 for a
//! process per core (e.g. `docker compose --scale executor=N`, one executor per core).

use std::io::IsTerminal;
use std::num::NonZeroUsize;

use tokio::runtime::{Builder, Runtime};
use tracing_subscriber::EnvFilter;

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

/// `--log-format`: how log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event, for people.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`), for log
    /// shippers.
    Json,
}

/// Logs to stderr in `format`, filtered by `ENCLAVE_LOG` (tracing's `EnvFilter`
/// syntax; `info` when unset, and with a warning when invalid).
pub fn init_logging(format: LogFormat) {
    let wanted = std::env::var("ENCLAVE_LOG").ok();
    let (filter, invalid) = log_filter(wanted.as_deref());
    // Colours only for a person at a terminal: not in files, journald or `docker logs`.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(colour).init(),
        LogFormat::Json => logs.json().with_ansi(false).init(),
    }
    if let Some(error) = invalid {
        tracing::warn!(%error, "ENCLAVE_LOG is not a valid filter; logging at info");
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

/// Cranelift logs a few lines per compiled function at `debug`, thousands at start-up,
/// which would bury ours: it stays at `info` unless the filter names it.
const QUIET_COMPILER: [&str; 2] = ["cranelift_codegen=info", "wasmtime_internal_cranelift=info"];

fn log_filter(wanted: Option<&str>) -> (EnvFilter, Option<String>) {
    let wanted = wanted.map(str::trim).filter(|w| !w.is_empty());
    let (mut filter, invalid) = match EnvFilter::try_new(wanted.unwrap_or("info")) {
        Ok(filter) => (filter, None),
        Err(e) => (EnvFilter::new("info"), Some(e.to_string())),
    };
    if !wanted.is_some_and(|w| w.contains("cranelift")) {
        for quiet in QUIET_COMPILER {
            filter = filter.add_directive(quiet.parse().expect("a valid directive"));
        }
    }
    (filter, invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(wanted: Option<&str>) -> String {
        log_filter(wanted).0.to_string()
    }

    #[test]
    fn unset_or_empty_means_info_not_off() {
        for wanted in [None, Some(""), Some("  ")] {
            let filter = shown(wanted);
            assert!(filter.split(',').any(|d| d == "info"), "{filter}");
        }
    }

    #[test]
    fn debug_leaves_the_compiler_at_info_unless_named() {
        let filter = shown(Some("debug"));
        assert!(filter.split(',').any(|d| d == "debug"), "{filter}");
        assert!(
            filter.contains("wasmtime_internal_cranelift=info"),
            "{filter}"
        );
        assert!(filter.contains("cranelift_codegen=info"), "{filter}");

        let filter = shown(Some("info,wasmtime_internal_cranelift=debug"));
        assert!(
            filter.contains("wasmtime_internal_cranelift=debug"),
            "{filter}"
        );
        assert!(
            !filter.contains("wasmtime_internal_cranelift=info"),
            "{filter}"
        );
    }

    #[test]
    fn an_invalid_filter_is_reported_and_logs_at_info() {
        let (filter, invalid) = log_filter(Some("enclave_broker=loud"));
        assert!(invalid.is_some());
        assert!(filter.to_string().split(',').any(|d| d == "info"));
        assert!(log_filter(Some("debug")).1.is_none());
    }
}
