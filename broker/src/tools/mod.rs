//! Tools: what a script reaches through `await callTool(name, args)`.
//!
//! Tools run in the broker, never on an executor: executors hold no secrets and make
//! no outbound connections. A tool's error becomes the message of the Error the
//! script's promise rejects with (the guest prefixes `tool <name> failed: `), so it must
//! be clear to the script's author and must not carry secrets. Scrubbing happens here,
//! whatever the tool does: its arguments before it runs (a value the script somehow
//! holds arrives as its handle, which is then only usable where its binding allows),
//! and its result and error after.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::ToolsConfig;
use crate::secrets::{JobSecrets, SecretStore, SecretsError};

pub mod echo;
pub mod http;
pub mod secrets;

/// A tool result goes to the client in a sealed `tool_result` event and to the executor
/// in one gRPC message: it must fit the protocol's largest plaintext, with room for the
/// event's framing.
pub const MAX_RESULT_BYTES: usize = enclave_proto::MAX_PLAINTEXT_LEN - (64 << 10);

pub type ToolFuture<'a> =
    Pin<Box<dyn Future<Output = Result<serde_json::Value, ToolError>> + Send + 'a>>;

/// What a tool gets besides its arguments.
pub struct ToolContext<'a> {
    /// The name the script called (one tool may be registered under several).
    pub name: &'a str,
    pub secrets: &'a JobSecrets,
    /// When this call must be answered; the registry enforces it, a tool may use it to
    /// bound its own work (e.g. not start a request it cannot finish).
    pub deadline: Instant,
}

/// A tool the broker can run. Implemented by the built-ins; a broker may register its
/// own.
pub trait Tool: Send + Sync + 'static {
    fn call<'a>(&'a self, cx: &'a ToolContext<'a>, args: serde_json::Value) -> ToolFuture<'a>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolErrorKind {
    UnknownTool,
    BadArguments,
    /// Refused by policy: host not allowed, secret not readable, ...
    Denied,
    Timeout,
    /// The tool ran and failed (connection refused, response too large, ...).
    Failed,
}

/// Why a call failed; its `Display` is what the script's Error says.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ToolError {
    pub kind: ToolErrorKind,
    pub message: String,
}

impl ToolError {
    pub fn new(kind: ToolErrorKind, message: impl Into<String>) -> ToolError {
        ToolError {
            kind,
            message: message.into(),
        }
    }
    pub fn bad_args(message: impl Into<String>) -> ToolError {
        ToolError::new(ToolErrorKind::BadArguments, message)
    }
    pub fn denied(message: impl Into<String>) -> ToolError {
        ToolError::new(ToolErrorKind::Denied, message)
    }
    pub fn failed(message: impl Into<String>) -> ToolError {
        ToolError::new(ToolErrorKind::Failed, message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ToolsError {
    #[error("tools.\"secrets:get\": {0}")]
    Secrets(#[from] SecretsError),
    #[error("tools.\"http:fetch\": {0}")]
    Http(String),
}

struct Registered {
    tool: Arc<dyn Tool>,
    timeout: Duration,
}

/// The tools scripts may call, by name.
#[derive(Default)]
pub struct Tools {
    tools: BTreeMap<String, Registered>,
    secrets: SecretStore,
}

impl Tools {
    /// No tools at all.
    pub fn new() -> Tools {
        Tools::default()
    }

    /// The built-ins the config enables. Reads secrets now, so a missing one fails
    /// start-up instead of a script.
    pub fn from_config(config: &ToolsConfig) -> Result<Tools, ToolsError> {
        let mut tools = Tools::new();
        if config.echo.enabled {
            tools.register(
                "echo",
                Arc::new(echo::Echo),
                Duration::from_millis(config.echo.timeout_ms),
            );
        }
        if let Some(c) = config.secrets_get.as_ref().filter(|c| c.enabled) {
            tools.secrets = SecretStore::load(c)?;
            tools.register(
                "secrets:get",
                Arc::new(secrets::SecretsGet),
                Duration::from_millis(c.timeout_ms),
            );
        }
        if let Some(c) = config.http_fetch.as_ref().filter(|c| c.enabled) {
            let timeout = Duration::from_millis(c.timeout_ms);
            for (name, tool) in http::HttpFetch::family(c).map_err(ToolsError::Http)? {
                tools.register(name, Arc::new(tool), timeout);
            }
        }
        Ok(tools)
    }

    /// Adds (or replaces) a tool. `timeout` is its per-call deadline, further capped by
    /// the job's remaining time.
    pub fn register(&mut self, name: impl Into<String>, tool: Arc<dyn Tool>, timeout: Duration) {
        self.tools.insert(name.into(), Registered { tool, timeout });
    }

    /// Replaces the secrets `secrets:get` reads from.
    pub fn set_secrets(&mut self, secrets: SecretStore) {
        self.secrets = secrets;
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tools.keys().map(String::as_str)
    }

    /// `name` as a metric label: a configured tool's name, else `unknown`, so that the
    /// names scripts make up cannot grow the label set.
    pub fn metric_label<'a>(&'a self, name: &str) -> &'a str {
        self.tools
            .get_key_value(name)
            .map_or("unknown", |(name, _)| name.as_str())
    }

    /// A fresh per-job secrets context: handles issued in it resolve in it only.
    pub fn job_secrets(&self) -> JobSecrets {
        self.secrets.for_job()
    }

    /// Runs one call: `args_json` in, the result's JSON out. Ends by `job_deadline` at the
    /// latest. The arguments, the result and the error are scrubbed of secret values.
    pub async fn call(
        &self,
        secrets: &JobSecrets,
        name: &str,
        args_json: &str,
        job_deadline: Instant,
    ) -> Result<String, ToolError> {
        let outcome = self
            .call_inner(secrets, name, args_json, job_deadline)
            .await;
        match outcome {
            Ok(value) => {
                let json = serde_json::to_string(&value).map_err(|e| {
                    ToolError::failed(format!("the result is not JSON-encodable: {e}"))
                })?;
                // Scrubbing the text is much quicker than walking the value, and the
                // JSON escapes in it are among the encodings scrubbing undoes.
                let json = secrets.scrub_json_text(&json).into_owned();
                if json.len() > MAX_RESULT_BYTES {
                    return Err(ToolError::failed(format!(
                        "the result is {} bytes of JSON; at most {MAX_RESULT_BYTES} can be returned",
                        json.len()
                    )));
                }
                Ok(json)
            }
            Err(mut error) => {
                error.message = secrets.scrub(&error.message).into_owned();
                Err(error)
            }
        }
    }

    async fn call_inner(
        &self,
        secrets: &JobSecrets,
        name: &str,
        args_json: &str,
        job_deadline: Instant,
    ) -> Result<serde_json::Value, ToolError> {
        let Some(registered) = self.tools.get(name) else {
            let available = self
                .tools
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(ToolError::new(
                ToolErrorKind::UnknownTool,
                format!("unknown tool `{name}`; this broker has: {available}"),
            ));
        };
        let args: serde_json::Value = serde_json::from_str(&secrets.scrub_json_text(args_json))
            .map_err(|e| ToolError::bad_args(format!("arguments are not JSON: {e}")))?;
        let now = Instant::now();
        let deadline = (now + registered.timeout).min(job_deadline);
        let cx = ToolContext {
            name,
            secrets,
            deadline,
        };
        match tokio::time::timeout_at(deadline, registered.tool.call(&cx, args)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(ToolError::new(
                ToolErrorKind::Timeout,
                format!(
                    "no answer within {} ms",
                    deadline.saturating_duration_since(now).as_millis()
                ),
            )),
        }
    }
}

/// Deserialises a tool's arguments, turning serde's message into a script-facing one.
pub(crate) fn parse_args<T: serde::de::DeserializeOwned>(
    args: serde_json::Value,
    usage: &str,
) -> Result<T, ToolError> {
    serde_json::from_value(args).map_err(|e| ToolError::bad_args(format!("{e}; expected {usage}")))
}
