//! A broker written here, on enclave-proto's server side, that misbehaves on purpose:
//! truncated streams, records after the final one, replies bound to the wrong request,
//! and statuses that must (or must not) lead to a retry. The job's code names the
//! misbehaviour.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use enclave_client::{Client, ClientError, ConsoleLevel, Event, IdentityKey};
use enclave_proto::v1::broker_server::{Broker as BrokerRpc, BrokerServer};
use enclave_proto::v1::{
    self, ExecuteRequest, HandshakeRequest, HandshakeResponse, RecordKind, SealedRecord,
    StreamEvent, handshake_request, handshake_response, stream_event,
};
use enclave_proto::{ServerConfig, ServerSession, StreamSealer};
use futures::{Stream, StreamExt};
use prost::Message;
use serde_json::json;
use tonic::{Code, Request, Response, Status};

#[derive(Clone)]
struct Misbehaving {
    config: ServerConfig,
    session: Arc<Mutex<Option<ServerSession>>>,
    handshakes: Arc<AtomicU32>,
    calls: Arc<AtomicU32>,
}

type Records = Pin<Box<dyn Stream<Item = Result<SealedRecord, Status>> + Send>>;

fn console(text: &str) -> StreamEvent {
    StreamEvent {
        event: Some(stream_event::Event::Console(v1::ConsoleEvent {
            level: v1::ConsoleLevel::Log as i32,
            text: text.into(),
        })),
    }
}

fn final_value(json: &str) -> StreamEvent {
    StreamEvent {
        event: Some(stream_event::Event::Final(v1::FinalEvent {
            outcome: Some(v1::final_event::Outcome::ResultJson(json.into())),
            stats: Some(v1::JobStats::default()),
        })),
    }
}

impl Misbehaving {
    /// Opens the request; `Err` when the test wants a status instead, decided by the
    /// code *before* opening (a broker that refuses has not opened anything).
    fn open(&self, record: &SealedRecord, kind: RecordKind) -> Result<(u64, String), Status> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let mut guard = self.session.lock().unwrap();
        let session = guard
            .as_mut()
            .ok_or_else(|| Status::unauthenticated("unknown session"))?;
        let opened = session.open_request(record, kind)?;
        let job = ExecuteRequest::decode(opened.plaintext.as_slice())
            .unwrap()
            .job
            .unwrap();
        // Statuses a real broker gives before running anything. Only the first call of
        // a test misbehaves this way, so the retry can succeed.
        match job.code.as_str() {
            "unauthenticated once" if call == 0 => {
                *guard = None;
                Err(Status::unauthenticated("unknown or expired session"))
            }
            "aborted once" if call == 0 => Err(Status::aborted("replay")),
            "always unauthenticated" => {
                *guard = None;
                Err(Status::unauthenticated("unknown or expired session"))
            }
            "exhausted" => Err(Status::resource_exhausted("too many jobs")),
            _ => Ok((opened.seq, job.code)),
        }
    }
}

#[tonic::async_trait]
impl BrokerRpc for Misbehaving {
    async fn handshake(
        &self,
        request: Request<HandshakeRequest>,
    ) -> Result<Response<HandshakeResponse>, Status> {
        let Some(handshake_request::Step::ClientHello(hello)) = request.into_inner().step else {
            return Err(Status::invalid_argument("hello expected"));
        };
        let (session, server_hello) = enclave_proto::handshake::accept(&self.config, &hello)?;
        *self.session.lock().unwrap() = Some(session);
        self.handshakes.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(HandshakeResponse {
            step: Some(handshake_response::Step::ServerHello(server_hello)),
        }))
    }

    async fn execute(
        &self,
        request: Request<SealedRecord>,
    ) -> Result<Response<SealedRecord>, Status> {
        let (seq, code) = self.open(request.get_ref(), RecordKind::ExecuteRequest)?;
        let reply = v1::ExecuteResult {
            outcome: Some(v1::execute_result::Outcome::Final(v1::FinalEvent {
                outcome: Some(v1::final_event::Outcome::ResultJson(
                    json!(code).to_string(),
                )),
                stats: None,
            })),
            console: vec![],
        };
        let mut guard = self.session.lock().unwrap();
        let channel = guard.as_mut().unwrap().channel();
        let record = match code.as_str() {
            // A reply bound to another request: must fail authentication.
            "wrong request" => channel.seal_reply(
                seq + 1,
                RecordKind::ExecuteResult,
                0,
                &reply.encode_to_vec(),
            ),
            // Right request, wrong kind.
            "wrong kind" => {
                channel.seal_reply(seq, RecordKind::CloseResult, 0, &reply.encode_to_vec())
            }
            _ => channel.seal_reply(seq, RecordKind::ExecuteResult, 0, &reply.encode_to_vec()),
        }?;
        Ok(Response::new(record))
    }

    type ExecuteStreamStream = Records;

    async fn execute_stream(
        &self,
        request: Request<SealedRecord>,
    ) -> Result<Response<Records>, Status> {
        let (seq, code) = self.open(request.get_ref(), RecordKind::StreamRequest)?;
        let mut guard = self.session.lock().unwrap();
        let channel = guard.as_mut().unwrap().channel();
        let mut sealer = StreamSealer::new(seq);
        let mut items: Vec<Result<SealedRecord, Status>> =
            vec![Ok(sealer.seal(channel, &console("first"))?)];
        match code.as_str() {
            "truncate" => {}
            "reset" => items.push(Err(Status::internal("connection reset"))),
            "gap" => {
                // Event 1 is sealed and dropped: event 2 arrives where 1 was expected.
                sealer.seal(channel, &console("lost"))?;
                items.push(Ok(sealer.seal(channel, &final_value("1"))?));
            }
            "after final" => {
                items.push(Ok(sealer.seal(channel, &final_value("1"))?));
                // Sealed by hand: the sealer itself refuses to go on after the final.
                let extra = console("extra").encode_to_vec();
                items.push(Ok(channel.seal_reply(
                    seq,
                    RecordKind::StreamEvent,
                    2,
                    &extra,
                )?));
            }
            _ => items.push(Ok(
                sealer.seal(channel, &final_value(&json!(code).to_string()))?
            )),
        }
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    async fn close_session(
        &self,
        _: Request<SealedRecord>,
    ) -> Result<Response<SealedRecord>, Status> {
        Err(Status::unimplemented("close"))
    }

    async fn rekey(&self, _: Request<SealedRecord>) -> Result<Response<SealedRecord>, Status> {
        Err(Status::unimplemented("rekey"))
    }

    async fn list_tools(&self, _: Request<SealedRecord>) -> Result<Response<SealedRecord>, Status> {
        Err(Status::unimplemented("list tools"))
    }

    type ExecuteWithToolsStream = <Misbehaving as BrokerRpc>::ExecuteStreamStream;

    async fn execute_with_tools(
        &self,
        _: Request<tonic::Streaming<SealedRecord>>,
    ) -> Result<Response<Self::ExecuteWithToolsStream>, Status> {
        Err(Status::unimplemented("client tools"))
    }

    async fn submit_tool_result(
        &self,
        _: Request<SealedRecord>,
    ) -> Result<Response<SealedRecord>, Status> {
        Err(Status::unimplemented("client tools"))
    }
}

struct Running {
    client: Client,
    broker: Misbehaving,
    _server: tokio::task::JoinHandle<()>,
}

async fn start() -> Running {
    let identity = Arc::new(IdentityKey::generate().unwrap());
    let pin = identity.fingerprint();
    let broker = Misbehaving {
        config: ServerConfig::new(identity),
        session: Arc::default(),
        handshakes: Arc::default(),
        calls: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = BrokerServer::new(broker.clone());
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let client = Client::builder(format!("http://{addr}"))
        .pin(pin)
        .connect()
        .await
        .unwrap();
    broker.calls.store(0, Ordering::SeqCst);
    Running {
        client,
        broker,
        _server: server,
    }
}

async fn events(client: &Client, code: &str) -> Vec<Result<Event, ClientError>> {
    client.execute_streaming(code).collect().await
}

fn is_first_console(event: &Result<Event, ClientError>) -> bool {
    matches!(event, Ok(Event::Console { level: ConsoleLevel::Log, text }) if text == "first")
}

#[tokio::test]
async fn a_stream_without_its_final_event_is_an_error() {
    let t = start().await;
    let got = events(&t.client, "truncate").await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(is_first_console(&got[0]));
    assert!(
        matches!(got[1], Err(ClientError::StreamTruncated { status: None })),
        "{got:?}"
    );

    let got = events(&t.client, "reset").await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        matches!(&got[1], Err(ClientError::StreamTruncated { status: Some((Code::Internal, m)) }) if m == "connection reset"),
        "{got:?}"
    );
}

#[tokio::test]
async fn dropped_and_extra_records_are_refused() {
    let t = start().await;
    let got = events(&t.client, "gap").await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        matches!(
            got[1],
            Err(ClientError::Protocol(enclave_proto::Error::StreamOrder {
                expected: 1,
                got: 2
            }))
        ),
        "{got:?}"
    );

    let got = events(&t.client, "after final").await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(matches!(&got[1], Ok(Event::Final { result, .. }) if result == &json!(1)));
    assert!(
        matches!(
            got[2],
            Err(ClientError::Protocol(enclave_proto::Error::StreamFinished))
        ),
        "{got:?}"
    );
}

#[tokio::test]
async fn replies_bound_to_another_request_or_kind_are_refused() {
    let t = start().await;
    let err = t.client.execute("wrong request").await.unwrap_err();
    assert!(
        matches!(err, ClientError::Protocol(enclave_proto::Error::RecordAuth)),
        "{err:?}"
    );
    let err = t.client.execute("wrong kind").await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Protocol(enclave_proto::Error::UnexpectedKind { .. })
        ),
        "{err:?}"
    );
    // Refused replies are never retried: each was one call.
    assert_eq!(t.broker.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn unauthenticated_means_one_new_handshake_and_one_retry() {
    let t = start().await;
    let run = t.client.execute("unauthenticated once").await.unwrap();
    assert_eq!(run.result, Ok(json!("unauthenticated once")));
    assert_eq!(t.broker.handshakes.load(Ordering::SeqCst), 2);
    assert_eq!(t.client.session().unwrap().handshakes, 2);

    // A stream refused at the start takes the same path.
    t.broker.calls.store(0, Ordering::SeqCst);
    let got = events(&t.client, "unauthenticated once").await;
    assert!(
        is_first_console(&got[0]) && got.len() == 2 && got[1].is_ok(),
        "{got:?}"
    );
    assert_eq!(t.broker.handshakes.load(Ordering::SeqCst), 3);

    // And only once: a broker that keeps refusing gets two calls, not a loop.
    t.broker.calls.store(0, Ordering::SeqCst);
    let err = t
        .client
        .execute("always unauthenticated")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::Unauthenticated), "{err:?}");
    assert_eq!(t.broker.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn aborted_is_resealed_and_other_statuses_are_returned() {
    let t = start().await;
    let run = t.client.execute("aborted once").await.unwrap();
    assert_eq!(run.result, Ok(json!("aborted once")));
    assert_eq!(t.broker.calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        t.broker.handshakes.load(Ordering::SeqCst),
        1,
        "same session"
    );

    t.broker.calls.store(0, Ordering::SeqCst);
    let err = t.client.execute("exhausted").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::ResourceExhausted));
    assert_eq!(t.broker.calls.load(Ordering::SeqCst), 1);
}
