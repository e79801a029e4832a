//! The `enclave` command line: argument parsing, the subcommands, and how events
//! are shown. Typed errors here; `main.rs` alone turns them into a message and a status.

pub mod args;
mod keygen;
mod render;
mod run;
mod tools;

use std::process::ExitCode;

use enclave_client::ClientError;

/// The job ran and returned a value.
pub const EXIT_OK: u8 = 0;
/// The job failed: script error, limit, or the broker could not run it.
pub const EXIT_JOB_FAILED: u8 = 1;
/// Usage, configuration, connection or protocol errors: the job's fate is unknown or it
/// never started. Also clap's status for usage errors.
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Key(#[from] enclave_proto::Error),
    /// The I/O error is part of the message rather than a `source`, so the one-line
    /// report in main.rs does not repeat it.
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    #[error("{0}")]
    Usage(String),
}

pub async fn dispatch(command: args::Command) -> Result<ExitCode, CliError> {
    match command {
        args::Command::Run(run) => run::run(run).await,
        args::Command::Tools(tools) => tools::tools(tools).await,
        args::Command::Keygen(keygen) => keygen::keygen(&keygen),
    }
}
