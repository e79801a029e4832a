//! The `enclave.v1.Executor` gRPC service: one bidirectional stream per job.
//!
//! Admission is explicit: past `max_concurrent_jobs` a new job is refused with
//! RESOURCE_EXHAUSTED at once instead of queueing without bound (the broker retries
//! elsewhere). A job's slot is taken when its job arrives, not when its stream opens;
//! streams that have not sent their job yet are bounded on their own and get
//! `first_message_timeout` to do it. Draining (SIGTERM) refuses new jobs with
//! UNAVAILABLE (health answers NOT_SERVING meanwhile), lets running ones finish within a
//! grace period, then cancels what is left, and only then closes its connections. Jobs
//! themselves are admitted and run by [`crate::jobs`], as in the broker's embedded mode.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use enclave_proto::v1::{
    Job, RunEvent, RunRequest,
    executor_server::{Executor, ExecutorServer},
    run_request::Msg,
};
use enclave_server::grpc;
use enclave_server::listener::{self, ConnectionPolicy, Connections, HttpVersion};
use futures::Stream;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::jobs::{Jobs, RunningJob, ToolResults};
use crate::sandbox::Sandbox;

/// A broker sends a stream's job at once, so streams wait for it for milliseconds; this
/// many covers any burst a broker makes, and bounds what idle streams can hold.
pub const DEFAULT_MAX_WAITING_STREAMS: usize = 1024;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Largest script source accepted.
    pub max_code_bytes: usize,
    /// How long a new stream may take to send its job.
    pub first_message_timeout: Duration,
    /// Streams that may be waiting for their job at once; more are refused with
    /// RESOURCE_EXHAUSTED. They hold no job slot, only a little memory each.
    pub max_waiting_streams: usize,
    /// How long running jobs may take to finish once draining starts.
    pub drain_grace: Duration,
    /// Threads that run jobs (crate::jobs); `None`: one per core.
    pub job_threads: Option<std::num::NonZeroUsize>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_code_bytes: crate::jobs::DEFAULT_MAX_CODE_BYTES,
            first_message_timeout: Duration::from_secs(10),
            max_waiting_streams: DEFAULT_MAX_WAITING_STREAMS,
            drain_grace: Duration::from_secs(30),
            job_threads: None,
        }
    }
}

/// The Executor service; cheap to clone.
#[derive(Clone)]
pub struct ExecutorService {
    jobs: Arc<Jobs>,
    config: ServerConfig,
    /// Streams opened whose job has not arrived yet. They take no job slot, so idle
    /// streams cannot pin the slots, and they are bounded on their own.
    opening: Arc<Semaphore>,
}

impl ExecutorService {
    pub fn new(sandbox: Arc<Sandbox>, config: ServerConfig) -> ExecutorService {
        let jobs = Arc::new(Jobs::new(
            sandbox,
            config.max_code_bytes,
            config.job_threads,
        ));
        let opening = Arc::new(Semaphore::new(config.max_waiting_streams));
        ExecutorService {
            jobs,
            config,
            opening,
        }
    }

    /// Jobs running now.
    pub fn running_jobs(&self) -> usize {
        self.jobs.running()
    }

    /// Registers what the jobs count (`enclave_executor_*`).
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.jobs.metrics().register(registry);
    }

    /// The connections of this service's port under `policy`, changed as a job stream
    /// needs: a request body lasts as long as its job, so it has no time limit of its
    /// own; and one connection (a broker sends all its jobs over one) may open a stream
    /// for every job slot, every waiting stream and a few health checks, so that the
    /// executor's own limits, with their RESOURCE_EXHAUSTED, are what refuse work.
    pub fn connections(&self, policy: ConnectionPolicy) -> Arc<Connections> {
        let streams = self.jobs.max_jobs() + self.config.max_waiting_streams + 16;
        Connections::new(ConnectionPolicy {
            request_body_timeout: None,
            max_streams_per_connection: u32::try_from(streams).unwrap_or(u32::MAX),
            ..policy
        })
    }

    async fn first_job(&self, inbound: &mut Streaming<RunRequest>) -> Result<Job, Status> {
        let _opening = self.opening.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{} streams are already waiting to send their job; retry later or elsewhere",
                self.config.max_waiting_streams
            ))
        })?;
        let first = tokio::time::timeout(self.config.first_message_timeout, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no job arrived within {} ms of opening the stream",
                    self.config.first_message_timeout.as_millis()
                ))
            })?
            .map_err(malformed)?;
        match first.and_then(|r| r.msg) {
            Some(Msg::Job(job)) => Ok(job),
            Some(Msg::ToolResult(_)) => Err(Status::invalid_argument(
                "the first message must be a job, not a tool result",
            )),
            Some(Msg::Cancel(_)) => Err(Status::invalid_argument(
                "the first message must be a job, not a cancel",
            )),
            None => Err(Status::invalid_argument("the stream carried no job")),
        }
    }
}

/// tonic reports undecodable messages as INTERNAL; they are the caller's fault.
fn malformed(status: Status) -> Status {
    if status.code() == tonic::Code::Internal && status.message().contains("decode") {
        Status::invalid_argument(format!("malformed request: {}", status.message()))
    } else {
        status
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<RunEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Executor for ExecutorService {
    type RunStream = EventStream;

    async fn run(
        &self,
        request: Request<Streaming<RunRequest>>,
    ) -> Result<Response<EventStream>, Status> {
        // A child of the broker's job span when the broker sends its `traceparent`.
        let span = enclave_server::telemetry::job_span(request.metadata().as_ref());
        let mut inbound = request.into_inner();
        let job = self.first_job(&mut inbound).await?;
        let running = self.jobs.start(job, span)?;
        let (fault_tx, fault) = oneshot::channel();
        let finished = CancellationToken::new();
        // A task of its own, so tool results are taken off the connection as they come
        // whatever the response side is doing: an unread request stream would hold the
        // connection's flow-control window, which every job on it shares.
        tokio::spawn(read_requests(
            inbound,
            running.tool_results(),
            fault_tx,
            running.cancel_token(),
            finished.clone(),
        ));
        Ok(Response::new(Box::pin(JobStream {
            job: running,
            fault: Some(fault),
            seq: 0,
            done: false,
            _finished: finished.drop_guard(),
        })))
    }
}

/// Forwards tool results to the job; a cancel request cancels it, a protocol error
/// ends the stream with that error. Holds no handle on the response stream, which
/// must end with the job whether or not the caller has closed its side.
async fn read_requests(
    mut inbound: Streaming<RunRequest>,
    results: ToolResults,
    fault: oneshot::Sender<Status>,
    cancel: CancellationToken,
    finished: CancellationToken,
) {
    let status = loop {
        let message = tokio::select! {
            _ = finished.cancelled() => return,
            message = inbound.message() => message,
        };
        match message {
            Ok(Some(RunRequest {
                msg: Some(Msg::ToolResult(result)),
            })) => match results.send(result) {
                Ok(()) => continue,
                Err(overflow) => break Status::invalid_argument(overflow.0),
            },
            Ok(Some(RunRequest {
                msg: Some(Msg::Cancel(_)),
            })) => {
                cancel.cancel();
                // Keep `results` open until the job is over: were it dropped now, a job
                // parked on a tool call could end as "the caller went away" first.
                finished.cancelled().await;
                return;
            }
            // Half-close: the caller has nothing more to send, which is fine for a job
            // that calls no tools; a pending tool call will see its channel close.
            Ok(None) => return,
            Ok(Some(RunRequest {
                msg: Some(Msg::Job(_)),
            })) => {
                break Status::invalid_argument(
                    "a stream carries one job; open a new stream for another",
                );
            }
            Ok(Some(RunRequest { msg: None })) => {
                break Status::invalid_argument("empty request message");
            }
            Err(status) if status.code() == tonic::Code::Cancelled => {
                cancel.cancel();
                finished.cancelled().await;
                return;
            }
            Err(status) => break malformed(status),
        }
    };
    let _ = fault.send(status);
    // As for a cancel: the fault, not a closed tool channel, must be what ends the job.
    finished.cancelled().await;
}

/// A job's events, numbered, as the response stream; a protocol fault of the caller
/// ends it with that fault instead. Dropping it (the caller went away) stops the job.
struct JobStream {
    job: RunningJob,
    /// `None` once the reader has finished, with or without a fault.
    fault: Option<oneshot::Receiver<Status>>,
    seq: u64,
    done: bool,
    /// Lets the request reader go once the response is over.
    _finished: tokio_util::sync::DropGuard,
}

impl Stream for JobStream {
    type Item = Result<RunEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(fault) = self.fault.as_mut()
            && let Poll::Ready(fault) = Pin::new(fault).poll(cx)
        {
            // A oneshot may be polled only until it is ready.
            self.fault = None;
            if let Ok(status) = fault {
                self.done = true;
                return Poll::Ready(Some(Err(status)));
            }
        }
        let item = match std::task::ready!(Pin::new(&mut self.job).poll_next(cx)) {
            Some(Ok(event)) => {
                self.done = matches!(event, enclave_proto::v1::run_event::Event::Final(_));
                let seq = self.seq;
                self.seq += 1;
                Ok(RunEvent {
                    seq,
                    event: Some(event),
                })
            }
            Some(Err(fault)) => {
                self.done = true;
                Err(Status::invalid_argument(fault.0))
            }
            None => {
                self.done = true;
                return Poll::Ready(None);
            }
        };
        Poll::Ready(Some(item))
    }
}

/// Serves the executor on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    service: ExecutorService,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(
        listener,
        service,
        ConnectionPolicy::default(),
        None,
        shutdown,
    )
    .await
}

/// [`serve`] under `policy` (the `--max-connections`, timeout and TLS-handshake flags) as
/// a job stream needs it ([`ExecutorService::connections`]), over TLS when `tls` is given
/// (`--tls-cert` / `--tls-key`, see [`enclave_server::tls`]), served by
/// [`enclave_server::listener`] as the broker's listeners are.
pub async fn serve_with(
    listener: TcpListener,
    service: ExecutorService,
    policy: ConnectionPolicy,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let connections = service.connections(policy);
    serve_on(listener, service, connections, tls, shutdown).await
}

/// [`serve_with`] under connections made by [`ExecutorService::connections`], which the
/// caller keeps (for their metrics).
pub async fn serve_on(
    listener: TcpListener,
    service: ExecutorService,
    connections: Arc<Connections>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (health, routes) = grpc::routes(
        ExecutorServer::new(service.clone())
            .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(grpc::MAX_MESSAGE_BYTES),
    )
    .await;
    let drain = async move {
        shutdown.await;
        tracing::info!(
            running = service.running_jobs(),
            "draining: refusing new jobs"
        );
        service.jobs.drain();
        health
            .set_not_serving::<ExecutorServer<ExecutorService>>()
            .await;
        let grace = service.config.drain_grace;
        let jobs = service.jobs.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            tracing::warn!("drain grace period over: cancelling remaining jobs");
            jobs.cancel_all();
        });
        // Still answering while jobs run: health says NOT_SERVING and new jobs get
        // UNAVAILABLE at once, so brokers see a drain, not a dead executor, and retry
        // elsewhere without waiting for a connect timeout. Connections close after.
        service.jobs.until_idle().await;
        tracing::info!("drained: closing connections");
    };
    listener::serve(
        listener,
        connections,
        HttpVersion::Http2,
        tls,
        routes,
        drain,
    )
    .await
}
