//! Running one job end to end: start it on a backend, pump its events to the caller,
//! answer its tool calls, and return its final event.
//!
//! Tool calls run concurrently as they arrive (a script may `Promise.all` them) and
//! their results go back in whatever order they finish. The executor enforces the job's
//! limits; the broker adds only a hard deadline (the job's time limit plus a margin) so
//! that an executor that stops answering can never hang a client, and a bound on what
//! it holds for a client that stops reading (see [`Broker::run_job_into`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use enclave_executor::Limits;
use enclave_proto::v1::{
    ConsoleEvent, ErrorCode, FinalEvent, Job, JobError, ToolCall, ToolResult, final_event,
    run_event::Event, tool_result::Outcome as ToolOutcome,
};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::client_tools::{self, ClientTools};
use crate::config::{Config, JobsConfig};
use crate::embedded::EmbeddedError;
use crate::metrics::BrokerMetrics;
use crate::pool::{self, Backend, StartError, StartedJob};
use crate::secrets::JobSecrets;
use crate::tools::{ToolError, ToolJob, Tools, ToolsError};

/// No job waits longer than this for its executor, whatever timeout it asks for (an
/// executor refuses timeouts above its ceiling anyway; this bounds the arithmetic).
const MAX_JOB_TIMEOUT: Duration = Duration::from_secs(3600);
/// Outputs in flight between a job and its caller's own queue (the caller's channel is
/// bounded too; the byte bound of [`JobsConfig::output_buffer_bytes`] is what holds).
const EVENT_BUFFER: usize = 64;

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
    /// The caller stopped reading the job's events (see [`Broker::run_job_into`]).
    OutputStalled,
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
            FailureKind::OutputStalled => ErrorCode::OutputStalled,
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
    metrics: BrokerMetrics,
}

impl Broker {
    /// Tools and backend as `config` describes them. Reads secrets, builds the HTTP
    /// client, and starts the embedded sandbox or the executor pool's background tasks
    /// (so it must run inside a tokio runtime).
    pub async fn from_config(config: &Config) -> Result<Broker, BuildError> {
        let mut tools = Tools::from_config(&config.tools)?;
        tools.add_services(&config.tool_services)?;
        tools.add_mcp_servers(&config.mcp)?;
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
            metrics: BrokerMetrics::default(),
        }
    }

    /// What the broker counts, to register with its metrics.
    pub fn metrics(&self) -> &BrokerMetrics {
        &self.metrics
    }

    pub fn tools(&self) -> &Tools {
        &self.tools
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Runs `job`, sending its console output and tool activity to `events` as they
    /// happen, and returns its final event (the script's value or its error). Always
    /// returns, at the latest at the job's time limit plus the deadline margin (plus
    /// the stall bound if `events` is not read). Dropping the future, or the receiver
    /// of `events`, cancels the job.
    pub async fn run_job(
        &self,
        job: Job,
        events: mpsc::Sender<JobEvent>,
    ) -> Result<FinalEvent, JobFailure> {
        let (out, mut outputs) = mpsc::channel(EVENT_BUFFER);
        let run = async move { self.run_job_into(job, &out, |output| output).await };
        // Owns `outputs`: when it stops, the job sees its caller gone.
        let forward = async move {
            loop {
                let output = tokio::select! {
                    // Noticed even while the job is silent.
                    _ = events.closed() => break,
                    output = outputs.recv() => output,
                };
                let Some(output) = output else { break };
                match output {
                    Output::Event(event) => {
                        if events.send(event).await.is_err() {
                            break;
                        }
                    }
                    Output::End(outcome) => return outcome,
                }
            }
            Err(JobFailure::new(
                FailureKind::Cancelled,
                "the caller stopped listening",
            ))
        };
        tokio::join!(run, forward).1
    }

    /// Runs a job for a streaming caller: each event, and then how the job ended, goes
    /// through `emit` into `out`, in order, as it happens. Returns when the last one is
    /// in `out`, or as soon as `out` closes (the caller went away), which stops the job.
    ///
    /// The job's events are always taken from its executor as they come, whatever the
    /// caller does, up to `[jobs] output_buffer_bytes` waiting for `out`: a caller that
    /// stops reading stalls its own job only, never the executor's connection that
    /// other jobs share. Past that bound the job waits; if `out` takes nothing for
    /// `[jobs] output_stall_ms`, the job ends with OUTPUT_STALLED.
    pub async fn run_job_into<T>(
        &self,
        job: Job,
        out: &mpsc::Sender<T>,
        emit: impl FnMut(Output) -> T,
    ) {
        self.run_job_with_client_tools(job, None, out, emit).await
    }

    /// [`run_job_into`](Self::run_job_into) for a job whose client answers some of
    /// its tools itself: their calls wait for the client's answers instead of running
    /// here.
    pub async fn run_job_with_client_tools<T>(
        &self,
        job: Job,
        client_tools: Option<ClientTools>,
        out: &mpsc::Sender<T>,
        emit: impl FnMut(Output) -> T,
    ) {
        let mut outbox = Outbox::new(out, emit, &self.jobs, &self.metrics);
        let outcome = tokio::select! {
            biased;
            _ = out.closed() => return,
            outcome = self.run(job, client_tools, &mut outbox) => outcome,
        };
        let Some(outcome) = outcome else { return };
        outbox.push(Output::End(outcome));
        // The job is over and its executor free; what is left for the caller, the end
        // included, gets one more stall period of its own to be read.
        outbox.restart_clock();
        let _ = outbox.flush().await;
    }

    /// Starts the job and pumps it; `None` when the caller went away.
    async fn run<T>(
        &self,
        job: Job,
        mut client_tools: Option<ClientTools>,
        outbox: &mut Outbox<'_, T, impl FnMut(Output) -> T>,
    ) -> Option<Result<FinalEvent, JobFailure>> {
        let requested = Limits::requested(job.level(), job.limits.as_ref());
        let timeout = requested.timeout.min(MAX_JOB_TIMEOUT);
        let started_at = Instant::now();
        // The caller opened the job's span (with its trace context): the executor's
        // spans join it, and waiting for a slot on one is its own.
        let start = self.backend.start(job, &tracing::Span::current());
        let mut started = match start.instrument(tracing::info_span!("queue")).await {
            Ok(started) => started,
            Err(e) => {
                tracing::warn!(error = %e, "job not started");
                let failure = Err(e.into());
                self.metrics
                    .job_finished(Some(&failure), started_at.elapsed());
                return Some(failure);
            }
        };
        self.metrics.job_started();
        let accepted = Instant::now();
        let job_deadline = accepted + timeout;
        let hard_deadline = job_deadline + self.jobs.deadline_margin();
        tracing::debug!(
            executor = %started.executor,
            start_ms = accepted.duration_since(started_at).as_millis() as u64,
            "job started"
        );
        let secrets = self.tools.job_secrets();
        let job_id = job_id();
        let budget = Budget {
            max_tool_calls: requested.max_tool_calls,
        };
        let client_catalogue = client_tools
            .as_ref()
            .map(|c| c.catalogue().to_vec())
            .unwrap_or_default();
        let tool_job = ToolJob {
            id: &job_id,
            secrets: &secrets,
            deadline: job_deadline,
            client_tools: &client_catalogue,
        };
        let run = self.pump(
            &mut started,
            &tool_job,
            client_tools.as_mut(),
            &budget,
            outbox,
        );
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
                let tool_calls = final_event.stats.as_ref().map_or(0, |s| s.tool_calls);
                // Never the code, arguments, results or secrets: how it went, not what it did.
                tracing::info!(executor = %started.executor, outcome = code, elapsed_ms, tool_calls, "job finished");
            }
            Err(failure) if failure.kind == FailureKind::Cancelled => {
                tracing::info!(executor = %started.executor, elapsed_ms, "job cancelled: the caller went away");
                self.metrics.job_finished(None, started_at.elapsed());
                return None;
            }
            Err(failure) => {
                tracing::warn!(executor = %started.executor, kind = ?failure.kind, error = %failure, elapsed_ms, "job failed");
            }
        }
        self.metrics
            .job_finished(Some(&outcome), started_at.elapsed());
        Some(outcome)
    }

    /// Moves the job's events to the outbox and its tool calls to the tools, until its
    /// final event. Never waits on one direction while the other has work: tool results
    /// go to the executor without waiting ([`enclave_executor::ToolResults`]), events
    /// wait in the outbox, and the executor's stream is read whenever the outbox has
    /// room.
    async fn pump<T>(
        &self,
        started: &mut StartedJob,
        tool_job: &ToolJob<'_>,
        mut client_tools: Option<&mut ClientTools>,
        budget: &Budget,
        outbox: &mut Outbox<'_, T, impl FnMut(Output) -> T>,
    ) -> Result<FinalEvent, JobFailure> {
        let secrets = tool_job.secrets;
        let client_timeout = self.jobs.client_tool_timeout();
        let mut pending = FuturesUnordered::new();
        let mut tool_calls = 0u32;
        loop {
            let full = outbox.is_full();
            let stall_at = outbox.stall_deadline();
            tokio::select! {
                biased;
                sent = outbox.send_one(), if !outbox.is_empty() => sent?,
                // Answers to the client's own tools, handed to the calls waiting.
                () = async { client_tools.as_deref_mut().expect("checked").next_answer().await }, if client_tools.is_some() => {}
                // In a block, so the timer is made only when it is polled (when full).
                _ = async { tokio::time::sleep_until(stall_at).await }, if full => {
                    return Err(outbox.stalled());
                }
                Some((call_id, name, outcome)) = pending.next(), if !pending.is_empty() => {
                    let outcome: Result<String, ToolError> = outcome;
                    let error = outcome.as_ref().err().map(|e| e.message.clone());
                    tracing::debug!(tool = %name, call_id, ok = error.is_none(), "tool call finished");
                    outbox.push(Output::Event(JobEvent::ToolResult { call_id, name, error }));
                    let outcome = match outcome {
                        Ok(json) => ToolOutcome::ResultJson(json),
                        Err(e) => ToolOutcome::Error(e.message),
                    };
                    // Refused only for a call the executor never made, which the count
                    // below rules out; a job that is over takes no more results.
                    if let Err(e) = started.tool_results.send(ToolResult { call_id, outcome: Some(outcome) }) {
                        return Err(JobFailure::new(FailureKind::ExecutorLost, format!("the executor broke the protocol: {e}")));
                    }
                }
                item = started.events.next(), if !full => match item {
                    Some(Ok(Event::Console(mut console))) => {
                        scrub_in_place(secrets, &mut console.text);
                        outbox.push(Output::Event(JobEvent::Console(console)));
                    }
                    Some(Ok(Event::ToolCall(mut call))) => {
                        tool_calls += 1;
                        if tool_calls > budget.max_tool_calls {
                            return Err(JobFailure::new(
                                FailureKind::ExecutorLost,
                                format!("the executor broke the protocol: more tool calls than the job's limit of {}", budget.max_tool_calls),
                            ));
                        }
                        // The event, the log line and the tool see handles, not values.
                        scrub_in_place(secrets, &mut call.name);
                        if let std::borrow::Cow::Owned(clean) = secrets.scrub_json_text(&call.args_json) {
                            call.args_json = clean;
                        }
                        tracing::debug!(tool = %call.name, call_id = call.call_id, "tool call");
                        // The client's tool, if it is one: the event tells the client
                        // to answer (only when the arguments passed its schema; whatever
                        // the executor said), and the answer comes back from there.
                        let client_call = client_tools
                            .as_deref_mut()
                            .and_then(|c| c.start(&call.name, call.call_id, &call.args_json));
                        call.client_answers = matches!(client_call, Some(Ok(_)));
                        outbox.push(Output::Event(JobEvent::ToolCall(call.clone())));
                        let tools = &self.tools;
                        let metrics = &self.metrics;
                        let label = if client_call.is_some() { "client" } else { tools.metric_label(&call.name) };
                        pending.push(async move {
                            let began = Instant::now();
                            let outcome = match client_call {
                                None => tools.call(tool_job, &call.name, &call.args_json).await,
                                Some(Err(refused)) => Err(refused),
                                Some(Ok(answer)) => {
                                    let deadline = (began + client_timeout).min(tool_job.deadline);
                                    client_tools::answer(answer, began, deadline, tool_job.secrets).await
                                }
                            };
                            metrics.tool_call(label, &outcome, began.elapsed());
                            (call.call_id, call.name, outcome)
                        }.instrument(tracing::info_span!("tool call", tool = label)));
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

/// A fresh random id for a job, as tool services see it: 128 bits, hex.
fn job_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the broker holds a job to besides the executor's own enforcement.
struct Budget {
    max_tool_calls: u32,
}

/// What a streaming caller receives: the job's events, then how it ended.
#[derive(Debug)]
pub enum Output {
    Event(JobEvent),
    End(Result<FinalEvent, JobFailure>),
}

impl Output {
    /// Roughly what it costs to hold: its text, plus a little for the framing.
    fn size(&self) -> usize {
        const FRAMING: usize = 64;
        FRAMING
            + match self {
                Output::Event(JobEvent::Console(c)) => c.text.len(),
                Output::Event(JobEvent::ToolCall(c)) => c.name.len() + c.args_json.len(),
                Output::Event(JobEvent::ToolResult { name, error, .. }) => {
                    name.len() + error.as_ref().map_or(0, String::len)
                }
                Output::End(Ok(final_event)) => final_event.encoded_len(),
                Output::End(Err(failure)) => failure.message.len(),
            }
    }
}

/// A job's outputs on their way to a caller that may be slow: a queue that never makes
/// the job's pump wait, bounded by bytes, with the time of the caller's last read.
struct Outbox<'a, T, F> {
    out: &'a mpsc::Sender<T>,
    /// When the job arrived and who hears of its first event, until it has come.
    first_event: Option<(Instant, &'a BrokerMetrics)>,
    emit: F,
    queue: VecDeque<(T, usize)>,
    bytes: usize,
    max_bytes: usize,
    stall: Duration,
    last_taken: Instant,
}

impl<'a, T, F: FnMut(Output) -> T> Outbox<'a, T, F> {
    fn new(
        out: &'a mpsc::Sender<T>,
        emit: F,
        config: &JobsConfig,
        metrics: &'a BrokerMetrics,
    ) -> Self {
        Outbox {
            out,
            first_event: Some((Instant::now(), metrics)),
            emit,
            queue: VecDeque::new(),
            bytes: 0,
            max_bytes: usize::try_from(config.output_buffer_bytes).unwrap_or(usize::MAX),
            stall: config.output_stall(),
            last_taken: Instant::now(),
        }
    }

    fn push(&mut self, output: Output) {
        if let Some((arrived, metrics)) = self.first_event.take() {
            metrics.first_event(arrived.elapsed());
        }
        let size = output.size();
        if self.queue.is_empty() {
            // The stall clock runs from when something is waiting, not from the last read.
            self.last_taken = Instant::now();
        }
        self.bytes += size;
        self.queue.push_back(((self.emit)(output), size));
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    fn is_full(&self) -> bool {
        self.bytes >= self.max_bytes
    }

    fn restart_clock(&mut self) {
        self.last_taken = Instant::now();
    }

    fn stall_deadline(&self) -> Instant {
        self.last_taken + self.stall
    }

    fn stalled(&self) -> JobFailure {
        JobFailure::new(
            FailureKind::OutputStalled,
            format!(
                "the client read none of the job's events for {} ms while {} bytes of them were waiting; the job was stopped",
                self.stall.as_millis(),
                self.bytes
            ),
        )
    }

    /// Hands the oldest output to the caller once it has room.
    async fn send_one(&mut self) -> Result<(), JobFailure> {
        let permit =
            self.out.reserve().await.map_err(|_| {
                JobFailure::new(FailureKind::Cancelled, "the caller stopped listening")
            })?;
        if let Some((item, size)) = self.queue.pop_front() {
            permit.send(item);
            self.bytes -= size;
            self.last_taken = Instant::now();
        }
        Ok(())
    }

    /// Hands everything over, within the same stall bound.
    async fn flush(&mut self) -> Result<(), JobFailure> {
        while !self.is_empty() {
            let stall_at = self.stall_deadline();
            tokio::select! {
                sent = self.send_one() => sent?,
                _ = tokio::time::sleep_until(stall_at) => return Err(self.stalled()),
            }
        }
        Ok(())
    }
}

fn scrub_in_place(secrets: &JobSecrets, text: &mut String) {
    if let std::borrow::Cow::Owned(clean) = secrets.scrub(text) {
        *text = clean;
    }
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
