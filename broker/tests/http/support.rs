//! The real `enclave-broker` binary with its HTTP API on a loopback port, and two HTTP
//! clients written from the docs alone: protocol v1 in JSON ([`V1`]) and the legacy API
//! ([`Legacy`]). Both can misbehave on purpose (replay, tamper).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use enclave_proto::v1::{
    ExecuteRequest, ExecuteResult, HandshakeRequest, HandshakeResponse, Job, RecordKind,
    SealedRecord, SecurityLevel, StreamEvent, SubmitToolResult, Suite, ToolCall, ToolInfo,
    ToolResult, handshake_request, handshake_response, stream_event, tool_result,
};
use enclave_proto::{
    ClientConfig, ClientHandshake, ClientSession, Fingerprint, IdentityKey, StreamOpener,
};
use p256::pkcs8::{DecodePublicKey, EncodePublicKey};
use prost::Message;
use serde_json::{Value, json};

pub fn temp_path(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "enclave-http-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A broker child process on loopback ports, killed when dropped.
pub struct Broker {
    child: Child,
    /// `http://127.0.0.1:<port>`
    pub base: String,
    /// The gRPC address.
    pub grpc_addr: String,
    pub fingerprint: Fingerprint,
    log: Arc<Mutex<String>>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    pub fn start(args: &[&str]) -> Broker {
        let identity = temp_path("broker.key");
        let mut child = Command::new(env!("CARGO_BIN_EXE_enclave-broker"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--identity",
            ])
            .arg(&identity)
            .args(args)
            .env("NO_COLOR", "1")
            .env("ENCLAVE_LOG", "info")
            // One compiled guest snapshot for every process the tests start.
            .env(
                "ENCLAVE_SNAPSHOT_DIR",
                std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("snapshots"),
            )
            .env_remove("ENCLAVE_EXECUTORS")
            .env_remove("ENCLAVE_EXECUTOR_DNS")
            .env_remove("ENCLAVE_CONFIG")
            .env_remove("ENCLAVE_ALLOW_CLIENTS")
            .env_remove("ENCLAVE_LEGACY_API")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn enclave-broker");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("broker serving") {
                        let field = |name: &str| {
                            line.split_whitespace()
                                .find_map(|token| token.strip_prefix(&format!("{name}=")))
                                .map(str::to_owned)
                        };
                        let _ = tx.send((field("addr"), field("http_addr"), field("fingerprint")));
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let (grpc_addr, http_addr, fingerprint) = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("the broker did not start:\n{}", log.lock().unwrap()));
        Broker {
            child,
            base: format!("http://{}", http_addr.expect("the broker logs http_addr=")),
            grpc_addr: grpc_addr.expect("the broker logs addr="),
            fingerprint: fingerprint
                .expect("the broker logs fingerprint=")
                .parse()
                .unwrap(),
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Everything the broker logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// How many jobs the broker has run to their end so far, once at least `at_least`
    /// have (its log arrives through a pipe, a little after the answers), then after a
    /// pause in which more would have shown up.
    pub async fn jobs_finished(&self, at_least: usize) -> usize {
        let count = || self.log().matches("job finished").count();
        let started = std::time::Instant::now();
        while count() < at_least && started.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        count()
    }
}

/// An HTTP client (reqwest is built without a default TLS provider; plain HTTP needs
/// none, but building a client still asks for one).
pub fn http() -> reqwest::Client {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Status and body of a JSON POST.
pub async fn post(url: &str, body: &str, headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
    let mut request = http()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec())
}

pub fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

pub fn job(code: &str) -> Job {
    Job {
        code: code.into(),
        level: SecurityLevel::Strict as i32,
        ..Default::default()
    }
}

/// Splits NDJSON into its non-empty lines.
pub fn lines(body: &[u8]) -> Vec<Value> {
    body.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(json_of)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Protocol v1 over HTTP.

/// A protocol v1 client over the JSON endpoints, built on the protocol crate.
pub struct V1 {
    pub base: String,
    pub session: ClientSession,
}

/// A refused v1 call: the HTTP status and the `{"code","message"}` body.
#[derive(Debug)]
pub struct V1Error {
    pub status: u16,
    pub body: Value,
}

impl V1Error {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

impl V1 {
    pub async fn connect(broker: &Broker, suite: Suite) -> V1 {
        V1::connect_as(broker, suite, None)
            .await
            .expect("handshake")
    }

    pub async fn connect_as(
        broker: &Broker,
        suite: Suite,
        identity: Option<&IdentityKey>,
    ) -> Result<V1, V1Error> {
        let config = ClientConfig {
            suite,
            ..ClientConfig::new(broker.fingerprint)
        };
        let (handshake, hello) = ClientHandshake::start(&config).unwrap();
        let request = HandshakeRequest {
            step: Some(handshake_request::Step::ClientHello(hello)),
        };
        let response: HandshakeResponse = call(&broker.url("/v1/handshake"), &request).await?;
        let Some(handshake_response::Step::ServerHello(server_hello)) = response.step else {
            panic!("no ServerHello in {response:?}")
        };
        let mut session = handshake
            .finish(&server_hello)
            .expect("the broker's ServerHello verifies");
        if let Some(key) = identity {
            let auth = session.authenticate(key).unwrap();
            let request = HandshakeRequest {
                step: Some(handshake_request::Step::ClientAuth(auth)),
            };
            let _: HandshakeResponse = call(&broker.url("/v1/handshake"), &request).await?;
        }
        Ok(V1 {
            base: broker.base.clone(),
            session,
        })
    }

    pub fn seal(&mut self, kind: RecordKind, job: Job) -> SealedRecord {
        let body = ExecuteRequest {
            job: Some(job),
            ..Default::default()
        }
        .encode_to_vec();
        self.session.channel().seal_request(kind, &body).unwrap()
    }

    pub async fn send(&mut self, record: SealedRecord) -> Result<ExecuteResult, V1Error> {
        let seq = record.seq;
        let reply: SealedRecord = call(&format!("{}/v1/execute", self.base), &record).await?;
        let plain = self
            .session
            .channel()
            .open_reply(seq, RecordKind::ExecuteResult, &reply)
            .expect("the reply opens");
        Ok(ExecuteResult::decode(plain.as_slice()).unwrap())
    }

    pub async fn execute(&mut self, code: &str) -> Result<ExecuteResult, V1Error> {
        let record = self.seal(RecordKind::ExecuteRequest, job(code));
        self.send(record).await
    }

    /// Runs a streaming job and opens every line in order; the stream must end with its
    /// final event.
    pub async fn stream_job(&mut self, job: Job) -> Result<Vec<StreamEvent>, V1Error> {
        let request = ExecuteRequest {
            job: Some(job),
            ..Default::default()
        };
        let (events, _) = self.stream_request(request, |_| None).await?;
        Ok(events)
    }

    pub async fn stream(&mut self, code: &str) -> Result<Vec<StreamEvent>, V1Error> {
        self.stream_job(job(code)).await
    }

    /// Streams a job that declares `tools`, answering each call the broker marks as the
    /// client's with `answer` through `POST /v1/tool-result`, as a browser does, while
    /// the stream is open. Returns the events and the stream request's `seq`.
    pub async fn stream_with_tools(
        &mut self,
        job: Job,
        tools: Vec<ToolInfo>,
        answer: impl Fn(&ToolCall) -> tool_result::Outcome,
    ) -> (Vec<StreamEvent>, u64) {
        let request = ExecuteRequest {
            job: Some(job),
            client_tools: tools,
        };
        self.stream_request(request, |call| Some(answer(call)))
            .await
            .expect("the stream starts")
    }

    /// `POST /v1/execute/stream`, every line opened in order; `answer` answers the calls
    /// marked as the client's (`None`: leave them).
    async fn stream_request(
        &mut self,
        request: ExecuteRequest,
        answer: impl Fn(&ToolCall) -> Option<tool_result::Outcome>,
    ) -> Result<(Vec<StreamEvent>, u64), V1Error> {
        let record = self
            .session
            .channel()
            .seal_request(RecordKind::StreamRequest, &request.encode_to_vec())
            .unwrap();
        let seq = record.seq;
        let mut response = http()
            .post(format!("{}/v1/execute/stream", self.base))
            .body(serde_json::to_string(&record).unwrap())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        if status != 200 {
            return Err(V1Error {
                status,
                body: json_of(&response.bytes().await.unwrap()),
            });
        }
        assert_eq!(response.headers()["content-type"], "application/x-ndjson");
        let mut opener = StreamOpener::new(seq);
        let mut events = Vec::new();
        let mut buffer = Vec::new();
        while let Some(chunk) = response.chunk().await.unwrap() {
            buffer.extend_from_slice(&chunk);
            while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let value = json_of(&line);
                assert!(value.get("error").is_none(), "the stream failed: {value}");
                let record: SealedRecord = serde_json::from_value(value).unwrap();
                let event = opener
                    .open(self.session.channel(), &record)
                    .expect("stream records open in order");
                if let Some(stream_event::Event::ToolCall(call)) = &event.event
                    && call.client_answers
                    && let Some(outcome) = answer(call)
                {
                    self.submit_tool_result(seq, call.call_id, outcome)
                        .await
                        .unwrap();
                }
                events.push(event);
            }
        }
        assert!(buffer.is_empty(), "the stream ended mid-line");
        opener
            .finish()
            .expect("the stream ends with its final event");
        Ok((events, seq))
    }

    /// `POST /v1/tool-result`: one answer, for the stream `stream_seq`.
    pub async fn submit_tool_result(
        &mut self,
        stream_seq: u64,
        call_id: u64,
        outcome: tool_result::Outcome,
    ) -> Result<(), V1Error> {
        let submitted = SubmitToolResult {
            stream_seq,
            result: Some(ToolResult {
                call_id,
                outcome: Some(outcome),
            }),
        };
        let record = self
            .session
            .channel()
            .seal_request(RecordKind::ToolResult, &submitted.encode_to_vec())
            .unwrap();
        let seq = record.seq;
        let ack: SealedRecord = call(&format!("{}/v1/tool-result", self.base), &record).await?;
        self.session
            .channel()
            .open_reply(seq, RecordKind::ToolResultAck, &ack)
            .expect("the ack opens");
        Ok(())
    }
}

/// POSTs `request` in the proto3 JSON mapping and decodes the answer as `R`.
pub async fn call<Q: serde::Serialize, R: serde::de::DeserializeOwned>(
    url: &str,
    request: &Q,
) -> Result<R, V1Error> {
    let (status, body) = post(url, &serde_json::to_string(request).unwrap(), &[]).await;
    if status != 200 {
        return Err(V1Error {
            status,
            body: json_of(&body),
        });
    }
    Ok(serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body))))
}

/// The job's value as JSON, panicking with the failure otherwise.
pub fn value(result: &ExecuteResult) -> Value {
    use enclave_proto::v1::{execute_result, final_event};
    match &result.outcome {
        Some(execute_result::Outcome::Final(f)) => match &f.outcome {
            Some(final_event::Outcome::ResultJson(json)) => serde_json::from_str(json).unwrap(),
            other => panic!("job failed: {other:?}"),
        },
        other => panic!("broker failed the job: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// The legacy API.

/// A client of the legacy API written from the seed documentation (P-256 SPKI keys, the
/// raw ECDH x-coordinate as the AES-256-GCM key, random 12-byte IVs).
pub struct Legacy {
    pub base: String,
    pub session_id: String,
    key: [u8; 32],
}

impl Legacy {
    pub async fn connect(broker: &Broker) -> Legacy {
        let secret =
            p256::SecretKey::from_bytes(&p256::FieldBytes::from(rand::random::<[u8; 32]>()))
                .unwrap();
        let spki = B64.encode(secret.public_key().to_public_key_der().unwrap().as_bytes());
        let (status, body) = post(
            &broker.url("/handshake"),
            &json!({ "type": "ClientHello", "publicKey": spki }).to_string(),
            &[],
        )
        .await;
        let hello = json_of(&body);
        assert_eq!(status, 200, "{hello}");
        assert_eq!(hello["type"], "ServerHello");
        let server_der = B64.decode(hello["publicKey"].as_str().unwrap()).unwrap();
        let server = p256::PublicKey::from_public_key_der(&server_der).unwrap();
        let mut key = [0u8; 32];
        key.copy_from_slice(secret.diffie_hellman(&server).raw_secret_bytes());
        Legacy {
            base: broker.base.clone(),
            session_id: hello["sessionId"].as_str().unwrap().to_owned(),
            key,
        }
    }

    /// The request body for `plaintext`, as the seed's `encrypt` builds it.
    pub fn encrypt(&self, plaintext: &str) -> Value {
        let iv: [u8; 12] = rand::random();
        let mut ciphertext = plaintext.as_bytes().to_vec();
        let tag = Aes256Gcm::new((&self.key).into())
            .encrypt_inout_detached(&Nonce::from(iv), &[], ciphertext.as_mut_slice().into())
            .unwrap();
        ciphertext.extend_from_slice(&tag);
        json!({ "encrypted": true, "iv": B64.encode(iv), "ciphertext": B64.encode(&ciphertext) })
    }

    pub fn decrypt(&self, payload: &Value) -> Value {
        let iv: [u8; 12] = B64
            .decode(payload["iv"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let ciphertext = B64.decode(payload["ciphertext"].as_str().unwrap()).unwrap();
        let (body, tag) = ciphertext.split_at(ciphertext.len() - 16);
        let mut plain = body.to_vec();
        Aes256Gcm::new((&self.key).into())
            .decrypt_inout_detached(
                &Nonce::from(iv),
                &[],
                plain.as_mut_slice().into(),
                &Tag::try_from(tag).unwrap(),
            )
            .expect("the broker's answer decrypts under the session key");
        json_of(&plain)
    }

    /// Sends an already encrypted body to `path` with this session's id.
    pub async fn send(&self, path: &str, body: &Value) -> (u16, Vec<u8>) {
        post(
            &format!("{}{path}", self.base),
            &body.to_string(),
            &[("x-session-id", &self.session_id)],
        )
        .await
    }

    /// `/execute`: the decrypted result object, or the status and error body.
    pub async fn execute(&self, code: &str) -> Result<Value, (u16, Value)> {
        let (status, body) = self.send("/execute", &self.encrypt(code)).await;
        if status != 200 {
            return Err((status, json_of(&body)));
        }
        Ok(self.decrypt(&json_of(&body)))
    }

    /// `/execute/stream`: the decrypted events.
    pub async fn stream(&self, code: &str) -> Result<Vec<Value>, (u16, Value)> {
        let (status, body) = self.send("/execute/stream", &self.encrypt(code)).await;
        if status != 200 {
            return Err((status, json_of(&body)));
        }
        Ok(lines(&body).iter().map(|line| self.decrypt(line)).collect())
    }
}
