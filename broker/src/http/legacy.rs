//! The legacy API: wire-compatible with the seed documentation's `EncryptedEnclaveClient`
//! (enclave-vm), so that existing clients keep working while they move to protocol v1.
//!
//! - `POST /handshake` `{"type":"ClientHello","publicKey":<base64 SPKI, P-256>}` ->
//!   `{"type":"ServerHello","publicKey":<base64 SPKI>,"sessionId":<uuid>}`. The session key
//!   is the raw 32-byte ECDH x-coordinate, which is what WebCrypto's
//!   `deriveKey({name:'ECDH'}, …, {name:'AES-GCM', length:256})` gives the client.
//! - `POST /execute` (header `X-Session-Id`) `{"encrypted":true,"iv","ciphertext"}`, the
//!   plaintext being the script; answers `{"iv","ciphertext"}` of the result object.
//! - `POST /execute/stream`: the same request; NDJSON, one `{"iv","ciphertext"}` per event.
//!
//! The construction is the seed's and keeps its weaknesses (README.md, "HTTP API"): no key
//! derivation, no associated data, no server authentication, no sequence numbers, random
//! IVs. What this side adds without breaking the wire format: a fresh server key per
//! handshake, validated client points, a refused repeated IV per session (so a captured
//! request cannot simply be replayed), the v1 session limits, and zeroized keys.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use enclave_proto::v1::{
    ConsoleEvent, ConsoleLevel, ErrorCode, FinalEvent, Job, JobError, SecurityLevel, final_event,
};
use futures::StreamExt;
use p256::pkcs8::{DecodePublicKey, EncodePublicKey};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use zeroize::Zeroizing;

use tracing::{Instrument as _, info_span};

use super::Peer;
use crate::jobs::{Broker, JobEvent, JobFailure, Output};
use crate::session::{JobSlot, Session, SessionError, SessionStore, Source};

/// AES-GCM IVs are 12 bytes (the seed's `crypto.getRandomValues(new Uint8Array(12))`).
pub const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Requests one legacy session may make. Each costs a remembered IV (~16 bytes), so this
/// bounds a session's memory (about 1 MiB); a client past it does a new handshake.
pub const MAX_REQUESTS_PER_SESSION: usize = 1 << 16;

/// The seed's server runs every job at STRICT; so do we (its limits are in README.md).
const LEGACY_LEVEL: SecurityLevel = SecurityLevel::Strict;

/// Stream lines buffered between the job and the socket (backpressure past that).
const STREAM_BUFFER: usize = 64;

/// The legacy API's state: the job runner and the broker's session table, which holds
/// legacy sessions next to v1 ones (one set of caps, expiry and sweeping for both).
pub struct LegacyApi {
    broker: Arc<Broker>,
    sessions: Arc<SessionStore>,
}

impl LegacyApi {
    pub fn new(broker: Arc<Broker>, sessions: Arc<SessionStore>) -> LegacyApi {
        LegacyApi { broker, sessions }
    }

    pub fn sessions(&self) -> &Arc<SessionStore> {
        &self.sessions
    }
}

pub(super) fn router(api: Arc<LegacyApi>) -> Router {
    Router::new()
        .route("/handshake", post(handshake))
        .route("/execute", post(execute))
        .route("/execute/stream", post(execute_stream))
        .with_state(api)
}

// ---------------------------------------------------------------------------------------
// Errors: the seed's shape, `{"error":"…"}`.

/// A refused legacy request. The body is `{"error": message}`, as the seed's server
/// answers `401 {"error":"Invalid session"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LegacyError {
    pub status: StatusCode,
    pub message: String,
}

impl LegacyError {
    fn new(status: StatusCode, message: impl Into<String>) -> LegacyError {
        LegacyError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> LegacyError {
        LegacyError::new(StatusCode::BAD_REQUEST, message)
    }

    fn invalid_session() -> LegacyError {
        LegacyError::new(StatusCode::UNAUTHORIZED, "Invalid session")
    }
}

impl IntoResponse for LegacyError {
    fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(json!({ "error": self.message }).to_string()));
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

// ---------------------------------------------------------------------------------------
// Sessions: entries of the broker's one session table (crate::session), which gives
// them the caps, expiry and sweeping of v1 sessions; what is legacy is only this state.

/// A legacy session's state: the AES-256-GCM key and the IVs the client has used.
pub struct LegacyKeys {
    key: Zeroizing<[u8; 32]>,
    /// Every IV of a request that got a job slot. AES-GCM under a repeated (key, IV)
    /// loses both confidentiality and integrity, and a repeated IV is also how a
    /// replayed request looks: either way it is refused before anything runs.
    ivs: Mutex<HashSet<[u8; IV_LEN]>>,
    /// The IVs all legacy sessions remember together, shared with the session table:
    /// what bounds the legacy API's memory as a whole.
    all_ivs: Arc<AtomicUsize>,
    max_all_ivs: usize,
}

impl Drop for LegacyKeys {
    fn drop(&mut self) {
        let mine = self.ivs.get_mut().map_or(0, |ivs| ivs.len());
        self.all_ivs.fetch_sub(mine, Ordering::AcqRel);
    }
}

impl LegacyKeys {
    fn new(key: Zeroizing<[u8; 32]>, store: &SessionStore) -> LegacyKeys {
        LegacyKeys {
            key,
            ivs: Mutex::new(HashSet::new()),
            all_ivs: store.legacy_ivs().clone(),
            max_all_ivs: store.limits().max_legacy_ivs,
        }
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&*self.key).into())
    }

    fn ivs(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; IV_LEN]>> {
        self.ivs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn repeated() -> LegacyError {
        LegacyError::new(
            StatusCode::CONFLICT,
            "Repeated IV: this IV was already used in this session (a replayed request?); \
             encrypt again with a fresh random IV",
        )
    }

    /// Decrypts a request, refusing an IV this session has already used and a session
    /// (or a broker) that remembers all the IVs it may. Remembers nothing: see
    /// [`LegacyKeys::remember`].
    fn open(&self, iv: [u8; IV_LEN], ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, LegacyError> {
        {
            let ivs = self.ivs();
            if ivs.contains(&iv) {
                return Err(Self::repeated());
            }
            if ivs.len() >= MAX_REQUESTS_PER_SESSION {
                return Err(LegacyError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "this session has made its {MAX_REQUESTS_PER_SESSION} requests; do a new handshake"
                    ),
                ));
            }
        }
        if self.all_ivs.load(Ordering::Acquire) >= self.max_all_ivs {
            return Err(LegacyError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "the broker remembers its maximum of {} legacy request IVs; retry once older sessions expire",
                    self.max_all_ivs
                ),
            ));
        }
        if ciphertext.len() < TAG_LEN {
            return Err(LegacyError::bad_request(
                "ciphertext is shorter than the 16-byte GCM tag",
            ));
        }
        let (body, tag) = ciphertext.split_at(ciphertext.len() - TAG_LEN);
        let tag = Tag::try_from(tag).map_err(|_| LegacyError::bad_request("malformed GCM tag"))?;
        let mut plaintext = Zeroizing::new(body.to_vec());
        self.cipher()
            .decrypt_inout_detached(&Nonce::from(iv), &[], plaintext.as_mut_slice().into(), &tag)
            .map_err(|_| {
                LegacyError::bad_request("Decryption failed: the ciphertext does not authenticate under this session's key")
            })?;
        Ok(plaintext)
    }

    /// Remembers the IV of a request that authenticated and got its job slot; of two
    /// concurrent requests with one IV, only the first gets here.
    fn remember(&self, iv: [u8; IV_LEN]) -> Result<(), LegacyError> {
        if !self.ivs().insert(iv) {
            return Err(Self::repeated());
        }
        self.all_ivs.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// `{"iv","ciphertext"}` of `plaintext` under a fresh random IV. The server's IVs
    /// are not remembered: a random 96-bit IV meets one of the session's others with
    /// probability ~n/2^96, far below the 2^32-messages ceiling README.md states.
    fn seal(&self, plaintext: &[u8]) -> Result<Value, LegacyError> {
        let mut iv = [0u8; IV_LEN];
        getrandom::fill(&mut iv).map_err(|e| {
            LegacyError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("RNG: {e}"))
        })?;
        let mut ciphertext = Vec::with_capacity(plaintext.len() + TAG_LEN);
        ciphertext.extend_from_slice(plaintext);
        let tag = self
            .cipher()
            .encrypt_inout_detached(&Nonce::from(iv), &[], ciphertext.as_mut_slice().into())
            .map_err(|_| {
                LegacyError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "answer too large to encrypt",
                )
            })?;
        ciphertext.extend_from_slice(&tag);
        Ok(json!({ "iv": B64.encode(iv), "ciphertext": B64.encode(&ciphertext) }))
    }
}

/// A session-table refusal in the legacy API's shape.
fn refused(e: SessionError) -> LegacyError {
    match e {
        SessionError::Unknown => LegacyError::invalid_session(),
        SessionError::Collision => {
            LegacyError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        _ => LegacyError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
    }
}

/// The live session the `X-Session-Id` header names.
fn session(
    store: &SessionStore,
    headers: &HeaderMap,
) -> Result<Arc<Session<LegacyKeys>>, LegacyError> {
    let id = headers
        .get("x-session-id")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_uuid)
        .ok_or_else(LegacyError::invalid_session)?;
    store.get_legacy(&id).map_err(refused)
}

// ---------------------------------------------------------------------------------------
// Handshake.

#[derive(Deserialize)]
struct ClientHello {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(rename = "publicKey")]
    public_key: String,
}

async fn handshake(
    State(api): State<Arc<LegacyApi>>,
    peer: Peer,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    api.broker.metrics().legacy_request("handshake");
    match handshake_inner(&api, peer.source(), body) {
        Ok(answer) => json_ok(answer.to_string()),
        Err(e) => e.into_response(),
    }
}

fn handshake_inner(
    api: &LegacyApi,
    source: Option<Source>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, LegacyError> {
    let body = body.map_err(rejected)?;
    let hello: ClientHello = serde_json::from_slice(&body).map_err(|e| {
        LegacyError::bad_request(format!(
            "expected {{\"type\":\"ClientHello\",\"publicKey\":…}}: {e}"
        ))
    })?;
    if hello.kind.as_deref().is_some_and(|k| k != "ClientHello") {
        return Err(LegacyError::bad_request("type must be \"ClientHello\""));
    }
    // Before any key work: a flood of handshakes against a full table stays cheap.
    api.sessions.admit(source).map_err(refused)?;
    let (key, server_public) = key_agreement(&hello.public_key)?;
    let id = random_uuid()?;
    api.sessions
        .insert_legacy(id, LegacyKeys::new(key, &api.sessions), source)
        .map_err(refused)?;
    Ok(json!({ "type": "ServerHello", "publicKey": server_public, "sessionId": format_uuid(&id) }))
}

/// ECDH on P-256 with a fresh server key: the session key (the shared x-coordinate) and
/// the server's public key as base64 SPKI. The client's point is validated (on the
/// curve, not the identity) while its SPKI is decoded.
fn key_agreement(client_spki_b64: &str) -> Result<(Zeroizing<[u8; 32]>, String), LegacyError> {
    let invalid = || {
        LegacyError::bad_request("publicKey must be a base64 SubjectPublicKeyInfo of a P-256 point")
    };
    let der = B64.decode(client_spki_b64.trim()).map_err(|_| invalid())?;
    let client = p256::PublicKey::from_public_key_der(&der).map_err(|_| invalid())?;
    let secret = random_p256_secret()?;
    let shared = secret.diffie_hellman(&client);
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(shared.raw_secret_bytes());
    let server_spki = secret.public_key().to_public_key_der().map_err(|e| {
        LegacyError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the server key: {e}"),
        )
    })?;
    Ok((key, B64.encode(server_spki.as_bytes())))
}

/// A uniformly random P-256 scalar (a 32-byte string is out of range with probability
/// ~2^-32; drawing again keeps the distribution uniform).
fn random_p256_secret() -> Result<p256::SecretKey, LegacyError> {
    for _ in 0..64 {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut()).map_err(|e| {
            LegacyError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("RNG: {e}"))
        })?;
        if let Ok(secret) = p256::SecretKey::from_bytes(&p256::FieldBytes::from(*bytes)) {
            return Ok(secret);
        }
    }
    Err(LegacyError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "no valid P-256 scalar in 64 draws",
    ))
}

// ---------------------------------------------------------------------------------------
// Execute.

#[derive(Deserialize)]
struct EncryptedRequest {
    encrypted: Option<bool>,
    iv: String,
    ciphertext: String,
}

/// A legacy session, the script of its request and the request's job slot.
type OpenedJob = (Arc<Session<LegacyKeys>>, String, JobSlot<LegacyKeys>);

/// The session, the decrypted script and a job slot for an `/execute` or
/// `/execute/stream` request. The request's IV is remembered only once it has its slot,
/// so refused requests fill nothing.
fn open_job(
    api: &LegacyApi,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<OpenedJob, LegacyError> {
    let session = session(&api.sessions, headers)?;
    let body = body.map_err(rejected)?;
    let request: EncryptedRequest = serde_json::from_slice(&body).map_err(|e| {
        LegacyError::bad_request(format!(
            "expected {{\"encrypted\":true,\"iv\":…,\"ciphertext\":…}}: {e}"
        ))
    })?;
    if request.encrypted != Some(true) {
        return Err(LegacyError::bad_request(
            "only encrypted requests are accepted (\"encrypted\": true)",
        ));
    }
    let iv: [u8; IV_LEN] = B64
        .decode(&request.iv)
        .ok()
        .and_then(|iv| iv.try_into().ok())
        .ok_or_else(|| LegacyError::bad_request("iv must be 12 bytes, base64"))?;
    let ciphertext = B64
        .decode(&request.ciphertext)
        .map_err(|_| LegacyError::bad_request("ciphertext must be base64"))?;
    let plaintext = session.state().open(iv, &ciphertext)?;
    session.touch();
    let code = std::str::from_utf8(&plaintext)
        .map_err(|_| LegacyError::bad_request("the decrypted script is not UTF-8"))?
        .to_owned();
    let slot = api.sessions.start_job(&session).map_err(refused)?;
    session.state().remember(iv)?;
    Ok((session, code, slot))
}

fn legacy_job(code: String) -> Job {
    Job {
        code,
        level: LEGACY_LEVEL as i32,
        ..Default::default()
    }
}

async fn execute(
    State(api): State<Arc<LegacyApi>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    api.broker.metrics().legacy_request("execute");
    let (session, code, _slot) = match open_job(&api, &headers, body) {
        Ok(opened) => opened,
        Err(e) => return e.into_response(),
    };
    let (events_tx, mut events) = mpsc::channel(64);
    let collect = async move {
        let mut console = Vec::new();
        while let Some(event) = events.recv().await {
            if let JobEvent::Console(line) = event {
                console.push(console_json(&line));
            }
        }
        console
    };
    let span = enclave_server::telemetry::job_span(&headers);
    let run = api
        .broker
        .run_job(legacy_job(code), events_tx)
        .instrument(span.clone());
    let (outcome, console) = tokio::join!(run, collect);
    let mut result = execution_result(&outcome);
    result["console"] = Value::Array(console);
    let sealed = info_span!(parent: &span, "seal")
        .in_scope(|| session.state().seal(result.to_string().as_bytes()));
    match sealed {
        Ok(sealed) => json_ok(sealed.to_string()),
        Err(e) => e.into_response(),
    }
}

async fn execute_stream(
    State(api): State<Arc<LegacyApi>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    api.broker.metrics().legacy_request("execute_stream");
    let (session, code, slot) = match open_job(&api, &headers, body) {
        Ok(opened) => opened,
        Err(e) => return e.into_response(),
    };
    let (out, lines) = mpsc::channel::<Bytes>(STREAM_BUFFER);
    let broker = api.broker.clone();
    let span = enclave_server::telemetry::job_span(&headers);
    tokio::spawn(
        async move {
            stream_job(&broker, session.state(), legacy_job(code), out).await;
            drop(slot);
        }
        .instrument(span),
    );
    let body = Body::from_stream(ReceiverStream::new(lines).map(Ok::<_, Infallible>));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Runs one job and writes its events as encrypted lines, the last one `final` (or
/// `error` when the broker could not run the job). Stops the job as soon as the client
/// goes away: hyper drops the body, so `out` closes.
async fn stream_job(broker: &Broker, session: &LegacyKeys, job: Job, out: mpsc::Sender<Bytes>) {
    let line = |event: Value| -> Bytes {
        let _sealing = info_span!("seal").entered();
        match session.seal(event.to_string().as_bytes()) {
            Ok(sealed) => Bytes::from(format!("{sealed}\n")),
            // Nothing sensible can be encrypted: an empty line, which readers skip.
            Err(e) => {
                tracing::warn!(error = %e, "legacy stream event not sealed");
                Bytes::from_static(b"\n")
            }
        }
    };
    broker
        .run_job_into(job, &out, |output| line(stream_event(output)))
        .await;
}

/// A job event as the seed's stream shows it.
fn stream_event(output: Output) -> Value {
    let event = match output {
        Output::Event(event) => event,
        // As in the seed: `final` when the job ran to its end (its value or its own
        // error), `error` when the broker could not run it (no executor, executor
        // lost, ...).
        Output::End(Err(failure)) => {
            return json!({ "type": "error", "message": failure.message });
        }
        Output::End(outcome) => {
            return json!({ "type": "final", "result": execution_result(&outcome) });
        }
    };
    match event {
        JobEvent::Console(line) => {
            json!({ "type": "stdout", "data": line.text, "level": console_level(line.level()) })
        }
        JobEvent::ToolCall(call) => {
            // The script's arguments as a value; as a string if they are somehow not JSON.
            let args = serde_json::from_str::<Value>(&call.args_json)
                .unwrap_or(Value::String(call.args_json));
            json!({ "type": "tool_call", "tool": call.name, "args": args, "callId": call.call_id })
        }
        // Deliberately without the result (it may hold secrets), as in protocol v1.
        JobEvent::ToolResult {
            call_id,
            name,
            error,
        } => {
            json!({ "type": "tool_result", "tool": name, "callId": call_id, "isError": error.is_some() })
        }
    }
}

fn console_json(line: &ConsoleEvent) -> Value {
    json!({ "level": console_level(line.level()), "text": line.text })
}

fn console_level(level: ConsoleLevel) -> &'static str {
    match level {
        ConsoleLevel::Info => "info",
        ConsoleLevel::Warn => "warn",
        ConsoleLevel::Error => "error",
        ConsoleLevel::Debug => "debug",
        ConsoleLevel::Log | ConsoleLevel::Unspecified => "log",
    }
}

/// enclave-vm's `ExecutionResult`: `{success, value, error: {name, message, code, line} |
/// null, stats: {duration, durationMs, toolCallCount, memoryUsage, consoleBytes}}`.
pub fn execution_result(outcome: &Result<FinalEvent, JobFailure>) -> Value {
    let (value, error, stats) = match outcome {
        Ok(final_event) => {
            let stats = final_event.stats.unwrap_or_default();
            match &final_event.outcome {
                Some(final_event::Outcome::ResultJson(json)) => {
                    // The executor produced it, so it is JSON; a string if it were not.
                    let value =
                        serde_json::from_str(json).unwrap_or_else(|_| Value::String(json.clone()));
                    (value, None, Some(stats))
                }
                Some(final_event::Outcome::Error(e)) => {
                    (Value::Null, Some(error_json(e)), Some(stats))
                }
                None => (
                    Value::Null,
                    Some(error_json(&JobError {
                        code: ErrorCode::Internal as i32,
                        message: "the job ended without a value or an error".into(),
                        ..Default::default()
                    })),
                    Some(stats),
                ),
            }
        }
        Err(failure) => (Value::Null, Some(error_json(&failure.to_job_error())), None),
    };
    let stats = stats.unwrap_or_default();
    let duration_ms = stats.duration_us as f64 / 1000.0;
    json!({
        "success": error.is_none(),
        "value": value,
        "error": error,
        "stats": {
            "duration": duration_ms,
            "durationMs": duration_ms,
            "toolCallCount": stats.tool_calls,
            "memoryUsage": stats.memory_bytes,
            "consoleBytes": stats.console_bytes,
        },
    })
}

fn error_json(error: &JobError) -> Value {
    let code = error.code().as_str_name().trim_start_matches("ERROR_CODE_");
    let name = if error.name.is_empty() {
        "EnclaveError"
    } else {
        error.name.as_str()
    };
    let mut value =
        json!({ "name": name, "message": error.message, "code": code, "line": error.line });
    if !error.stack.is_empty() {
        value["stack"] = Value::String(error.stack.clone());
    }
    value
}

// ---------------------------------------------------------------------------------------
// Helpers.

/// A body the server could not read, with the status of its cause: the listener's
/// request memory budget (429) or body timeout (408), the body limit (413), or broken
/// off (400).
fn rejected(rejection: BytesRejection) -> LegacyError {
    match super::status_in(&rejection) {
        Some(status) => {
            let code = match status.code() {
                tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
                tonic::Code::DeadlineExceeded => StatusCode::REQUEST_TIMEOUT,
                _ => StatusCode::BAD_REQUEST,
            };
            LegacyError::new(code, status.message())
        }
        None => LegacyError::new(rejection.status(), rejection.body_text()),
    }
}

fn json_ok(body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// 16 random bytes as a version-4 UUID (what the seed's `crypto.randomUUID()` gives).
fn random_uuid() -> Result<[u8; 16], LegacyError> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id)
        .map_err(|e| LegacyError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("RNG: {e}")))?;
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    Ok(id)
}

fn format_uuid(id: &[u8; 16]) -> String {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, either case; anything else is no session.
fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let text = text.trim().as_bytes();
    if text.len() != 36 || [8, 13, 18, 23].iter().any(|&i| text[i] != b'-') {
        return None;
    }
    let digits: Vec<u8> = text.iter().copied().filter(|&c| c != b'-').collect();
    if digits.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (byte, pair) in id.iter_mut().zip(digits.chunks_exact(2)) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        *byte = (hi * 16 + lo) as u8;
    }
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_round_trip_and_are_version_4() {
        let id = random_uuid().unwrap();
        let text = format_uuid(&id);
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "4");
        assert!(matches!(&text[19..20], "8" | "9" | "a" | "b"));
        assert_eq!(parse_uuid(&text), Some(id));
        assert_eq!(parse_uuid(&text.to_uppercase()), Some(id));
        assert_eq!(parse_uuid(&text[1..]), None);
        assert_eq!(parse_uuid("zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"), None);
        assert_eq!(parse_uuid("0123456789abcdef0123456789abcdef0123"), None);
    }

    fn session() -> LegacyKeys {
        let store = SessionStore::new(crate::session::SessionLimits::default());
        LegacyKeys::new(Zeroizing::new([7u8; 32]), &store)
    }

    /// Opens and remembers, as a request that got its job slot.
    fn accept(s: &LegacyKeys, iv: [u8; IV_LEN], ct: &[u8]) -> Result<Vec<u8>, LegacyError> {
        let plain = s.open(iv, ct)?;
        s.remember(iv)?;
        Ok(plain.to_vec())
    }

    fn sealed_parts(sealed: &Value) -> ([u8; IV_LEN], Vec<u8>) {
        let iv = B64
            .decode(sealed["iv"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        (
            iv,
            B64.decode(sealed["ciphertext"].as_str().unwrap()).unwrap(),
        )
    }

    #[test]
    fn a_repeated_iv_is_refused_and_tampering_detected() {
        let s = session();
        let (iv, ct) = sealed_parts(&s.seal(b"return 1").unwrap());
        assert_eq!(accept(&s, iv, &ct).unwrap(), b"return 1");
        assert_eq!(s.open(iv, &ct).unwrap_err().status, StatusCode::CONFLICT);
        let (iv, mut ct) = sealed_parts(&s.seal(b"return 2").unwrap());
        ct[0] ^= 1;
        assert_eq!(s.open(iv, &ct).unwrap_err().status, StatusCode::BAD_REQUEST);
        // A failed attempt does not burn the IV: the genuine request still goes through.
        ct[0] ^= 1;
        assert_eq!(accept(&s, iv, &ct).unwrap(), b"return 2");
        assert_eq!(
            s.open(iv, &ct[..10]).unwrap_err().status,
            StatusCode::CONFLICT
        );
        // Of two requests with one IV that both opened, only the first is remembered.
        let (iv, ct) = sealed_parts(&s.seal(b"return 3").unwrap());
        s.open(iv, &ct).unwrap();
        s.open(iv, &ct).unwrap();
        s.remember(iv).unwrap();
        assert_eq!(s.remember(iv).unwrap_err().status, StatusCode::CONFLICT);
    }

    #[test]
    fn the_ivs_of_all_legacy_sessions_are_bounded_together() {
        let store = SessionStore::new(crate::session::SessionLimits {
            max_legacy_ivs: 3,
            ..Default::default()
        });
        let a = LegacyKeys::new(Zeroizing::new([1u8; 32]), &store);
        let b = LegacyKeys::new(Zeroizing::new([2u8; 32]), &store);
        for i in 0..2 {
            let (iv, ct) = sealed_parts(&a.seal(&[i]).unwrap());
            accept(&a, iv, &ct).unwrap();
        }
        let (iv, ct) = sealed_parts(&b.seal(b"x").unwrap());
        accept(&b, iv, &ct).unwrap();
        let (iv, ct) = sealed_parts(&b.seal(b"y").unwrap());
        assert_eq!(
            b.open(iv, &ct).unwrap_err().status,
            StatusCode::TOO_MANY_REQUESTS
        );
        // A session that goes gives its IVs back.
        drop(a);
        assert_eq!(store.legacy_ivs().load(Ordering::Relaxed), 1);
        accept(&b, iv, &ct).unwrap();
    }

    #[test]
    fn key_agreement_matches_the_client_side_and_refuses_bad_points() {
        let client = random_p256_secret().unwrap();
        let spki = B64.encode(client.public_key().to_public_key_der().unwrap().as_bytes());
        let (key, server_spki) = key_agreement(&spki).unwrap();
        let server =
            p256::PublicKey::from_public_key_der(&B64.decode(server_spki).unwrap()).unwrap();
        assert_eq!(
            client.diffie_hellman(&server).raw_secret_bytes().as_slice(),
            key.as_slice()
        );
        // Off the curve: flip a bit of Y (the last byte of the DER).
        let mut der = B64.decode(&spki).unwrap();
        let last = der.len() - 1;
        der[last] ^= 1;
        assert!(key_agreement(&B64.encode(&der)).is_err());
        assert!(key_agreement("not base64!").is_err());
        assert!(key_agreement(&B64.encode([0u8; 91])).is_err());
    }

    #[test]
    fn results_look_like_enclave_vm_results() {
        let ok = FinalEvent {
            outcome: Some(final_event::Outcome::ResultJson("{\"a\":1}".into())),
            stats: Some(enclave_proto::v1::JobStats {
                duration_us: 1500,
                tool_calls: 2,
                ..Default::default()
            }),
        };
        let v = execution_result(&Ok(ok));
        assert_eq!(v["success"], true);
        assert_eq!(v["value"]["a"], 1);
        assert_eq!(v["error"], Value::Null);
        assert_eq!(v["stats"]["durationMs"], 1.5);
        assert_eq!(v["stats"]["toolCallCount"], 2);
        let thrown = FinalEvent {
            outcome: Some(final_event::Outcome::Error(JobError {
                code: ErrorCode::ScriptError as i32,
                message: "boom".into(),
                name: "TypeError".into(),
                line: 3,
                stack: String::new(),
            })),
            stats: None,
        };
        let v = execution_result(&Ok(thrown));
        assert_eq!(v["success"], false);
        assert_eq!(v["error"]["name"], "TypeError");
        assert_eq!(v["error"]["code"], "SCRIPT_ERROR");
        assert_eq!(v["error"]["line"], 3);
    }
}
