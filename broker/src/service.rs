//! The public `enclave.v1.Broker` gRPC service: handshake, then sealed requests.
//!
//! Every request after the handshake is a sealed record: the service finds the
//! session, opens the record (which checks the replay window, epoch and associated
//! data), runs the job through [`Broker`], and seals each answer for that request.
//! Nothing of a job — code, events, results, even the broker's own failures — leaves
//! unsealed; the only plaintext statuses are about the envelope (unknown session,
//! malformed or replayed record, caps).

use std::pin::Pin;
use std::sync::Arc;

use enclave_proto::v1::{
    ClientAuth, ClientAuthAccepted, ClientHello, CloseSessionResponse, ErrorCode, ExecuteRequest,
    ExecuteResult, HandshakeRequest, HandshakeResponse, JobError, ListToolsRequest,
    ListToolsResponse, RecordKind, SealedRecord, ServerHello, StreamEvent, SubmitToolResult,
    SubmitToolResultResponse, Suite, ToolInfo, ToolResultEvent,
    broker_server::{Broker as BrokerRpc, BrokerServer},
    execute_result, handshake_request, handshake_response, stream_event,
};
use enclave_proto::{OpenedRequest, ServerConfig as HandshakeConfig, StreamSealer};
use futures::Stream;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument as _, info_span};

use crate::client_tools::{ClientTools, Routes, Undeliverable};
use crate::jobs::{Broker, JobEvent, Output};
use crate::metrics::Refused;
use crate::session::{Session, SessionStore, Source};

#[derive(Clone)]
pub struct BrokerService {
    broker: Arc<Broker>,
    sessions: Arc<SessionStore>,
    handshake: Arc<HandshakeConfig>,
    /// Where client tool answers go: the jobs waiting for them.
    routes: Arc<Routes>,
}

/// How long `ExecuteWithTools` waits for its first record: a call that sends nothing
/// holds a stream and a task, and has no job yet to bound it.
const FIRST_RECORD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl BrokerService {
    pub fn new(
        broker: Arc<Broker>,
        sessions: Arc<SessionStore>,
        handshake: HandshakeConfig,
    ) -> BrokerService {
        BrokerService {
            broker,
            sessions,
            handshake: Arc::new(handshake),
            routes: Arc::default(),
        }
    }

    pub fn sessions(&self) -> &Arc<SessionStore> {
        &self.sessions
    }

    /// The job runner, for the legacy HTTP API: it runs jobs for clients that do not
    /// speak protocol v1, so it cannot go through the sealed-record methods.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// The handshake settings, whose identity key's fingerprint `GET /v1/info` and the
    /// playground publish.
    pub fn handshake_config(&self) -> &HandshakeConfig {
        &self.handshake
    }

    pub fn into_server(self) -> BrokerServer<BrokerService> {
        BrokerServer::new(self)
            .max_decoding_message_size(enclave_server::grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(enclave_server::grpc::MAX_MESSAGE_BYTES)
    }

    /// Finds the session and opens the record as `kind`. Only a record that opens
    /// counts as use of the session (a garbage record naming it keeps nothing alive).
    fn open(
        &self,
        record: &SealedRecord,
        kind: RecordKind,
    ) -> Result<(Arc<Session>, OpenedRequest), Status> {
        let metrics = self.broker.metrics();
        let session = self.sessions.get(&record.session_id).inspect_err(|_| {
            metrics.record_refused(Refused::UnknownSession);
        })?;
        let opened = session
            .protocol()
            .open_request(record, kind)
            .inspect_err(|e| metrics.record_refused(Refused::of(e)))?;
        session.touch();
        Ok((session, opened))
    }

    fn client_hello(
        &self,
        hello: &ClientHello,
        source: Option<Source>,
    ) -> Result<ServerHello, Status> {
        // Before any key work: refusing is cheap, accepting is not.
        self.sessions.admit(source)?;
        let (session, server_hello) = enclave_proto::handshake::accept(&self.handshake, hello)?;
        self.sessions.insert(session, source)?;
        Ok(server_hello)
    }

    fn client_auth(&self, auth: &ClientAuth) -> Result<(), Status> {
        let session = self.sessions.get(&auth.session_id)?;
        let client = session
            .protocol()
            .verify_client_auth(&self.handshake, auth)?;
        self.sessions.authenticated(&session);
        tracing::info!(%client, "client authenticated");
        Ok(())
    }

    fn open_job(
        &self,
        record: &SealedRecord,
        kind: RecordKind,
    ) -> Result<(Arc<Session>, u64, enclave_proto::v1::Job, Vec<ToolInfo>), Status> {
        let (session, opened) = self.open(record, kind)?;
        let request = ExecuteRequest::decode(opened.plaintext.as_slice()).map_err(|e| {
            Status::invalid_argument(format!("the sealed ExecuteRequest does not decode: {e}"))
        })?;
        let job = request
            .job
            .ok_or_else(|| Status::invalid_argument("the ExecuteRequest carries no job"))?;
        Ok((session, opened.seq, job, request.client_tools))
    }

    /// Opens a client's answer to one of its tools' calls, for the stream `stream_seq`
    /// when it came on that stream's own call.
    fn open_tool_result(
        &self,
        record: &SealedRecord,
    ) -> Result<(Arc<Session>, u64, SubmitToolResult), Status> {
        let (session, opened) = self.open(record, RecordKind::ToolResult)?;
        let submitted = SubmitToolResult::decode(opened.plaintext.as_slice()).map_err(|e| {
            Status::invalid_argument(format!("the sealed SubmitToolResult does not decode: {e}"))
        })?;
        if submitted.result.is_none() {
            return Err(Status::invalid_argument(
                "the SubmitToolResult carries no result",
            ));
        }
        Ok((session, opened.seq, submitted))
    }

    fn deliver(&self, session_id: &[u8], submitted: SubmitToolResult) -> Result<(), Status> {
        let stream_seq = submitted.stream_seq;
        let result = submitted.result.unwrap_or_default();
        self.routes
            .deliver(session_id, stream_seq, result)
            .map_err(|e| match e {
                Undeliverable::NoJob => Status::not_found(format!(
                    "no job of this session waits for tool answers at stream_seq {stream_seq} (it ended, or declared no client tools)"
                )),
                Undeliverable::Full => Status::resource_exhausted(
                    "the job has not taken the client's earlier tool answers yet; retry",
                ),
            })
    }

    /// Starts a streamed job whose answers go to `out`; with client tools, their answers
    /// are routed to it until it ends.
    fn start_stream(
        &self,
        session: Arc<Session>,
        seq: u64,
        job: enclave_proto::v1::Job,
        client_tools: Vec<ToolInfo>,
        span: tracing::Span,
    ) -> Result<mpsc::Receiver<Result<SealedRecord, Status>>, Status> {
        let slot = self.sessions.start_job(&session)?;
        let (out, out_rx) = mpsc::channel(64);
        let broker = self.broker.clone();
        let routes = self.routes.clone();
        tokio::spawn(
            async move {
                let (client, _route) = if client_tools.is_empty() {
                    (Ok(None), None)
                } else {
                    let (route, answers) = routes.open(session.id(), seq);
                    let tools = ClientTools::new(client_tools, broker.tools(), answers);
                    (tools.map(Some), Some(route))
                };
                match client {
                    Ok(client) => stream_job(&broker, &session, seq, job, client, out).await,
                    Err(message) => refuse_stream(&session, seq, message, &out).await,
                }
                drop(slot);
            }
            .instrument(span),
        );
        Ok(out_rx)
    }
}

/// Where a request came from: the connection's peer (every listener of
/// [`enclave_server::listener`] attaches it), or tonic's own connection info.
fn source_of<T>(request: &Request<T>) -> Option<Source> {
    request
        .extensions()
        .get::<enclave_server::listener::PeerAddr>()
        .map(|peer| peer.0.ip())
        .or_else(|| request.remote_addr().map(|addr| addr.ip()))
        .map(Source::of)
}

type SealedStream = Pin<Box<dyn Stream<Item = Result<SealedRecord, Status>> + Send>>;

#[tonic::async_trait]
impl BrokerRpc for BrokerService {
    async fn handshake(
        &self,
        request: Request<HandshakeRequest>,
    ) -> Result<Response<HandshakeResponse>, Status> {
        let source = source_of(&request);
        let metrics = self.broker.metrics();
        let step = match request.into_inner().step {
            Some(handshake_request::Step::ClientHello(hello)) => {
                let suite = Suite::try_from(hello.suite).ok();
                let answered = self.client_hello(&hello, source);
                metrics.handshake(suite, answered.as_ref().map(|_| ()).map_err(Status::code));
                handshake_response::Step::ServerHello(answered?)
            }
            Some(handshake_request::Step::ClientAuth(auth)) => {
                let answered = self.client_auth(&auth);
                metrics.client_auth(answered.as_ref().map_err(Status::code).copied());
                answered?;
                handshake_response::Step::ClientAuthAccepted(ClientAuthAccepted {})
            }
            None => {
                return Err(Status::invalid_argument(
                    "the handshake request carries no step",
                ));
            }
        };
        Ok(Response::new(HandshakeResponse { step: Some(step) }))
    }

    async fn execute(
        &self,
        request: Request<SealedRecord>,
    ) -> Result<Response<SealedRecord>, Status> {
        let (session, seq, job, client_tools) =
            self.open_job(request.get_ref(), RecordKind::ExecuteRequest)?;
        if !client_tools.is_empty() {
            let refusal = ExecuteResult {
                outcome: Some(execute_result::Outcome::Error(JobError {
                    code: ErrorCode::InvalidJob as i32,
                    message: CLIENT_TOOLS_NEED_A_STREAM.into(),
                    ..Default::default()
                })),
                console: Vec::new(),
            };
            let sealed = session.protocol().channel().seal_reply(
                seq,
                RecordKind::ExecuteResult,
                0,
                &refusal.encode_to_vec(),
            )?;
            return Ok(Response::new(sealed));
        }
        let _slot = self.sessions.start_job(&session)?;
        let span = enclave_server::telemetry::job_span(request.metadata().as_ref());
        let (events_tx, mut events) = mpsc::channel(64);
        let collect = async move {
            let mut console = Vec::new();
            while let Some(event) = events.recv().await {
                if let JobEvent::Console(line) = event {
                    console.push(line);
                }
            }
            console
        };
        let run = self.broker.run_job(job, events_tx).instrument(span.clone());
        let (outcome, console) = tokio::join!(run, collect);
        let outcome = match outcome {
            Ok(final_event) => execute_result::Outcome::Final(final_event),
            Err(failure) => execute_result::Outcome::Error(failure.to_job_error()),
        };
        let mut result = ExecuteResult {
            outcome: Some(outcome),
            console,
        };
        // Console and result are each capped by the job's limits, but together they can
        // exceed what one sealed reply carries. The job has run: say so inside the
        // result rather than failing the call.
        let size = result.encoded_len();
        if size > enclave_proto::seal::MAX_PLAINTEXT_LEN {
            result = ExecuteResult {
                outcome: Some(execute_result::Outcome::Error(JobError {
                    code: ErrorCode::ResultTooLarge as i32,
                    message: format!(
                        "the job's console output and result together are {size} bytes, more than the {} a sealed reply carries; use ExecuteStream, which seals each event on its own",
                        enclave_proto::seal::MAX_PLAINTEXT_LEN
                    ),
                    ..Default::default()
                })),
                console: Vec::new(),
            };
        }
        let sealed = info_span!(parent: &span, "seal").in_scope(|| {
            session.protocol().channel().seal_reply(
                seq,
                RecordKind::ExecuteResult,
                0,
                &result.encode_to_vec(),
            )
        })?;
        Ok(Response::new(sealed))
    }

    type ExecuteStreamStream = SealedStream;

    async fn execute_stream(
        &self,
        request: Request<SealedRecord>,
    ) -> Result<Response<SealedStream>, Status> {
        let (session, seq, job, client_tools) =
            self.open_job(request.get_ref(), RecordKind::StreamRequest)?;
        let span = enclave_server::telemetry::job_span(request.metadata().as_ref());
        let out_rx = self.start_stream(session, seq, job, client_tools, span)?;
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    type ExecuteWithToolsStream = SealedStream;

    async fn execute_with_tools(
        &self,
        request: Request<Streaming<SealedRecord>>,
    ) -> Result<Response<SealedStream>, Status> {
        let span = enclave_server::telemetry::job_span(request.metadata().as_ref());
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(FIRST_RECORD_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(record))) => record,
            Ok(Ok(None)) => {
                return Err(Status::invalid_argument(
                    "ExecuteWithTools: the call ended before its STREAM_REQUEST record",
                ));
            }
            Ok(Err(status)) => return Err(status),
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "ExecuteWithTools: no STREAM_REQUEST record within {} s",
                    FIRST_RECORD_TIMEOUT.as_secs()
                )));
            }
        };
        let (session, seq, job, client_tools) = self.open_job(&first, RecordKind::StreamRequest)?;
        let mut out_rx = self.start_stream(session.clone(), seq, job, client_tools, span)?;
        // Answers come in on this call; the job's records go out on it. A bad answer
        // ends the call with its status (and so the job); the client closing its side
        // only means no more answers; the call going away (however quiet the job is:
        // it may be waiting for this very client) ends the job at once.
        let (merged, merged_rx) = mpsc::channel(1);
        let service = self.clone();
        tokio::spawn(async move {
            let mut answers_open = true;
            loop {
                tokio::select! {
                    // The job's records before answers: an answer that raced the job's
                    // end must not get ahead of its final record.
                    biased;
                    () = merged.closed() => return,
                    record = out_rx.recv() => match record {
                        Some(record) => if merged.send(record).await.is_err() { return },
                        None => return,
                    },
                    answer = inbound.message(), if answers_open => match answer {
                        Ok(Some(record)) => {
                            if let Err(status) = service.answer_on_stream(&session, seq, &record).await {
                                let _ = merged.send(Err(status)).await;
                                return;
                            }
                        }
                        Ok(None) | Err(_) => answers_open = false,
                    },
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(merged_rx))))
    }

    async fn submit_tool_result(
        &self,
        request: Request<SealedRecord>,
    ) -> Result<Response<SealedRecord>, Status> {
        let record = request.into_inner();
        let (session, seq, submitted) = self.open_tool_result(&record)?;
        self.deliver(session.id(), submitted)?;
        let sealed = session.protocol().channel().seal_reply(
            seq,
            RecordKind::ToolResultAck,
            0,
            &SubmitToolResultResponse {}.encode_to_vec(),
        )?;
        Ok(Response::new(sealed))
    }

    async fn close_session(
        &self,
        request: Request<SealedRecord>,
    ) -> Result<Response<SealedRecord>, Status> {
        let record = request.into_inner();
        let (session, opened) = self.open(&record, RecordKind::CloseRequest)?;
        let sealed = session.protocol().channel().seal_reply(
            opened.seq,
            RecordKind::CloseResult,
            0,
            &CloseSessionResponse {}.encode_to_vec(),
        )?;
        self.sessions.remove(&record.session_id);
        Ok(Response::new(sealed))
    }

    async fn rekey(
        &self,
        request: Request<SealedRecord>,
    ) -> Result<Response<SealedRecord>, Status> {
        let (session, opened) = self.open(request.get_ref(), RecordKind::RekeyRequest)?;
        let sealed = session.protocol().channel().seal_rekey_result(opened.seq)?;
        Ok(Response::new(sealed))
    }

    async fn list_tools(
        &self,
        request: Request<SealedRecord>,
    ) -> Result<Response<SealedRecord>, Status> {
        let (session, opened) = self.open(request.get_ref(), RecordKind::ListToolsRequest)?;
        ListToolsRequest::decode(opened.plaintext.as_slice()).map_err(|e| {
            Status::invalid_argument(format!("the sealed ListToolsRequest does not decode: {e}"))
        })?;
        let tools = self
            .broker
            .tools()
            .catalogue()
            .into_iter()
            .map(|(name, spec)| ToolInfo {
                name,
                description: spec.description,
                input_schema_json: spec.input_schema.to_string(),
            })
            .collect();
        let sealed = session.protocol().channel().seal_reply(
            opened.seq,
            RecordKind::ListToolsResult,
            0,
            &ListToolsResponse { tools }.encode_to_vec(),
        )?;
        Ok(Response::new(sealed))
    }
}

const CLIENT_TOOLS_NEED_A_STREAM: &str = "client tools need a streamed job (ExecuteWithTools, or ExecuteStream with SubmitToolResult): their calls reach the client as stream events";

impl BrokerService {
    /// One record in on an `ExecuteWithTools` call: an answer for this very job.
    /// A record that is not an answer for this job ends the call. An answer the job
    /// cannot take any more (it has ended) is dropped, as §10.6 says: the client may
    /// answer while the final record is on its way. One the job has not room for yet
    /// waits: the call's own backpressure.
    async fn answer_on_stream(
        &self,
        session: &Session,
        seq: u64,
        record: &SealedRecord,
    ) -> Result<(), Status> {
        if record.session_id != session.id() {
            return Err(Status::invalid_argument(
                "ExecuteWithTools: an answer names another session",
            ));
        }
        let (_, _, submitted) = self.open_tool_result(record)?;
        if submitted.stream_seq != seq {
            return Err(Status::invalid_argument(format!(
                "ExecuteWithTools: an answer for stream_seq {}, on the call of stream_seq {seq}",
                submitted.stream_seq
            )));
        }
        let call_id = submitted.result.as_ref().map_or(0, |r| r.call_id);
        if !self
            .routes
            .deliver_waiting(session.id(), seq, submitted.result.unwrap_or_default())
            .await
        {
            tracing::debug!(call_id, "dropping a client tool answer: its job has ended");
        }
        Ok(())
    }
}

/// Ends a stream before its job started: one sealed STREAM_FINAL with the job error.
async fn refuse_stream(
    session: &Session,
    seq: u64,
    message: String,
    out: &mpsc::Sender<Result<SealedRecord, Status>>,
) {
    let event = StreamEvent {
        event: Some(stream_event::Event::Error(JobError {
            code: ErrorCode::InvalidJob as i32,
            message,
            ..Default::default()
        })),
    };
    let sealed = StreamSealer::new(seq)
        .seal(session.protocol().channel(), &event)
        .map_err(Status::from);
    let _ = out.send(sealed).await;
}

/// Runs one job and seals its events, in order, the last one final. Stops the job as
/// soon as the client goes away.
async fn stream_job(
    broker: &Broker,
    session: &Session,
    seq: u64,
    job: enclave_proto::v1::Job,
    client_tools: Option<ClientTools>,
    out: mpsc::Sender<Result<SealedRecord, Status>>,
) {
    let mut sealer = StreamSealer::new(seq);
    let mut seal = |event: stream_event::Event| {
        let _sealing = info_span!("seal").entered();
        let mut protocol = session.protocol();
        sealer
            .seal(protocol.channel(), &StreamEvent { event: Some(event) })
            .map_err(Status::from)
    };
    broker
        .run_job_with_client_tools(job, client_tools, &out, |output| seal(stream_event(output)))
        .await;
}

fn stream_event(output: Output) -> stream_event::Event {
    let event = match output {
        Output::Event(event) => event,
        Output::End(Ok(final_event)) => return stream_event::Event::Final(final_event),
        Output::End(Err(failure)) => return stream_event::Event::Error(failure.to_job_error()),
    };
    match event {
        JobEvent::Console(line) => stream_event::Event::Console(line),
        JobEvent::ToolCall(call) => stream_event::Event::ToolCall(call),
        JobEvent::ToolResult {
            call_id,
            name,
            error,
        } => stream_event::Event::ToolResult(ToolResultEvent {
            call_id,
            is_error: error.is_some(),
            name,
        }),
    }
}
