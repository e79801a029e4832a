//! Client-provided tools (docs/PROTOCOL.md §10.6): tools a client declares for one job
//! and answers itself, the seed's `toolHandler` moved to the side that owns the tools.
//!
//! The job's `tool_call` events already reach the client (sealed, secrets as handles);
//! for a declared tool the broker then waits for the client's sealed answer instead of
//! running a tool. Answers come in on the job's own `ExecuteWithTools` call, or as unary
//! `SubmitToolResult` calls (HTTP), both routed here by session and stream: a client's
//! tools and answers are its own job's, never another's.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use enclave_proto::v1::{ToolInfo, ToolResult, tool_result};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::secrets::JobSecrets;
use crate::tools::schema::ArgsCheck;
use crate::tools::{MAX_RESULT_BYTES, ToolError, ToolErrorKind, ToolSpec, Tools, shorten};

/// Tools one job may declare: what a script's agent needs, far below what would make the
/// per-job schema compilation costly.
pub const MAX_CLIENT_TOOLS: usize = 64;
/// A declared tool's name, as the guest limits a called one.
pub const MAX_NAME_BYTES: usize = 256;
/// A declared tool's description and schema, each.
pub const MAX_SPEC_BYTES: usize = 64 << 10;
/// The longest error message a client's answer passes to the script.
const MAX_ERROR_CHARS: usize = 1000;
/// Answers waiting for the job to take them, never more in memory: past it a unary
/// answer is told to slow down (RESOURCE_EXHAUSTED), an `ExecuteWithTools` call waits.
const ANSWER_QUEUE: usize = 64;

struct Declared {
    spec: ToolSpec,
    check: ArgsCheck,
}

/// One job's client tools, and the answers to their calls.
pub struct ClientTools {
    tools: BTreeMap<String, Declared>,
    answers: mpsc::Receiver<ToolResult>,
    waiting: HashMap<u64, oneshot::Sender<ToolResult>>,
    catalogue: Vec<(String, ToolSpec)>,
}

impl ClientTools {
    /// Checks what the client declared against the broker's own tools: a client tool
    /// may not take a broker tool's name (a script calling `http:fetch` gets the
    /// broker's). `Err` is the job's INVALID_JOB message.
    pub fn new(
        declared: Vec<ToolInfo>,
        broker_tools: &Tools,
        answers: mpsc::Receiver<ToolResult>,
    ) -> Result<ClientTools, String> {
        if declared.len() > MAX_CLIENT_TOOLS {
            return Err(format!(
                "{} client tools declared; at most {MAX_CLIENT_TOOLS}",
                declared.len()
            ));
        }
        let mut tools = BTreeMap::new();
        for info in declared {
            let name = info.name;
            if name.is_empty() || name.len() > MAX_NAME_BYTES {
                return Err(format!(
                    "a client tool's name must be 1 to {MAX_NAME_BYTES} bytes"
                ));
            }
            if info.description.len() > MAX_SPEC_BYTES
                || info.input_schema_json.len() > MAX_SPEC_BYTES
            {
                return Err(format!(
                    "client tool `{name}`: description and schema are limited to {MAX_SPEC_BYTES} bytes each"
                ));
            }
            if broker_tools.answers(&name) {
                return Err(format!(
                    "client tool `{name}` has the name of one of the broker's tools"
                ));
            }
            let schema = if info.input_schema_json.trim().is_empty() {
                serde_json::Value::Object(Default::default())
            } else {
                serde_json::from_str(&info.input_schema_json)
                    .map_err(|e| format!("client tool `{name}`: its schema is not JSON: {e}"))?
            };
            let check = ArgsCheck::compile(&schema).map_err(|e| {
                format!("client tool `{name}`: its schema is not a usable JSON Schema: {e}")
            })?;
            let spec = ToolSpec::new(info.description, schema);
            if tools
                .insert(name.clone(), Declared { spec, check })
                .is_some()
            {
                return Err(format!("client tool `{name}` is declared twice"));
            }
        }
        let catalogue = tools
            .iter()
            .map(|(name, d)| (name.clone(), d.spec.clone()))
            .collect();
        Ok(ClientTools {
            tools,
            answers,
            waiting: HashMap::new(),
            catalogue,
        })
    }

    /// The declared tools, for `listTools()`.
    pub fn catalogue(&self) -> &[(String, ToolSpec)] {
        &self.catalogue
    }

    /// Starts a call of `name` if it is one of the client's tools: `None` when it is
    /// not (the broker's tools answer it), else the future answer. The arguments are
    /// checked against the declared schema first; the call itself already went to the
    /// client as the job's `tool_call` event.
    pub fn start(
        &mut self,
        name: &str,
        call_id: u64,
        args_json: &str,
    ) -> Option<Result<oneshot::Receiver<ToolResult>, ToolError>> {
        let declared = self.tools.get(name)?;
        let checked = serde_json::from_str(args_json)
            .map_err(|e| ToolError::bad_args(format!("arguments are not JSON: {e}")))
            .and_then(|args| declared.check.check(&args));
        Some(checked.map(|()| {
            let (tx, rx) = oneshot::channel();
            self.waiting.insert(call_id, tx);
            rx
        }))
    }

    /// The next answer from the client, handed to its call. Answers to calls that are
    /// not waiting (unknown, answered already, timed out) are dropped.
    pub async fn next_answer(&mut self) {
        if let Some(answer) = self.answers.recv().await {
            match self.waiting.remove(&answer.call_id) {
                Some(waiting) => {
                    let _ = waiting.send(answer);
                }
                None => tracing::debug!(
                    call_id = answer.call_id,
                    "dropping a client tool answer no call waits for"
                ),
            }
        } else {
            // No more answers can come (the client's call ended): the waiting calls
            // end at their deadline. Wait forever rather than spin.
            std::future::pending::<()>().await;
        }
    }
}

/// Waits for the client's answer to the call made at `started`, until `deadline`.
pub async fn answer(
    answer: oneshot::Receiver<ToolResult>,
    started: Instant,
    deadline: Instant,
    secrets: &JobSecrets,
) -> Result<String, ToolError> {
    let answer = match tokio::time::timeout_at(deadline, answer).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => return Err(ToolError::failed("the client is gone")),
        Err(_) => {
            return Err(ToolError::new(
                ToolErrorKind::Timeout,
                format!(
                    "the client did not answer within {} ms",
                    deadline.saturating_duration_since(started).as_millis()
                ),
            ));
        }
    };
    match answer.outcome {
        Some(tool_result::Outcome::ResultJson(json)) => {
            if serde_json::from_str::<serde::de::IgnoredAny>(&json).is_err() {
                return Err(ToolError::failed(
                    "the client answered a result that is not JSON",
                ));
            }
            let json = secrets.scrub_json_text(&json).into_owned();
            if json.len() > MAX_RESULT_BYTES {
                return Err(ToolError::failed(format!(
                    "the client's result is {} bytes of JSON; at most {MAX_RESULT_BYTES} can be returned",
                    json.len()
                )));
            }
            Ok(json)
        }
        Some(tool_result::Outcome::Error(message)) => {
            let short = shorten(&message, MAX_ERROR_CHARS);
            Err(ToolError::failed(secrets.scrub(&short).into_owned()))
        }
        None => Err(ToolError::failed(
            "the client answered neither a result nor an error",
        )),
    }
}

/// Where each waiting job takes its client's answers: by session and the `seq` of the
/// request that started it.
#[derive(Default)]
pub struct Routes {
    open: Mutex<RouteTable>,
}

/// (session id, stream `seq`) -> the job's inbox.
type RouteTable = HashMap<(Vec<u8>, u64), mpsc::Sender<ToolResult>>;

/// Why an answer found no job to take it.
#[derive(Debug, PartialEq, Eq)]
pub enum Undeliverable {
    /// No job of this session waits for answers at that `stream_seq`.
    NoJob,
    /// The job has too many answers it has not taken yet.
    Full,
}

impl Routes {
    /// Opens the route to a job; it closes when the returned guard drops (the job ended).
    pub fn open(
        self: &Arc<Routes>,
        session_id: &[u8],
        stream_seq: u64,
    ) -> (Route, mpsc::Receiver<ToolResult>) {
        let (tx, rx) = mpsc::channel(ANSWER_QUEUE);
        let key = (session_id.to_vec(), stream_seq);
        self.lock().insert(key.clone(), tx);
        (
            Route {
                routes: self.clone(),
                key,
            },
            rx,
        )
    }

    /// Hands `result` to the job waiting at (session, `stream_seq`), or says why not.
    pub fn deliver(
        &self,
        session_id: &[u8],
        stream_seq: u64,
        result: ToolResult,
    ) -> Result<(), Undeliverable> {
        let routes = self.lock();
        let route = routes
            .get(&(session_id.to_vec(), stream_seq))
            .ok_or(Undeliverable::NoJob)?;
        route.try_send(result).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Undeliverable::Full,
            mpsc::error::TrySendError::Closed(_) => Undeliverable::NoJob,
        })
    }

    /// Delivers like [`deliver`](Self::deliver), waiting for room rather than refusing.
    /// `false`: no job takes answers there (any more).
    pub async fn deliver_waiting(
        &self,
        session_id: &[u8],
        stream_seq: u64,
        result: ToolResult,
    ) -> bool {
        let route = self.lock().get(&(session_id.to_vec(), stream_seq)).cloned();
        match route {
            Some(route) => route.send(result).await.is_ok(),
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RouteTable> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An open route; closes on drop.
pub struct Route {
    routes: Arc<Routes>,
    key: (Vec<u8>, u64),
}

impl Drop for Route {
    fn drop(&mut self) {
        self.routes.lock().remove(&self.key);
    }
}
