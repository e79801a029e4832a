//! The one way a job enters a sandbox: admission (the job checked, its limits resolved
//! against the ceilings, a slot taken) and running (events out, tool results in). The
//! gRPC service ([`crate::server`]) and the broker's embedded mode both go through
//! [`Jobs::start`], so a job behaves the same wherever it runs.
//!
//! Every job runs in a task of its own, on threads of its own: a runtime for jobs alone,
//! apart from the one that serves requests. A job takes its turn every epoch tick with
//! the other jobs, but a request never waits behind them: the threads that read and
//! answer requests are the operating system's to schedule, and a thread woken by a
//! request preempts a busy one. So one session's busy jobs cannot delay another
//! session's short job at each step it takes through the server.
//!
//! Its time limit is the sandbox's, on this
//! process's clock: a consumer that stops reading its events stalls only that job,
//! which then ends at its deadline like any other, and its slot comes back.
//!
//! Nothing here waits on a bounded queue in both directions at once. Events go out
//! through a small channel the sandbox waits on (within its deadline); tool results come
//! in through [`ToolResults::send`], which never waits: a job can have at most
//! `max_tool_calls` calls answered, so a queue of that many cannot fill unless the
//! driver answers calls that were never made, which is refused.

use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use enclave_proto::v1::{
    ErrorCode, FinalEvent, Job, JobError, ToolResult, final_event, run_event::Event,
};
use futures::Stream;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument as _;

use crate::host::CallerFault;
use crate::limits::Limits;
use crate::metrics::JobMetrics;
use crate::sandbox::{JobSpec, Sandbox};

/// Events a job may have queued before its consumer takes them; past it the sandbox
/// waits (within the job's deadline). Small: the consumer forwards them at once.
const EVENT_BUFFER: usize = 64;

/// Largest script source accepted by default, in bytes.
pub const DEFAULT_MAX_CODE_BYTES: usize = 1 << 20;

/// Why a job was not started. Each maps to the status a caller can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The job itself is unacceptable (code too large, input not JSON, limits above
    /// the ceilings): running it elsewhere would not help.
    #[error("{0}")]
    Invalid(String),
    /// Every slot is taken: retry later or elsewhere.
    #[error("{0}")]
    Busy(String),
    /// Shutting down: retry elsewhere.
    #[error("{0}")]
    Draining(String),
}

impl From<Refusal> for tonic::Status {
    fn from(refusal: Refusal) -> tonic::Status {
        match refusal {
            Refusal::Invalid(m) => tonic::Status::invalid_argument(m),
            Refusal::Busy(m) => tonic::Status::resource_exhausted(m),
            Refusal::Draining(m) => tonic::Status::unavailable(m),
        }
    }
}

/// Admits and runs jobs on one sandbox. Cheap to share (`Arc`).
pub struct Jobs {
    sandbox: Arc<Sandbox>,
    /// The jobs' own threads; shut down in the background when dropped (a runtime may
    /// not be dropped where blocking is not allowed, such as inside another runtime).
    runtime: Option<tokio::runtime::Runtime>,
    max_code_bytes: usize,
    /// One per pooled instance: past it the sandbox could not instantiate anyway.
    slots: Arc<Semaphore>,
    draining: AtomicBool,
    /// Cancelled to end every running job (the end of a drain's grace period).
    stop: CancellationToken,
    metrics: JobMetrics,
}

impl Jobs {
    /// Jobs on `sandbox`, run by `threads` threads of their own (one per core when
    /// `None`). Should the threads not start, jobs run on the caller's runtime instead.
    pub fn new(
        sandbox: Arc<Sandbox>,
        max_code_bytes: usize,
        threads: Option<NonZeroUsize>,
    ) -> Jobs {
        let slots = Arc::new(Semaphore::new(
            sandbox.config().max_concurrent_jobs as usize,
        ));
        let threads = threads
            .or_else(|| std::thread::available_parallelism().ok())
            .map_or(1, NonZeroUsize::get);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("enclave-jobs")
            .enable_all()
            .build()
            .inspect_err(
                |e| tracing::error!(error = %e, "no threads for jobs; they share the server's"),
            )
            .ok();
        Jobs {
            sandbox,
            runtime,
            max_code_bytes,
            slots,
            draining: AtomicBool::new(false),
            stop: CancellationToken::new(),
            metrics: JobMetrics::default(),
        }
    }

    /// What these jobs count, to register with a server's metrics.
    pub fn metrics(&self) -> &JobMetrics {
        &self.metrics
    }

    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    pub fn max_jobs(&self) -> usize {
        self.sandbox.config().max_concurrent_jobs as usize
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        self.max_jobs() - self.slots.available_permits()
    }

    /// From now on new jobs are refused as [`Refusal::Draining`]; running ones go on.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.metrics.draining();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Once no job runs. Takes every slot to find out: call it only after [`Jobs::drain`].
    pub async fn until_idle(&self) {
        let slots = u32::try_from(self.max_jobs()).unwrap_or(u32::MAX);
        // Closed never: the semaphore lives as long as `self`.
        let _all = self.slots.acquire_many(slots).await;
    }

    /// Ends every running job now, each with CANCELLED.
    pub fn cancel_all(&self) {
        self.stop.cancel();
    }

    /// Checks `job`, takes a slot and starts it in a task of its own, in `span`. The job
    /// runs until it ends or the returned [`RunningJob`] is dropped.
    pub fn start(&self, job: Job, span: tracing::Span) -> Result<RunningJob, Refusal> {
        let started = self.admit(job, span);
        if let Err(refusal) = &started {
            self.metrics.refused(refusal);
        }
        started
    }

    fn admit(&self, job: Job, span: tracing::Span) -> Result<RunningJob, Refusal> {
        if self.is_draining() {
            return Err(Refusal::Draining(
                "the executor is shutting down; retry on another".into(),
            ));
        }
        let spec = self.spec(job)?;
        let permit = self.slots.clone().try_acquire_owned().map_err(|_| {
            Refusal::Busy(format!(
                "the executor is running its maximum of {} jobs; retry later or elsewhere",
                self.max_jobs()
            ))
        })?;
        let (events_tx, events) = mpsc::channel(EVENT_BUFFER);
        let (results_tx, results) = ToolResults::channel(spec.limits.max_tool_calls);
        let (outcome_tx, outcome) = oneshot::channel();
        let cancel = self.stop.child_token();
        let sandbox = self.sandbox.clone();
        let stopped = cancel.clone();
        let running = self.metrics.started();
        let turn = self.sandbox.turn();
        let job = async move {
            let ran = tokio::select! {
                biased;
                // Dropping the run stops the instance at once, even mid-computation.
                _ = stopped.cancelled() => None,
                ran = sandbox.run_in_turn(spec, events_tx, results, turn) => Some(ran),
            };
            // The instance is gone: its slot is free even if nobody reads the outcome.
            drop(permit);
            let outcome = match ran {
                Some(ran) => {
                    running.finished(ran.outcome.as_ref().ok(), Some(&ran.cost));
                    ran.outcome
                }
                None => {
                    let cancelled = cancelled();
                    running.finished(Some(&cancelled), None);
                    Ok(cancelled)
                }
            };
            let _ = outcome_tx.send(outcome);
        }
        .instrument(span);
        let task = match &self.runtime {
            Some(runtime) => runtime.spawn(job),
            None => tokio::spawn(job),
        };
        Ok(RunningJob {
            events,
            outcome: Some(outcome),
            results: results_tx,
            cancel,
            _task: AbortOnDropHandle::new(task),
        })
    }

    fn spec(&self, job: Job) -> Result<JobSpec, Refusal> {
        if job.code.len() > self.max_code_bytes {
            return Err(Refusal::Invalid(format!(
                "the code is {} bytes; this executor accepts at most {}",
                job.code.len(),
                self.max_code_bytes
            )));
        }
        if !job.input_json.is_empty()
            && serde_json::from_str::<serde_json::Value>(&job.input_json).is_err()
        {
            return Err(Refusal::Invalid("input_json is not valid JSON".into()));
        }
        let limits: Limits = self
            .sandbox
            .limits_for(&job)
            .map_err(|e| Refusal::Invalid(e.to_string()))?;
        Ok(JobSpec {
            code: job.code,
            input_json: job.input_json,
            limits,
        })
    }
}

impl Drop for Jobs {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn cancelled() -> FinalEvent {
    FinalEvent {
        outcome: Some(final_event::Outcome::Error(JobError {
            code: ErrorCode::Cancelled as i32,
            message: "the job was cancelled".into(),
            ..Default::default()
        })),
        stats: None,
    }
}

/// A started job: a stream of its events (console output and tool calls, in order,
/// then exactly one [`Event::Final`]), and the way to answer its tool calls. Dropping
/// it stops the job.
pub struct RunningJob {
    events: mpsc::Receiver<Event>,
    outcome: Option<oneshot::Receiver<Result<FinalEvent, CallerFault>>>,
    results: ToolResults,
    cancel: CancellationToken,
    _task: AbortOnDropHandle<()>,
}

impl RunningJob {
    /// Where tool results go. Clone it freely; it never waits.
    pub fn tool_results(&self) -> ToolResults {
        self.results.clone()
    }

    /// Ends the job with CANCELLED (its final event still comes out of the stream).
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

impl Stream for RunningJob {
    /// An event, or the caller's protocol fault (a result for a call that is not
    /// pending), which ends the stream.
    type Item = Result<Event, CallerFault>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // The sandbox drops its sender when the job ends, so every event it sent comes
        // out before the outcome.
        if let Some(event) = std::task::ready!(self.events.poll_recv(cx)) {
            return Poll::Ready(Some(Ok(event)));
        }
        let Some(outcome) = self.outcome.as_mut() else {
            return Poll::Ready(None);
        };
        let outcome = std::task::ready!(Pin::new(outcome).poll(cx));
        self.outcome = None;
        Poll::Ready(Some(match outcome {
            Ok(Ok(final_event)) => Ok(Event::Final(final_event)),
            Ok(Err(fault)) => Err(fault),
            // The task cannot end without sending unless it panicked.
            Err(_) => Ok(Event::Final(FinalEvent {
                outcome: Some(final_event::Outcome::Error(JobError {
                    code: ErrorCode::Internal as i32,
                    message: "the job stopped without an outcome".into(),
                    ..Default::default()
                })),
                stats: None,
            })),
        }))
    }
}

/// Answers to a job's tool calls, in any order.
#[derive(Clone)]
pub struct ToolResults(mpsc::Sender<ToolResult>);

impl ToolResults {
    /// A queue for a job that may make `max_tool_calls` calls, and its receiving end:
    /// the same never-waiting sender whoever drives the job.
    pub fn channel(max_tool_calls: u32) -> (ToolResults, mpsc::Receiver<ToolResult>) {
        let (tx, rx) = mpsc::channel(max_tool_calls.max(1) as usize);
        (ToolResults(tx), rx)
    }

    /// Queues a result without waiting. A job that is over takes no more results (they
    /// are dropped); a full queue means more results than the job could have calls.
    pub fn send(&self, result: ToolResult) -> Result<(), CallerFault> {
        match self.0.try_send(result) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Full(result)) => Err(CallerFault(format!(
                "tool result for call id {}: more results than the job may make tool calls",
                result.call_id
            ))),
        }
    }

    /// Whether the job is over (it takes no more results).
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}
