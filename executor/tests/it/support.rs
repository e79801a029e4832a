//! A real executor server on a loopback port, shared by the tests of this binary, and a
//! tonic client to drive it.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use enclave_executor::server::{ExecutorService, ServerConfig};
use enclave_executor::{Sandbox, SandboxConfig};
use enclave_proto::v1::{
    ConsoleEvent, ErrorCode, FinalEvent, Job, JobError, Limits, RunEvent, RunRequest,
    SecurityLevel, ToolCall, ToolResult, executor_client::ExecutorClient, final_event,
    run_event::Event, run_request::Msg,
};
use enclave_server::listener::ConnectionPolicy;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Starts a server on its own thread and runtime (so it outlives any one test's
/// runtime) and returns its address.
pub fn start_server(sandbox: SandboxConfig, server: ServerConfig) -> SocketAddr {
    start_server_with(sandbox, server, ConnectionPolicy::default())
}

/// [`start_server`] under a connection policy of the test's own.
pub fn start_server_with(
    sandbox: SandboxConfig,
    server: ServerConfig,
    policy: ConnectionPolicy,
) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let sandbox = Arc::new(Sandbox::new(sandbox).await.expect("sandbox starts"));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let service = ExecutorService::new(sandbox, server);
            enclave_executor::server::serve_with(
                listener,
                service,
                policy,
                None,
                std::future::pending(),
            )
            .await
            .unwrap();
        });
    });
    rx.recv().expect("server started")
}

/// The shared server with default settings.
pub fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| start_server(SandboxConfig::default(), ServerConfig::default()))
}

pub async fn client_for(addr: SocketAddr) -> ExecutorClient<Channel> {
    ExecutorClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

pub async fn client() -> ExecutorClient<Channel> {
    client_for(server()).await
}

/// Opens a job stream to the executor at `addr`, sending what `requests` carries; the
/// stream must be accepted.
pub async fn open_run(
    addr: SocketAddr,
    requests: mpsc::Receiver<RunRequest>,
) -> tonic::Streaming<RunEvent> {
    client_for(addr)
        .await
        .run(ReceiverStream::new(requests))
        .await
        .expect("the executor accepts the stream")
        .into_inner()
}

pub fn job(code: &str) -> Job {
    Job {
        code: code.into(),
        level: SecurityLevel::Standard as i32,
        ..Default::default()
    }
}

pub fn job_with(code: &str, level: SecurityLevel, limits: Limits) -> Job {
    Job {
        code: code.into(),
        level: level as i32,
        limits: Some(limits),
        ..Default::default()
    }
}

/// Everything a job produced.
#[derive(Debug, Default)]
pub struct Transcript {
    pub events: Vec<RunEvent>,
}

impl Transcript {
    pub fn final_event(&self) -> &FinalEvent {
        match self.events.last().and_then(|e| e.event.as_ref()) {
            Some(Event::Final(f)) => f,
            other => panic!(
                "last event is not final: {other:?}\nall: {:#?}",
                self.events
            ),
        }
    }

    /// The result as JSON, panicking (with the error) if the job failed.
    pub fn result(&self) -> serde_json::Value {
        match &self.final_event().outcome {
            Some(final_event::Outcome::ResultJson(json)) => {
                serde_json::from_str(json).expect("result is JSON")
            }
            other => panic!("job failed: {other:?}"),
        }
    }

    pub fn error(&self) -> &JobError {
        match &self.final_event().outcome {
            Some(final_event::Outcome::Error(e)) => e,
            other => panic!("job succeeded: {other:?}"),
        }
    }

    pub fn code(&self) -> ErrorCode {
        self.error().code()
    }

    pub fn console(&self) -> Vec<&ConsoleEvent> {
        self.events
            .iter()
            .filter_map(|e| match &e.event {
                Some(Event::Console(c)) => Some(c),
                _ => None,
            })
            .collect()
    }

    pub fn tool_calls(&self) -> Vec<&ToolCall> {
        self.events
            .iter()
            .filter_map(|e| match &e.event {
                Some(Event::ToolCall(c)) => Some(c),
                _ => None,
            })
            .collect()
    }
}

/// Answers tool calls: each call gets the answer the closure gives.
pub type ToolHandler = Box<dyn FnMut(&ToolCall) -> Option<ToolResult> + Send>;

/// Runs a job, answering tool calls with `echo` semantics (the result is the args).
pub async fn run(job: Job) -> Transcript {
    run_with(&mut client().await, job, Box::new(|call| Some(echo(call))))
        .await
        .expect("stream ok")
}

pub fn echo(call: &ToolCall) -> ToolResult {
    ToolResult {
        call_id: call.call_id,
        outcome: Some(enclave_proto::v1::tool_result::Outcome::ResultJson(
            call.args_json.clone(),
        )),
    }
}

/// Runs a job on `client`; tool calls are answered by `tools` as they come (`None`:
/// leave it unanswered).
pub async fn run_with(
    client: &mut ExecutorClient<Channel>,
    job: Job,
    mut tools: ToolHandler,
) -> Result<Transcript, tonic::Status> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(RunRequest {
        msg: Some(Msg::Job(job)),
    })
    .await
    .unwrap();
    let mut stream = client.run(ReceiverStream::new(rx)).await?.into_inner();
    let mut transcript = Transcript::default();
    while let Some(event) = stream.message().await? {
        if let Some(Event::ToolCall(call)) = &event.event
            && let Some(result) = tools(call)
        {
            let _ = tx
                .send(RunRequest {
                    msg: Some(Msg::ToolResult(result)),
                })
                .await;
        }
        transcript.events.push(event);
    }
    Ok(transcript)
}

/// A codec that sends and receives raw bytes, to put malformed messages on the wire.
#[derive(Default, Clone)]
pub struct RawCodec;

pub struct RawEncoder;
pub struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let bytes = bytes::Buf::chunk(src).to_vec();
        bytes::Buf::advance(src, bytes.len());
        Ok(Some(bytes))
    }
}

/// Opens a Run stream whose only message is `payload`, verbatim.
pub async fn raw_run(payload: Vec<u8>) -> Result<Vec<Vec<u8>>, tonic::Status> {
    let channel = Channel::from_shared(format!("http://{}", server()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/enclave.v1.Executor/Run");
    let request = tonic::Request::new(tokio_stream::iter(vec![payload]));
    let mut stream = grpc.streaming(request, path, RawCodec).await?.into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await? {
        out.push(m);
    }
    Ok(out)
}
