//! `enclave`: run JavaScript on an enclave broker from a terminal or a script.
//!
//! Exit status: 0 the job returned a value, 1 the job failed (script error, limit, no
//! executor), 2 anything else (usage, connection, pin mismatch, truncated stream).

mod cli;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

fn main() -> ExitCode {
    let args = cli::args::Cli::parse();
    init_tracing(&args.log);
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(cli::EXIT_USAGE)
        }
    }
}

/// One thread: the CLI runs one job over one connection, and a second worker would
/// only be woken (and put back to sleep) for every message, which costs CPU per job
/// (`cargo bench -p enclave-broker -- deployed`; figures in docs/PERFORMANCE.md).
fn run(args: cli::args::Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(runtime.block_on(cli::dispatch(args.command))?)
}

/// Logs go to stderr so that stdout stays the job's output (and `--json` stays
/// parseable).
fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
