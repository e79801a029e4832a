//! The session behind a [`crate::Client`]: handshake, sealing, retries and rekeying.
//!
//! Concurrency model: one session serves every request of a client. Its
//! `ClientChannel` sits behind a `std::sync::Mutex` that is held only to seal a request
//! or open a reply (microseconds, never across an `.await`); the RPCs themselves run
//! outside it, so many requests are in flight at once, and the broker's replay window
//! accepts them in whatever order they arrive. A separate async mutex lets exactly one
//! task run a handshake while the others wait for its result.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use enclave_proto::v1::broker_client::BrokerClient;
use enclave_proto::v1::{
    self, HandshakeRequest, RecordKind, SealedRecord, SecurityLevel, handshake_request,
    handshake_response,
};
use enclave_proto::{
    ClientChannel, ClientConfig, ClientHandshake, Fingerprint, RekeyPolicy, SessionId, StreamOpener,
};
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

use crate::builder::MAX_MESSAGE_BYTES;
use crate::error::ClientError;
use crate::identity::ClientIdentity;
use crate::rekey::RekeyClock;
use crate::retry::{Retry, RetryBudget};

/// What the builder decided; fixed for the client's lifetime.
pub(crate) struct Settings {
    pub(crate) handshake: ClientConfig,
    /// The client's own rekey policy (the channel's is switched off, see `rekey.rs`).
    pub(crate) rekey: RekeyPolicy,
    pub(crate) identity: Option<ClientIdentity>,
    pub(crate) level: SecurityLevel,
    pub(crate) handshake_timeout: Duration,
    /// Deadline of a whole call (unary answer, or a stream's last event).
    pub(crate) request_timeout: Option<Duration>,
}

/// A snapshot of the current session, for logs, diagnostics and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub session_id: SessionId,
    /// How many handshakes this client has completed; this session is the last one.
    pub handshakes: u64,
    pub server: Fingerprint,
    /// The client key the broker verified, when the client authenticated.
    pub client: Option<Fingerprint>,
    /// Current key epochs (client -> broker, broker -> client).
    pub send_epoch: u32,
    pub recv_epoch: u32,
    /// `Rekey` RPCs completed on this session.
    pub rekeys: u64,
}

pub(crate) struct Session {
    generation: u64,
    server: Fingerprint,
    client: Option<Fingerprint>,
    state: Mutex<SessionState>,
}

struct SessionState {
    channel: ClientChannel,
    clock: RekeyClock,
    rekeys: u64,
}

impl Session {
    fn lock(&self) -> MutexGuard<'_, SessionState> {
        // Nothing under this lock can panic halfway through a protocol step (sealing
        // and opening are all-or-nothing), so a poisoned lock still holds a consistent
        // channel.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn info(&self) -> SessionInfo {
        let state = self.lock();
        SessionInfo {
            session_id: state.channel.session_id(),
            handshakes: self.generation,
            server: self.server,
            client: self.client,
            send_epoch: state.channel.send_epoch(),
            recv_epoch: state.channel.recv_epoch(),
            rekeys: state.rekeys,
        }
    }

    pub(crate) fn seal(
        &self,
        kind: RecordKind,
        plaintext: &[u8],
    ) -> Result<SealedRecord, ClientError> {
        let mut state = self.lock();
        let record = state.channel.seal_request(kind, plaintext)?;
        state.clock.sealed(plaintext.len());
        Ok(record)
    }

    pub(crate) fn open_reply(
        &self,
        request_seq: u64,
        kind: RecordKind,
        record: &SealedRecord,
    ) -> Result<Vec<u8>, ClientError> {
        Ok(self.lock().channel.open_reply(request_seq, kind, record)?)
    }

    pub(crate) fn open_stream_event(
        &self,
        opener: &mut StreamOpener,
        record: &SealedRecord,
    ) -> Result<v1::StreamEvent, ClientError> {
        Ok(opener.open(&mut self.lock().channel, record)?)
    }
}

pub(crate) struct Connection {
    grpc: BrokerClient<Channel>,
    settings: Settings,
    current: Mutex<Option<Arc<Session>>>,
    /// Held for the whole handshake, so concurrent requests share one new session.
    handshaking: tokio::sync::Mutex<()>,
    handshakes: AtomicU64,
}

/// A sealed request accepted by the broker: the session it went out on, the `seq` that
/// names it in the reply, and the RPC's answer.
pub(crate) struct Sent<T> {
    pub(crate) session: Arc<Session>,
    pub(crate) seq: u64,
    pub(crate) answer: T,
}

impl Connection {
    pub(crate) fn new(channel: Channel, settings: Settings) -> Self {
        Connection {
            grpc: BrokerClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            settings,
            current: Mutex::new(None),
            handshaking: tokio::sync::Mutex::new(()),
            handshakes: AtomicU64::new(0),
        }
    }

    pub(crate) fn default_level(&self) -> SecurityLevel {
        self.settings.level
    }

    pub(crate) fn request_timeout(&self) -> Option<Duration> {
        self.settings.request_timeout
    }

    fn current(&self) -> Option<Arc<Session>> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn info(&self) -> Option<SessionInfo> {
        self.current().map(|s| s.info())
    }

    /// The live session, after a handshake if there is none.
    pub(crate) async fn session(&self) -> Result<Arc<Session>, ClientError> {
        if let Some(session) = self.current() {
            return Ok(session);
        }
        let _handshaking = self.handshaking.lock().await;
        // Whoever held the lock before may have just finished one.
        if let Some(session) = self.current() {
            return Ok(session);
        }
        let timeout = self.settings.handshake_timeout;
        let session = match tokio::time::timeout(timeout, self.handshake()).await {
            Ok(result) => Arc::new(result?),
            Err(_) => {
                return Err(ClientError::Status {
                    code: Code::DeadlineExceeded,
                    message: format!("handshake did not complete within {timeout:?}"),
                });
            }
        };
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(session.clone());
        Ok(session)
    }

    /// Forgets session `generation` if it is still the current one (a newer session
    /// another task already set up stays).
    fn invalidate(&self, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|s| s.generation == generation) {
            *current = None;
        }
    }

    async fn handshake(&self) -> Result<Session, ClientError> {
        let started = Instant::now();
        let (state, hello) = ClientHandshake::start(&self.settings.handshake)?;
        let reply = self
            .grpc
            .clone()
            .handshake(HandshakeRequest {
                step: Some(handshake_request::Step::ClientHello(hello)),
            })
            .await?
            .into_inner();
        let Some(handshake_response::Step::ServerHello(server_hello)) = reply.step else {
            return Err(ClientError::invalid_reply(
                "the broker did not answer the ClientHello with a ServerHello",
            ));
        };
        let mut session = state.finish(&server_hello)?;
        let client = match &self.settings.identity {
            Some(identity) => {
                let auth = identity.client_auth(&mut session).await?;
                let fingerprint = enclave_proto::PublicIdentity::from_slice(&auth.client_identity)
                    .map(|p| p.fingerprint())
                    .ok();
                let reply = self
                    .grpc
                    .clone()
                    .handshake(HandshakeRequest {
                        step: Some(handshake_request::Step::ClientAuth(auth)),
                    })
                    .await?
                    .into_inner();
                if !matches!(
                    reply.step,
                    Some(handshake_response::Step::ClientAuthAccepted(_))
                ) {
                    return Err(ClientError::invalid_reply(
                        "the broker did not accept the ClientAuth with ClientAuthAccepted",
                    ));
                }
                fingerprint
            }
            None if session.client_auth_required() => return Err(ClientError::ClientAuthRequired),
            None => None,
        };
        let generation = self.handshakes.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(
            session = %session.session_id(),
            generation,
            server = %session.server_fingerprint(),
            "handshake complete"
        );
        Ok(Session {
            generation,
            server: session.server_fingerprint(),
            client,
            state: Mutex::new(SessionState {
                channel: session.into_channel(),
                // From before the ClientHello: never younger than the keys it times.
                clock: RekeyClock::new(started),
                rekeys: 0,
            }),
        })
    }

    /// Seals `plaintext` as `kind` and sends it with `call`, retrying the statuses that
    /// guarantee nothing ran (see `retry.rs`). Once `call` returns `Ok`, the broker has
    /// accepted the request and nothing is retried.
    pub(crate) async fn send<T, F, Fut>(
        &self,
        kind: RecordKind,
        plaintext: &[u8],
        call: F,
    ) -> Result<Sent<T>, ClientError>
    where
        F: Fn(BrokerClient<Channel>, SealedRecord) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let mut budget = RetryBudget::default();
        loop {
            let session = self.session().await?;
            self.rekey_if_due(&session).await;
            let record = session.seal(kind, plaintext)?;
            let seq = record.seq;
            match call(self.grpc.clone(), record).await {
                Ok(answer) => {
                    return Ok(Sent {
                        session,
                        seq,
                        answer,
                    });
                }
                Err(status) => match budget.next(status.code()) {
                    Some(Retry::NewSession) => {
                        tracing::debug!(
                            message = status.message(),
                            "session refused; new handshake"
                        );
                        self.invalidate(session.generation);
                    }
                    Some(Retry::Reseal) => {
                        tracing::debug!(message = status.message(), "request aborted; re-sealing");
                    }
                    None => return Err(status.into()),
                },
            }
        }
    }

    /// Runs the `Rekey` RPC when the client's clock says so. A failure is logged, not
    /// returned: the request that noticed the clock still goes out (its own status
    /// tells the caller if the session is gone).
    async fn rekey_if_due(&self, session: &Session) {
        let sealed = {
            let mut state = session.lock();
            if !state.clock.begin(&self.settings.rekey, Instant::now()) {
                return;
            }
            state.channel.seal_rekey_request()
        };
        let result = match sealed {
            Ok(record) => self.finish_rekey(session, record).await,
            Err(e) => Err(e.into()),
        };
        let mut state = session.lock();
        state.clock.end();
        match result {
            Ok(()) => {
                state.rekeys += 1;
                tracing::debug!(
                    send_epoch = state.channel.send_epoch(),
                    recv_epoch = state.channel.recv_epoch(),
                    "session rekeyed"
                );
            }
            Err(e) => tracing::warn!("automatic rekey failed: {e}"),
        }
    }

    async fn finish_rekey(
        &self,
        session: &Session,
        record: SealedRecord,
    ) -> Result<(), ClientError> {
        let seq = record.seq;
        let reply = self.grpc.clone().rekey(record).await?.into_inner();
        let plaintext = session.open_reply(seq, RecordKind::RekeyResult, &reply)?;
        v1::RekeyResponse::decode(plaintext.as_slice())
            .map_err(|e| ClientError::invalid_reply(format!("RekeyResponse: {e}")))?;
        Ok(())
    }

    /// New keys in both directions now. A session the broker no longer knows is
    /// replaced by a fresh handshake, which gives new keys too.
    pub(crate) async fn rekey(&self) -> Result<(), ClientError> {
        let session = self.session().await?;
        let record = {
            let mut state = session.lock();
            state.clock.restart(Instant::now());
            state.channel.seal_rekey_request()?
        };
        match self.finish_rekey(&session, record).await {
            Ok(()) => {
                session.lock().rekeys += 1;
                Ok(())
            }
            Err(ClientError::Status {
                code: Code::Unauthenticated,
                ..
            }) => {
                self.invalidate(session.generation);
                self.session().await.map(drop)
            }
            Err(e) => Err(e),
        }
    }

    /// Ends the session on the broker. The next request starts a new one.
    pub(crate) async fn close(&self) -> Result<(), ClientError> {
        let session = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(session) = session else {
            return Ok(());
        };
        let body = v1::CloseSessionRequest {}.encode_to_vec();
        let record = session.seal(RecordKind::CloseRequest, &body)?;
        let seq = record.seq;
        let reply = self.grpc.clone().close_session(record).await?.into_inner();
        let plaintext = session.open_reply(seq, RecordKind::CloseResult, &reply)?;
        v1::CloseSessionResponse::decode(plaintext.as_slice())
            .map_err(|e| ClientError::invalid_reply(format!("CloseSessionResponse: {e}")))?;
        Ok(())
    }
}
