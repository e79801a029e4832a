//! Running one job end to end: start it on a backend, pump its events to the caller,
//! answer its tool calls, and return its final event.
//!
//! Tool calls run concurrently as they arrive (a script may `Promise.all` them) and
//! their results go back in whatever order they finish. The executor enforces the job's
//! limits; the broker adds only a hard deadline (the job's time limit plus a margin) so
//! that an executor that stops answering can never hang a client.

use std::sync::Arc;
use std::time::Duration;

use enclave_proto::v1::{
    ConsoleEvent, ErrorCode, FinalEvent, Job, JobError, ToolCall, ToolResult, final_event,
    run_event::Event, tool_result::Outcome as ToolOutcome,
};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{Config, JobsConfig};
use crate::embedded::EmbeddedError;
use crate::pool::{self, Backend, StartError, StartedJob};
use crate::secrets::JobSecrets;
use crate::tools::{ToolError, Tools, ToolsError};

/// No job waits longer than this for its executor, whatever timeout it asks for (an
/// executor refuses timeouts above its ceiling anyway; this bounds the arithmetic).
const MAX_JOB_TIMEOUT: Duration = Duration::from_secs(3600);

/// What the caller sees of a job while it runs, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    Console(ConsoleEvent),
    /// The script called a tool. Arguments as the script passed them: secret handles,
    /// never secret values.
    ToolCall(ToolCall),
    /// A tool call finished. Deliberately without the result: it may carry data the
    /// script may use but the caller must not see unless the script returns or logs it.
    ToolResult {
        call_id: u64,
        name: String,
        /// The message the script's promise was rejected with; `None` on success.
        error: Option<String>,
    },
}

/// Why the broker could not run a job to its end. (A script's own error is not one of
/// these: it is a [`FinalEvent`] with an error outcome.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The executor refused the job itself (limits above its ceiling, code too large,
    /// input not JSON).
    InvalidJob,
    /// Every executor tried was full.
    Busy,
    /// No executor could be reached.
    Unavailable,
    /// The executor died or broke its stream mid-job.
    ExecutorLost,
    /// The executor did not finish within the job's time limit plus the margin.
    Deadline,
    /// The caller stopped listening.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JobFailure {
    pub kind: FailureKind,
    pub message: String,
}

impl JobFailure {
    fn new(kind: FailureKind, message: impl Into<String>) -> JobFailure {
        JobFailure {
            kind,
            message: message.into(),
        }
    }

    /// The job error code for this failure: what a client receives, sealed, in place
    /// of a final event.
    pub fn code(&self) -> ErrorCode {
        match self.kind {
            FailureKind::ExecutorLost => ErrorCode::ExecutorLost,
            FailureKind::Deadline => ErrorCode::Timeout,
            FailureKind::Cancelled => ErrorCode::Cancelled,
            FailureKind::InvalidJob => ErrorCode::InvalidJob,
            FailureKind::Busy | FailureKind::Unavailable => ErrorCode::Unavailable,
        }
    }

    /// As the `JobError` a client receives in place of a final event.
    pub fn to_job_error(&self) -> JobError {
        JobError {
            code: self.code() as i32,
            message: self.message.clone(),
            ..Default::default()
        }
    }

    /// The gRPC status code, for a service that answers failures out of band.
    pub fn grpc_code(&self) -> tonic::Code {
        match self.kind {
            FailureKind::InvalidJob => tonic::Code::InvalidArgument,
            FailureKind::Busy => tonic::Code::ResourceExhausted,
            FailureKind::Unavailable | FailureKind::ExecutorLost => tonic::Code::Unavailable,
            FailureKind::Deadline => tonic::Code::DeadlineExceeded,
            FailureKind::Cancelled => tonic::Code::Cancelled,
        }
    }
}

impl From<StartError> for JobFailure {
    fn from(error: StartError) -> JobFailure {
        match error {
            StartError::Invalid(m) => JobFailure::new(FailureKind::InvalidJob, m),
            StartError::Busy(m) => JobFailure::new(FailureKind::Busy, m),
            StartError::Unavailable(m) => JobFailure::new(FailureKind::Unavailable, m),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Tools(#[from] ToolsError),
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
}

/// The broker's core: tools plus where jobs run. Cheap to share (`Arc<Broker>`); every
/// method takes `&self`.
pub struct Broker {
    tools: Arc<Tools>,
    backend: Arc<dyn Backend>,
    jobs: JobsConfig,
}

impl Broker {
    /// Tools and backend as `config` describes them. Reads secrets, builds the HTTP
    /// client, and starts the embedded sandbox or the executor pool's background tasks
    /// (so it must run inside a tokio runtime).
    pub async fn from_config(config: &Config) -> Result<Broker, BuildError> {
        let tools = Tools::from_config(&config.tools)?;
        let backend = pool::from_config(&config.executors).await?;
        tracing::info!(
            backend = %backend.describe(),
            tools = %tools.names().collect::<Vec<_>>().join(", "),
            "broker core ready"
        );
        Ok(Broker::new(tools, backend, config.jobs.clone()))
    }

    pub fn new(tools: Tools, backend: Arc<dyn Backend>, jobs: JobsConfig) -> Broker {
        Broker {
            tools: Arc::new(tools),
            backend,
            jobs,
        }
    }

    pub fn tools(&self) -> &Tools {
        &self.tools
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Runs a job for a streaming caller: each event goes through `emit` into `out`,
    /// in order, as it happens. Returns how the job ended, or `None` as soon as `out`
    /// closes (the caller went away): the job is then dropped, which stops it. The
    /// caller seals and sends the last event itself.
    pub async fn run_job_into<T>(
        &self,
        job: Job,
        out: &mpsc::Sender<T>,
        mut emit: impl FnMut(JobEvent) -> T,
    ) -> Option<Result<FinalEvent, JobFailure>> {
        let (events_tx, mut events) = mpsc::channel(64);
        let run = self.run_job(job, events_tx);
        tokio::pin!(run);
        let outcome = loop {
            tokio::select! {
                biased;
                _ = out.closed() => return None,
                Some(event) = events.recv() => {
                    if out.send(emit(event)).await.is_err() {
                        return None;
                    }
                }
                outcome = &mut run => break outcome,
            }
        };
        // Events emitted just before the end still go out, before the last one.
        while let Ok(event) = events.try_recv() {
            if out.send(emit(event)).await.is_err() {
                return None;
            }
        }
        Some(outcome)
    }

    /// Runs `job`, sending its console output and tool activity to `events` as they
    /// happen, and returns its final event (the script's value or its error). Always
    /// returns, at the latest at the job's time limit plus the deadline margin.
    /// Dropping the future, or the receiver of `events`, cancels the job.
    pub async fn run_job(
        &self,
        job: Job,
        events: mpsc::Sender<JobEvent>,
    ) -> Result<FinalEvent, JobFailure> {
        let timeout = job_timeout(&job);
        let started_at = Instant::now();
        let mut started = self.backend.start(job).await.inspect_err(|e| {
            tracing::warn!(error = %e, "job not started");
        })?;
        let accepted = Instant::now();
        let job_deadline = accepted + timeout;
        let hard_deadline = job_deadline + self.jobs.deadline_margin();
        tracing::debug!(
            executor = %started.executor,
            start_ms = accepted.duration_since(started_at).as_millis() as u64,
            "job started"
        );
        let secrets = self.tools.job_secrets();
        let run = self.pump(&mut started, &secrets, job_deadline, &events);
        let outcome = match tokio::time::timeout_at(hard_deadline, run).await {
            Ok(outcome) => outcome,
            Err(_) => Err(JobFailure::new(
                FailureKind::Deadline,
                format!(
                    "the executor did not finish the job within its {} ms time limit (and {} ms of margin); the job was abandoned",
                    timeout.as_millis(),
                    self.jobs.deadline_margin().as_millis()
                ),
            )),
        };
        let elapsed_ms = accepted.elapsed().as_millis() as u64;
        match &outcome {
            Ok(final_event) => {
                let code = match &final_event.outcome {
                    Some(final_event::Outcome::Error(e)) => e.code().as_str_name(),
                    _ => "OK",
                };
                tracing::info!(executor = %started.executor, outcome = code, elapsed_ms, "job finished");
            }
            Err(failure) => {
                tracing::warn!(executor = %started.executor, kind = ?failure.kind, error = %failure, elapsed_ms, "job failed");
            }
        }
        outcome
    }

    async fn pump(
        &self,
        started: &mut StartedJob,
        secrets: &JobSecrets,
        job_deadline: Instant,
        events: &mpsc::Sender<JobEvent>,
    ) -> Result<FinalEvent, JobFailure> {
        let emit = |event: JobEvent| async move {
            events.send(event).await.map_err(|_| {
                JobFailure::new(FailureKind::Cancelled, "the caller stopped listening")
            })
        };
        let mut pending = FuturesUnordered::new();
        loop {
            tokio::select! {
                Some((call_id, name, outcome)) = pending.next(), if !pending.is_empty() => {
                    let outcome: Result<String, ToolError> = outcome;
                    let error = outcome.as_ref().err().map(|e| e.message.clone());
                    tracing::debug!(tool = %name, call_id, ok = error.is_none(), "tool call finished");
                    emit(JobEvent::ToolResult { call_id, name, error }).await?;
                    let outcome = match outcome {
                        Ok(json) => ToolOutcome::ResultJson(json),
                        Err(e) => ToolOutcome::Error(e.message),
                    };
                    // A closed channel means the executor is gone; its stream says so next.
                    let _ = started.tool_results.send(ToolResult { call_id, outcome: Some(outcome) }).await;
                }
                item = started.events.next() => match item {
                    Some(Ok(Event::Console(mut console))) => {
                        if let std::borrow::Cow::Owned(clean) = secrets.scrub(&console.text) {
                            console.text = clean;
                        }
                        emit(JobEvent::Console(console)).await?;
                    }
                    Some(Ok(Event::ToolCall(mut call))) => {
                        // The event, the log line and the tool see handles, not values.
                        call.name = secrets.scrub(&call.name).into_owned();
                        call.args_json = secrets.scrub_json_text(&call.args_json).into_owned();
                        tracing::debug!(tool = %call.name, call_id = call.call_id, "tool call");
                        emit(JobEvent::ToolCall(call.clone())).await?;
                        let tools = &self.tools;
                        pending.push(async move {
                            let outcome = tools.call(secrets, &call.name, &call.args_json, job_deadline).await;
                            (call.call_id, call.name, outcome)
                        });
                    }
                    Some(Ok(Event::Final(final_event))) => return Ok(scrub_final(secrets, final_event)),
                    Some(Err(reason)) => {
                        return Err(JobFailure::new(FailureKind::ExecutorLost, format!("the executor was lost: {reason}")));
                    }
                    None => {
                        return Err(JobFailure::new(
                            FailureKind::ExecutorLost,
                            "the executor was lost: its stream ended without a final event",
                        ));
                    }
                },
            }
        }
    }
}

/// The job's own time limit: its override, else its level's preset.
fn job_timeout(job: &Job) -> Duration {
    let preset = enclave_executor::Limits::preset(job.level()).timeout;
    job.limits
        .as_ref()
        .and_then(|l| l.timeout_ms)
        .map_or(preset, Duration::from_millis)
        .min(MAX_JOB_TIMEOUT)
}

/// Defence in depth: a script never holds a secret value, but if one reached its result
/// or error anyway (an API that transformed and echoed it), it does not leave here.
fn scrub_final(secrets: &JobSecrets, mut final_event: FinalEvent) -> FinalEvent {
    match &mut final_event.outcome {
        Some(final_event::Outcome::ResultJson(json)) => {
            if let std::borrow::Cow::Owned(clean) = secrets.scrub_json_text(json) {
                *json = clean;
            }
        }
        Some(final_event::Outcome::Error(error)) => {
            for text in [&mut error.name, &mut error.message, &mut error.stack] {
                *text = secrets.scrub(text).into_owned();
            }
        }
        None => {}
    }
    final_event
}
