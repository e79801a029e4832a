//! Embedded mode: jobs run in the broker's own process, in the same sandbox an executor
//! uses. The default when no executors are configured, so one binary is a working
//! system for development and small installs. The isolation of a script is the same
//! (a fresh wasm instance with the same limits); what is lost is the process boundary
//! between scripts and the broker's secrets, which separate executors add.

use std::sync::Arc;

use enclave_executor::server::ServerConfig;
use enclave_executor::{JobSpec, Sandbox, SandboxConfig, SandboxError};
use enclave_proto::v1::{Job, ToolResult, run_event::Event};
use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::pool::{Backend, BoxFuture, StartError, StartedJob};

/// Events a job may have queued before the runner takes them; the sandbox waits (within
/// the job's deadline) when it is full.
const EVENT_BUFFER: usize = 64;
const TOOL_RESULT_BUFFER: usize = 64;

#[derive(Debug, thiserror::Error)]
#[error("starting the embedded sandbox: {0}")]
pub struct EmbeddedError(#[from] SandboxError);

pub struct Embedded {
    sandbox: Arc<Sandbox>,
    /// One per pooled instance: past it the sandbox could not instantiate anyway, so a
    /// job is refused as busy, as a full executor would refuse it.
    slots: Arc<Semaphore>,
    /// The same admission rules an executor applies.
    admission: ServerConfig,
}

impl Embedded {
    /// Builds the sandbox (a couple of seconds: it compiles the guest).
    pub async fn new(config: SandboxConfig) -> Result<Embedded, EmbeddedError> {
        Ok(Embedded::with_sandbox(Arc::new(
            Sandbox::new(config).await?,
        )))
    }

    pub fn with_sandbox(sandbox: Arc<Sandbox>) -> Embedded {
        let slots = Arc::new(Semaphore::new(
            sandbox.config().max_concurrent_jobs as usize,
        ));
        Embedded {
            sandbox,
            slots,
            admission: ServerConfig::default(),
        }
    }

    fn spec(&self, job: Job) -> Result<JobSpec, StartError> {
        if job.code.len() > self.admission.max_code_bytes {
            return Err(StartError::Invalid(format!(
                "the code is {} bytes; at most {} are accepted",
                job.code.len(),
                self.admission.max_code_bytes
            )));
        }
        if !job.input_json.is_empty()
            && serde_json::from_str::<serde_json::Value>(&job.input_json).is_err()
        {
            return Err(StartError::Invalid("input_json is not valid JSON".into()));
        }
        let limits = self
            .sandbox
            .limits_for(&job)
            .map_err(|e| StartError::Invalid(e.to_string()))?;
        Ok(JobSpec {
            code: job.code,
            input_json: job.input_json,
            limits,
        })
    }

    fn start_job(&self, job: Job) -> Result<StartedJob, StartError> {
        let permit = self.slots.clone().try_acquire_owned().map_err(|_| {
            StartError::Busy(format!(
                "the embedded sandbox is running its maximum of {} jobs",
                self.sandbox.config().max_concurrent_jobs
            ))
        })?;
        let spec = self.spec(job)?;
        let (events_tx, events_rx) = mpsc::channel(EVENT_BUFFER);
        let (results_tx, results_rx) = mpsc::channel::<ToolResult>(TOOL_RESULT_BUFFER);
        let (final_tx, final_rx) = oneshot::channel();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let sandbox = self.sandbox.clone();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                // Dropping `run` stops the instance at once, even mid-computation.
                _ = stopped.cancelled() => {}
                outcome = sandbox.run(spec, events_tx, results_rx) => {
                    let _ = final_tx.send(outcome);
                }
            }
        });
        // The sandbox drops its event sender when the job ends, so every event it sent
        // comes out before the final one.
        let final_event = futures::stream::once(async move {
            match final_rx.await {
                Ok(Ok(final_event)) => Ok(Event::Final(final_event)),
                Ok(Err(fault)) => Err(format!("the sandbox refused a tool result: {fault}")),
                Err(_) => Err("the embedded job stopped without an outcome".to_string()),
            }
        });
        let events = ReceiverStream::new(events_rx).map(Ok).chain(final_event);
        Ok(StartedJob::new(
            "embedded".into(),
            Box::pin(events),
            results_tx,
            stop.drop_guard(),
        ))
    }
}

impl Backend for Embedded {
    fn start(&self, job: Job) -> BoxFuture<'_, Result<StartedJob, StartError>> {
        Box::pin(async move { self.start_job(job) })
    }

    fn describe(&self) -> String {
        format!(
            "embedded sandbox ({} jobs at once)",
            self.sandbox.config().max_concurrent_jobs
        )
    }
}
