//! Embedded mode: jobs run in the broker's own process, in the same sandbox an executor
//! uses. The default when no executors are configured, so one binary is a working
//! system for development and small installs. The isolation of a script is the same
//! (a fresh wasm instance with the same limits); what is lost is the process boundary
//! between scripts and the broker's secrets, which separate executors add.
//!
//! Jobs are admitted and run by the executor's own job API ([`Jobs`]), the one an
//! executor's gRPC service uses, so an embedded job behaves as a remote one does.

use std::sync::Arc;

use enclave_executor::jobs::DEFAULT_MAX_CODE_BYTES;
use enclave_executor::{Jobs, Refusal, Sandbox, SandboxConfig, SandboxError};
use enclave_proto::v1::Job;
use futures::StreamExt;

use crate::pool::{Backend, BoxFuture, StartError, StartedJob};

#[derive(Debug, thiserror::Error)]
#[error("starting the embedded sandbox: {0}")]
pub struct EmbeddedError(#[from] SandboxError);

pub struct Embedded {
    jobs: Jobs,
}

impl Embedded {
    /// Builds the sandbox (a couple of seconds: it compiles the guest).
    pub async fn new(config: SandboxConfig) -> Result<Embedded, EmbeddedError> {
        Ok(Embedded::with_sandbox(Arc::new(
            Sandbox::new(config).await?,
        )))
    }

    pub fn with_sandbox(sandbox: Arc<Sandbox>) -> Embedded {
        Embedded {
            jobs: Jobs::new(sandbox, DEFAULT_MAX_CODE_BYTES, None),
        }
    }

    fn start_job(&self, job: Job, span: &tracing::Span) -> Result<StartedJob, StartError> {
        let running = self
            .jobs
            .start(job, tracing::info_span!(parent: span, "run"))
            .map_err(|refusal| match refusal {
                Refusal::Invalid(m) => StartError::Invalid(m),
                Refusal::Busy(m) => StartError::Busy(m),
                Refusal::Draining(m) => StartError::Unavailable(m),
            })?;
        let tool_results = running.tool_results();
        let events = running.map(|item| {
            item.map_err(|fault| format!("the sandbox refused a tool result: {fault}"))
        });
        Ok(StartedJob::new(
            "embedded".into(),
            Box::pin(events),
            tool_results,
            (),
        ))
    }
}

impl Backend for Embedded {
    fn start(
        &self,
        job: Job,
        span: &tracing::Span,
    ) -> BoxFuture<'_, Result<StartedJob, StartError>> {
        let started = self.start_job(job, span);
        Box::pin(async move { started })
    }

    fn describe(&self) -> String {
        format!("embedded sandbox ({} jobs at once)", self.jobs.max_jobs())
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.jobs.metrics().register(registry);
    }
}
