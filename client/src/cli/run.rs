//! `enclave run FILE`: one job over a fresh session, streamed.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use enclave_client::{Client, ClientBuilder, Job, Limits};
use futures::StreamExt;

use super::args::{ConnectionArgs, RunArgs};
use super::render::Renderer;
use super::{CliError, EXIT_USAGE};

pub async fn run(args: RunArgs) -> Result<ExitCode, CliError> {
    let job = job(&args)?;
    let client = builder(&args.connection).connect().await?;
    let mut renderer = Renderer::new(args.json, std::io::stdout(), std::io::stderr());
    let mut events = client.execute_streaming_job(job);
    while let Some(event) = events.next().await {
        renderer.event(&event?).map_err(|error| CliError::Io {
            what: "cannot write the job's output".into(),
            error,
        })?;
    }
    // Polite, not required: the broker would expire the session anyway.
    if let Err(e) = client.close().await {
        tracing::debug!("closing the session: {e}");
    }
    // The stream ends with a final or error event or with an error (returned above).
    Ok(ExitCode::from(renderer.exit_code().unwrap_or(EXIT_USAGE)))
}

pub fn builder(args: &ConnectionArgs) -> ClientBuilder {
    let mut builder = Client::builder(args.server.clone())
        .pin(args.pin)
        .curve(args.curve);
    if let Some(path) = &args.identity {
        builder = builder.identity_file(path);
    }
    if let Some(path) = &args.ca_file {
        builder = builder.ca_file(path);
    }
    builder
}

fn job(args: &RunArgs) -> Result<Job, CliError> {
    let input_json = match &args.input {
        Some(input) => {
            // Checked here: a typo should be a usage error, not a job failure.
            serde_json::from_str::<serde_json::Value>(input)
                .map_err(|e| CliError::Usage(format!("--input is not JSON: {e}")))?;
            input.clone()
        }
        None => String::new(),
    };
    Ok(Job {
        code: read_code(&args.file)?,
        level: args
            .level
            .map(|l| enclave_client::SecurityLevel::from(l) as i32)
            .unwrap_or_default(),
        limits: args.timeout_ms.map(|ms| Limits {
            timeout_ms: Some(ms),
            ..Default::default()
        }),
        input_json,
    })
}

fn read_code(path: &Path) -> Result<String, CliError> {
    let mut code = String::new();
    let result = if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut code).map(drop)
    } else {
        std::fs::read_to_string(path).map(|text| code = text)
    };
    result.map_err(|error| CliError::Io {
        what: format!("cannot read {}", path.display()),
        error,
    })?;
    Ok(code)
}
