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

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::config::{McpConfig, ToolServiceConfig, ToolsConfig};
use crate::secrets::{JobSecrets, SecretStore, SecretsError};

mod answers;
pub mod echo;
pub mod http;
mod mcp;
pub(crate) mod schema;
pub mod secrets;
mod service;
mod source;
mod webhook;

use answers::Answers;
use schema::ArgsCheck;
pub use schema::ToolSpec;
use source::Source;

/// The name `listTools()` calls: answered by the registry itself with its catalogue.
/// Not in the catalogue (it is not a tool of the broker's config) and not registrable.
pub const LIST_TOOLS: &str = "tools:list";

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
    /// The job's id (random, per job), for tools that keep per-job state.
    pub job_id: &'a str,
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
    #[error("tool `{tool}`: its input schema is not a usable JSON Schema: {message}")]
    Schema { tool: String, message: String },
    #[error("tool_services.{service}: {message}")]
    Service { service: String, message: String },
    #[error("mcp.{server}: {message}")]
    Mcp { server: String, message: String },
    #[error("`{LIST_TOOLS}` is the broker's own (scripts' listTools()); no tool may take its name")]
    Reserved,
}

/// A tool as the registry holds it: the tool, what it is, and its limits.
pub(crate) struct Registered {
    tool: Arc<dyn Tool>,
    spec: ToolSpec,
    check: ArgsCheck,
    limits: CallLimits,
}

impl Registered {
    pub(crate) fn new(
        name: &str,
        tool: Arc<dyn Tool>,
        spec: ToolSpec,
        limits: CallLimits,
    ) -> Result<Registered, ToolsError> {
        let check =
            ArgsCheck::compile(&spec.input_schema).map_err(|message| ToolsError::Schema {
                tool: name.to_owned(),
                message,
            })?;
        Ok(Registered {
            tool,
            spec,
            check,
            limits,
        })
    }
}

/// What bounds each call of a tool, besides the job's own deadline.
#[derive(Clone)]
pub(crate) struct CallLimits {
    pub(crate) timeout: Duration,
    /// Calls in flight to the same place (a tool service), shared by its tools.
    pub(crate) concurrency: Option<Arc<Semaphore>>,
    pub(crate) max_result_bytes: usize,
}

impl CallLimits {
    pub(crate) fn timeout(timeout: Duration) -> CallLimits {
        CallLimits {
            timeout,
            concurrency: None,
            max_result_bytes: MAX_RESULT_BYTES,
        }
    }

    /// A remote source's limits, from its config: its calls share one concurrency cap.
    fn remote(timeout_ms: u64, max_concurrency: u32, max_result_bytes: u64) -> CallLimits {
        CallLimits {
            timeout: Duration::from_millis(timeout_ms),
            concurrency: Some(Arc::new(Semaphore::new(max_concurrency as usize))),
            max_result_bytes: max_result_bytes as usize,
        }
    }
}

/// The tools scripts may call, by name: the built-ins, declared tools, and the tools
/// that services list.
#[derive(Default)]
pub struct Tools {
    tools: BTreeMap<String, Arc<Registered>>,
    sources: Vec<Arc<Source>>,
    /// Every service's label and names, for the overlap check.
    services: Vec<(String, Answers)>,
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
                echo::spec(),
                Duration::from_millis(config.echo.timeout_ms),
            )?;
        }
        if let Some(c) = config.secrets_get.as_ref().filter(|c| c.enabled) {
            tools.secrets = SecretStore::load(c)?;
            tools.register(
                "secrets:get",
                Arc::new(secrets::SecretsGet),
                secrets::spec(),
                Duration::from_millis(c.timeout_ms),
            )?;
        }
        if let Some(c) = config.http_fetch.as_ref().filter(|c| c.enabled) {
            let timeout = Duration::from_millis(c.timeout_ms);
            for (name, tool) in http::HttpFetch::family(c).map_err(ToolsError::Http)? {
                let spec = tool.spec();
                tools.register(name, Arc::new(tool), spec, timeout)?;
            }
        }
        Ok(tools)
    }

    /// Adds the integrator's tool services (`[tool_services.*]`). After the built-ins,
    /// which no service may answer for. A gRPC service is listed in the background (so
    /// it must run inside a tokio runtime): one that is down does not stop the broker.
    pub fn add_services(
        &mut self,
        services: &BTreeMap<String, ToolServiceConfig>,
    ) -> Result<(), ToolsError> {
        for (name, config) in services {
            let answers = Answers::parse(config.answers(name));
            let error = |message| ToolsError::Service {
                service: name.clone(),
                message,
            };
            self.check_answers(&answers, error)?;
            self.services
                .push((format!("tool_services.{name}"), answers.clone()));
            let limits = CallLimits::remote(
                config.timeout_ms,
                config.max_concurrency,
                config.max_result_bytes,
            );
            let reveal = self.revealed_secrets(&config.secrets, error)?;
            if let Some(url) = &config.webhook {
                let hook = Arc::new(webhook::Webhook::new(name, url, config, reveal)?);
                for (tool, declared) in &config.tools {
                    if !answers.matches(tool) {
                        return Err(ToolsError::Service {
                            service: name.clone(),
                            message: format!(
                                "declares `{tool}`, outside the names it answers ({answers})"
                            ),
                        });
                    }
                    let spec = webhook::spec(name, tool, declared)?;
                    let registered = Registered::new(tool, hook.clone(), spec, limits.clone())?;
                    self.insert(tool.clone(), registered)?;
                }
            } else if let Some(url) = &config.grpc {
                let lister = service::GrpcService::new(name, url, config, reveal)?;
                let source = Source::start(
                    format!("tool_services.{name}"),
                    answers,
                    limits,
                    Duration::from_secs(config.refresh_secs),
                    Arc::new(lister),
                );
                self.sources.push(source);
            }
        }
        Ok(())
    }

    /// Adds the MCP servers (`[mcp.NAME]`), whose tools are `NAME:tool`. After the
    /// built-ins and the tool services, whose names none may overlap. Each server is
    /// connected to and listed in the background (so this must run inside a tokio
    /// runtime): one that is down does not stop the broker.
    pub fn add_mcp_servers(
        &mut self,
        servers: &BTreeMap<String, McpConfig>,
    ) -> Result<(), ToolsError> {
        for (name, config) in servers {
            let error = |message| ToolsError::Mcp {
                server: name.clone(),
                message,
            };
            let answers = Answers::parse(McpConfig::answers(name));
            self.check_answers(&answers, error)?;
            let label = format!("mcp.{name}");
            self.services.push((label.clone(), answers.clone()));
            let limits = CallLimits::remote(
                config.timeout_ms,
                config.max_concurrency,
                config.max_result_bytes,
            );
            let reveal = self.revealed_secrets(&config.secrets, error)?;
            let server = mcp::McpServer::new(name, config, reveal).map_err(error)?;
            let source = Source::start(
                label,
                answers,
                limits,
                Duration::from_secs(config.refresh_secs),
                Arc::new(server),
            );
            self.sources.push(source);
        }
        Ok(())
    }

    /// New names (a service's, an MCP server's) may not overlap a tool already here or
    /// another source's. `clash` makes the error, naming the config section.
    fn check_answers(
        &self,
        answers: &Answers,
        clash: impl Fn(String) -> ToolsError,
    ) -> Result<(), ToolsError> {
        if let Some(name) = self.tools.keys().find(|name| answers.matches(name)) {
            return Err(clash(format!(
                "answers {answers}, which takes the name of the tool `{name}`"
            )));
        }
        if answers.matches(LIST_TOOLS) {
            return Err(ToolsError::Reserved);
        }
        if let Some((other, theirs)) = self.services.iter().find(|(_, a)| a.overlaps(answers)) {
            return Err(clash(format!(
                "answers {answers}, which overlaps {other} ({theirs})"
            )));
        }
        Ok(())
    }

    /// The secrets a service receives as values: each must be readable.
    fn revealed_secrets(
        &self,
        names: &[String],
        error: impl Fn(String) -> ToolsError,
    ) -> Result<Vec<String>, ToolsError> {
        for name in names {
            if !self.secrets.names().any(|readable| readable == name) {
                return Err(error(format!(
                    "secrets: `{name}` is not a readable secret (a [tools.\"secrets:get\".secrets.{name}] section)"
                )));
            }
        }
        Ok(names.to_vec())
    }

    /// Adds (or replaces) a tool. `timeout` is its per-call deadline, further capped by
    /// the job's remaining time. Fails when `spec`'s schema does not compile.
    pub fn register(
        &mut self,
        name: impl Into<String>,
        tool: Arc<dyn Tool>,
        spec: ToolSpec,
        timeout: Duration,
    ) -> Result<(), ToolsError> {
        let name = name.into();
        let registered = Registered::new(&name, tool, spec, CallLimits::timeout(timeout))?;
        self.insert(name, registered)
    }

    fn insert(&mut self, name: String, registered: Registered) -> Result<(), ToolsError> {
        if name == LIST_TOOLS {
            return Err(ToolsError::Reserved);
        }
        self.tools.insert(name, Arc::new(registered));
        Ok(())
    }

    /// Every tool with its description and argument schema, sorted by name: what
    /// `ListTools` answers and `listTools()` returns. A service's tools as it last
    /// listed them.
    pub fn catalogue(&self) -> Vec<(String, ToolSpec)> {
        let mut all: Vec<(String, ToolSpec)> = self
            .tools
            .iter()
            .map(|(name, registered)| (name.clone(), registered.spec.clone()))
            .collect();
        for source in &self.sources {
            for (name, registered) in source.listed().iter() {
                all.push((name.clone(), registered.spec.clone()));
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The catalogue as `listTools()` gives it to a script, with the job's client tools.
    fn catalogue_json(&self, client_tools: &[(String, ToolSpec)]) -> serde_json::Value {
        let mut all = self.catalogue();
        all.extend(client_tools.iter().cloned());
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all.into_iter()
            .map(|(name, spec)| {
                serde_json::json!({
                    "name": name,
                    "description": spec.description,
                    "inputSchema": spec.input_schema,
                })
            })
            .collect()
    }

    /// Replaces the secrets `secrets:get` reads from.
    pub fn set_secrets(&mut self, secrets: SecretStore) {
        self.secrets = secrets;
    }

    /// The names of the tools the broker knows itself, and of the services it asks.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tools
            .keys()
            .map(String::as_str)
            .chain(self.sources.iter().map(|s| s.label()))
    }

    /// `name` as a metric label: a configured tool's name, a service's label for the
    /// tools it lists, else `unknown`, so that the names scripts make up (or a service
    /// lists) cannot grow the label set.
    pub fn metric_label<'a>(&'a self, name: &str) -> &'a str {
        if name == LIST_TOOLS {
            return LIST_TOOLS;
        }
        if let Some((name, _)) = self.tools.get_key_value(name) {
            return name;
        }
        self.sources
            .iter()
            .find(|s| s.answers().matches(name))
            .map_or("unknown", |s| s.label())
    }

    /// Whether `name` is the broker's: a tool it has, one a service of it answers, or
    /// `tools:list`. Client-provided tools may not take such a name.
    pub fn answers(&self, name: &str) -> bool {
        name == LIST_TOOLS
            || self.tools.contains_key(name)
            || self
                .services
                .iter()
                .any(|(_, answers)| answers.matches(name))
    }

    /// A fresh per-job secrets context: handles issued in it resolve in it only.
    pub fn job_secrets(&self) -> JobSecrets {
        self.secrets.for_job()
    }

    /// Runs one call: `args_json` in, the result's JSON out. Ends by `job_deadline` at the
    /// latest. The arguments, the result and the error are scrubbed of secret values.
    /// `job_id` names the job to tools that keep per-job state.
    pub async fn call(
        &self,
        job: &ToolJob<'_>,
        name: &str,
        args_json: &str,
    ) -> Result<String, ToolError> {
        let secrets = job.secrets;
        let outcome = self.call_inner(job, name, args_json).await;
        match outcome {
            Ok((value, max_bytes)) => {
                let json = serde_json::to_string(&value).map_err(|e| {
                    ToolError::failed(format!("the result is not JSON-encodable: {e}"))
                })?;
                // Scrubbing the text is much quicker than walking the value, and the
                // JSON escapes in it are among the encodings scrubbing undoes.
                let json = secrets.scrub_json_text(&json).into_owned();
                if json.len() > max_bytes {
                    return Err(ToolError::failed(format!(
                        "the result is {} bytes of JSON; at most {max_bytes} can be returned",
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

    /// The tool `name` names, or why there is none.
    fn lookup(&self, name: &str) -> Result<Arc<Registered>, ToolError> {
        if let Some(registered) = self.tools.get(name) {
            return Ok(registered.clone());
        }
        if let Some(source) = self.sources.iter().find(|s| s.answers().matches(name)) {
            return source.get(name);
        }
        let mut available: Vec<String> = self.tools.keys().cloned().collect();
        available.extend(self.sources.iter().map(|s| s.answers().to_string()));
        Err(ToolError::new(
            ToolErrorKind::UnknownTool,
            format!(
                "unknown tool `{name}`; this broker has: {}",
                available.join(", ")
            ),
        ))
    }

    async fn call_inner(
        &self,
        job: &ToolJob<'_>,
        name: &str,
        args_json: &str,
    ) -> Result<(serde_json::Value, usize), ToolError> {
        if name == LIST_TOOLS {
            return Ok((self.catalogue_json(job.client_tools), MAX_RESULT_BYTES));
        }
        let registered = self.lookup(name)?;
        let args: serde_json::Value = serde_json::from_str(&job.secrets.scrub_json_text(args_json))
            .map_err(|e| ToolError::bad_args(format!("arguments are not JSON: {e}")))?;
        registered.check.check(&args)?;
        let limits = &registered.limits;
        let now = Instant::now();
        let deadline = (now + limits.timeout).min(job.deadline);
        let timed_out = || {
            ToolError::new(
                ToolErrorKind::Timeout,
                format!(
                    "no answer within {} ms",
                    deadline.saturating_duration_since(now).as_millis()
                ),
            )
        };
        let _permit = match &limits.concurrency {
            None => None,
            Some(slots) => match tokio::time::timeout_at(deadline, slots.acquire()).await {
                Ok(Ok(permit)) => Some(permit),
                Ok(Err(_closed)) => return Err(ToolError::failed("the tool is shut down")),
                Err(_) => {
                    return Err(ToolError::new(
                        ToolErrorKind::Timeout,
                        format!(
                            "its service had no free slot (all its max_concurrency calls in flight) for the {} ms this call could wait",
                            deadline.saturating_duration_since(now).as_millis()
                        ),
                    ));
                }
            },
        };
        let cx = ToolContext {
            name,
            job_id: job.id,
            secrets: job.secrets,
            deadline,
        };
        match tokio::time::timeout_at(deadline, registered.tool.call(&cx, args)).await {
            Ok(outcome) => outcome.map(|value| (value, limits.max_result_bytes)),
            Err(_) => Err(timed_out()),
        }
    }
}

/// The job a call belongs to.
pub struct ToolJob<'a> {
    /// Random, per job: what tool services see as the job's id.
    pub id: &'a str,
    pub secrets: &'a JobSecrets,
    /// The job's own deadline; each call ends by it at the latest.
    pub deadline: Instant,
    /// The tools the job's client answers itself, which `listTools()` lists too.
    pub client_tools: &'a [(String, ToolSpec)],
}

/// `message` cut to `max` characters, `…` marking a cut: text from elsewhere (a
/// service, a server, a client, a schema error quoting a value) reaches scripts bounded.
pub(crate) fn shorten(message: &str, max: usize) -> String {
    let mut short: String = message.chars().take(max).collect();
    if short.len() < message.len() {
        short.push('…');
    }
    short
}

/// `deadline` as milliseconds since the Unix epoch: how a service in another process
/// is told when a call times out.
pub(crate) fn unix_ms(deadline: Instant) -> u64 {
    let left = deadline.saturating_duration_since(Instant::now());
    (std::time::SystemTime::now() + left)
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Deserialises a tool's arguments, turning serde's message into a script-facing one.
pub(crate) fn parse_args<T: serde::de::DeserializeOwned>(
    args: serde_json::Value,
    usage: &str,
) -> Result<T, ToolError> {
    serde_json::from_value(args).map_err(|e| ToolError::bad_args(format!("{e}; expected {usage}")))
}
