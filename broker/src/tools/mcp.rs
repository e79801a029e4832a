//! MCP servers as tool sources: `[mcp.NAME]`, a streamable-HTTP `url` or a stdio
//! `command`, through the official Rust MCP SDK (`rmcp`).
//!
//! The server's tools are listed in the background ([`super::source`]) and become
//! `NAME:tool`, with the input schema the server gives, so the broker checks a call's
//! arguments before the server sees them. One connection per server, shared by every
//! job: it is opened at the first listing or call that needs it, and opened again (a
//! stdio command started again) when it is found broken, with a growing pause between
//! failed attempts. A stdio server's stderr goes to the broker's log; it is killed when
//! its connection is dropped, and with it when the broker exits.
//!
//! What reaches the script on failure names the server, never its URL, its command or
//! what the SDK said about the transport: those go to the broker's log.
//!
//! A result becomes the script's value by [`outcome`]: the server's `structuredContent`
//! when there is one; else the text of a lone text block, parsed when it is JSON; else
//! the content blocks as MCP gives them. A result with `isError` becomes an Error with
//! the text of its text blocks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::ServiceExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ContentBlock,
    Implementation,
};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::transport::streamable_http_client::{
    StreamableHttpClientTransportConfig, StreamableHttpError,
};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, Command};
use tokio::time::Instant;

use super::source::{ListFuture, Listed, Lister};
use super::webhook::MAX_ERROR_CHARS;
use super::{Tool, ToolContext, ToolError, ToolFuture, ToolSpec, shorten};
use crate::config::{MCP_INHERITED_ENV, McpConfig};

/// Opening a connection: the `initialize` handshake, and for a stdio server the start
/// of its program (an interpreter's start-up counts; seconds are usual).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a listing may wait for a connection (the source gives it 10 s in all).
const LIST_CONNECT_WAIT: Duration = Duration::from_secs(9);
/// The pause after the first failure to connect (or a connection found broken); it
/// doubles with each further one, up to [`MAX_BACKOFF`], and a call or listing that
/// succeeds resets it. A server that crashes at once is not restarted in a tight loop.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// What one message from the server may weigh at least: a listing of many tools.
const MIN_MESSAGE_BYTES: usize = 4 << 20;
/// The longest stderr line of a stdio server that is logged whole.
const MAX_STDERR_LINE: usize = 4096;

/// One `[mcp.NAME]` server: lists its tools and is each of them.
pub(crate) struct McpServer(Arc<Inner>);

enum Endpoint {
    Http {
        url: Arc<str>,
        client: reqwest::Client,
    },
    Stdio {
        program: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
    },
}

struct Inner {
    server: String,
    endpoint: Endpoint,
    reveal: Vec<String>,
    /// The largest message accepted from the server: a line on stdio, a body or an
    /// event over HTTP. Room for a result of `max_result_bytes` given twice (as
    /// `structuredContent` and as text, as SDKs do) and for a long listing.
    max_message_bytes: usize,
    max_concurrency: usize,
    state: Mutex<State>,
    /// Held while a connection is being opened: one attempt at a time.
    connecting: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct State {
    current: Option<Arc<Connection>>,
    /// Failures since the last call or listing that succeeded.
    failures: u32,
    /// No new attempt before this (after a failure).
    retry_at: Option<Instant>,
    /// Counts attempts that failed, so a caller that waited for another's attempt
    /// does not try again at once.
    failed_attempts: u64,
}

struct Connection {
    id: u64,
    service: RunningService<RoleClient, ClientConfig>,
    /// A stdio server's process, killed when the connection is dropped.
    _child: Option<Child>,
}

impl Connection {
    fn alive(&self) -> bool {
        !self.service.is_closed() && !self.service.peer().is_transport_closed()
    }
}

impl McpServer {
    pub(crate) fn new(
        server: &str,
        config: &McpConfig,
        reveal: Vec<String>,
    ) -> Result<McpServer, String> {
        let endpoint = match (&config.url, &config.command) {
            (Some(url), _) => Endpoint::Http {
                url: url.as_str().into(),
                client: super::http::client(None)?,
            },
            (None, Some(command)) => {
                let (program, args) = command.split_first().ok_or("command must name a program")?;
                Endpoint::Stdio {
                    program: program.clone(),
                    args: args.to_vec(),
                    env: config.env.clone(),
                }
            }
            (None, None) => return Err("give `url` or `command`".into()),
        };
        let max_result = config.max_result_bytes as usize;
        Ok(McpServer(Arc::new(Inner {
            server: server.to_owned(),
            endpoint,
            reveal,
            max_message_bytes: MIN_MESSAGE_BYTES.max(2 * max_result + (64 << 10)),
            max_concurrency: config.max_concurrency as usize,
            state: Mutex::new(State::default()),
            connecting: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(1),
        })))
    }
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, message: impl std::fmt::Display) -> ToolError {
        ToolError::failed(format!("mcp server `{}` {message}", self.server))
    }

    fn unreachable(&self) -> ToolError {
        self.fail("is unreachable")
    }

    /// The open connection, if it still works. One found broken is dropped (for a
    /// stdio server: its process killed) and counts as a failure.
    fn current(&self) -> Option<Arc<Connection>> {
        let mut state = self.state();
        let connection = state.current.clone()?;
        if connection.alive() {
            return Some(connection);
        }
        tracing::warn!(server = %self.server, "the MCP server's connection was lost; reconnecting at the next listing or call");
        state.current = None;
        note_failure(&mut state);
        None
    }

    /// A working connection, opened now if need be; fails at once when the next
    /// attempt is not due before `deadline`.
    async fn connection(self: &Arc<Self>, deadline: Instant) -> Result<Arc<Connection>, ToolError> {
        if let Some(connection) = self.current() {
            return Ok(connection);
        }
        if self.state().retry_at.is_some_and(|at| at > deadline) {
            return Err(self.unreachable());
        }
        // In a task of its own, so that an attempt a caller gives up on (its deadline)
        // still completes and serves the next caller.
        let inner = self.clone();
        match tokio::spawn(async move { inner.open().await }).await {
            Ok(Some(connection)) => Ok(connection),
            _ => Err(self.unreachable()),
        }
    }

    async fn open(self: Arc<Self>) -> Option<Arc<Connection>> {
        let failed_before = self.state().failed_attempts;
        let _turn = self.connecting.lock().await;
        if let Some(connection) = self.current() {
            return Some(connection);
        }
        let retry_at = {
            let state = self.state();
            if state.failed_attempts != failed_before {
                // Another caller's attempt failed while this one waited.
                return None;
            }
            state.retry_at
        };
        if let Some(at) = retry_at {
            tokio::time::sleep_until(at).await;
        }
        let outcome = match tokio::time::timeout(CONNECT_TIMEOUT, self.connect()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!(
                "no answer to `initialize` within {} s",
                CONNECT_TIMEOUT.as_secs()
            )),
        };
        let mut state = self.state();
        match outcome {
            Ok(connection) => {
                tracing::info!(server = %self.server, "connected to the MCP server");
                let connection = Arc::new(connection);
                state.current = Some(connection.clone());
                Some(connection)
            }
            Err(reason) => {
                tracing::warn!(server = %self.server, %reason, "connecting to the MCP server failed");
                state.failed_attempts += 1;
                note_failure(&mut state);
                None
            }
        }
    }

    /// Opens a connection: starts the command or reaches the URL, and initializes.
    async fn connect(&self) -> Result<Connection, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let client = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("enclave-broker", env!("CARGO_PKG_VERSION")),
        );
        match &self.endpoint {
            Endpoint::Http { url, client: http } => {
                let config = StreamableHttpClientTransportConfig::with_uri(url.clone())
                    .max_concurrent_requests(self.max_concurrency)
                    .max_json_response_size(self.max_message_bytes)
                    .max_sse_event_size(self.max_message_bytes);
                let transport = StreamableHttpClientTransport::with_client(http.clone(), config);
                let service = client
                    .serve(transport)
                    .await
                    .map_err(|e| format!("{url}: {e}"))?;
                Ok(Connection {
                    id,
                    service,
                    _child: None,
                })
            }
            Endpoint::Stdio { program, args, env } => {
                let mut command = Command::new(program);
                command.args(args).env_clear();
                for name in MCP_INHERITED_ENV {
                    if let Some(value) = std::env::var_os(name) {
                        command.env(name, value);
                    }
                }
                command
                    .envs(env)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .kill_on_drop(true);
                let mut child = command
                    .spawn()
                    .map_err(|e| format!("starting `{program}`: {e}"))?;
                let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                    return Err("the child's stdin or stdout is missing".into());
                };
                if let Some(stderr) = child.stderr.take() {
                    tokio::spawn(log_stderr(self.server.clone(), child.id(), stderr));
                }
                let transport = AsyncRwTransport::new_client(stdout, stdin)
                    .with_max_line_length(self.max_message_bytes);
                // On failure `child` is dropped here, which kills it.
                let service = client
                    .serve(transport)
                    .await
                    .map_err(|e| format!("`{program}`: {e}"))?;
                tracing::info!(server = %self.server, pid = ?child.id(), "started the MCP server");
                Ok(Connection {
                    id,
                    service,
                    _child: Some(child),
                })
            }
        }
    }

    fn succeeded(&self) {
        let mut state = self.state();
        state.failures = 0;
        state.retry_at = None;
    }

    /// A request on `connection` failed with `error`: the script's error, and (when the
    /// connection itself broke) the connection dropped so the next use opens another.
    fn request_failed(
        &self,
        connection: &Connection,
        what: &str,
        error: ServiceError,
    ) -> ToolError {
        tracing::warn!(server = %self.server, %what, %error, "MCP request failed");
        let broken = match &error {
            ServiceError::TransportSend(_) | ServiceError::TransportClosed => true,
            _ => !connection.alive(),
        };
        if broken {
            let mut state = self.state();
            if state
                .current
                .as_ref()
                .is_some_and(|c| c.id == connection.id)
            {
                state.current = None;
                note_failure(&mut state);
            }
        }
        match &error {
            ServiceError::McpError(data) => self.fail(format_args!(
                "refused the call: {}",
                shorten(&data.message, MAX_ERROR_CHARS)
            )),
            ServiceError::TransportSend(e) if too_large(e) => self.fail(format_args!(
                "answered more than {} bytes",
                self.max_message_bytes
            )),
            ServiceError::TransportClosed => self.fail("closed the connection before answering"),
            ServiceError::UnexpectedResponse => {
                self.fail("answered something other than a tool result")
            }
            ServiceError::Cancelled { .. } => self.fail("cancelled the call"),
            _ => self.unreachable(),
        }
    }

    async fn call(
        self: &Arc<Self>,
        tool: &str,
        cx: &ToolContext<'_>,
        args: Value,
    ) -> Result<Value, ToolError> {
        let arguments = match args {
            Value::Null => None,
            Value::Object(args) if self.reveal.is_empty() => Some(args),
            Value::Object(args) => {
                let json = Value::Object(args).to_string();
                let revealed = cx.secrets.reveal_in_json(&json, &self.reveal);
                match serde_json::from_str(&revealed) {
                    Ok(Value::Object(args)) => Some(args),
                    _ => return Err(self.fail("could not be given the call's secrets")),
                }
            }
            _ => {
                return Err(ToolError::bad_args(
                    "an MCP tool takes an object of named arguments",
                ));
            }
        };
        let connection = self.connection(cx.deadline).await?;
        let mut params = CallToolRequestParams::new(tool.to_owned());
        if let Some(arguments) = arguments {
            params = params.with_arguments(arguments);
        }
        // Dropped at the call's deadline: rmcp then tells the server the request is
        // cancelled (`notifications/cancelled`).
        match connection.service.peer().call_tool(params).await {
            Ok(result) => {
                self.succeeded();
                outcome(result)
            }
            Err(error) => Err(self.request_failed(&connection, "tools/call", error)),
        }
    }

    async fn list(self: &Arc<Self>) -> Result<Vec<Listed>, String> {
        let connection = self
            .connection(Instant::now() + LIST_CONNECT_WAIT)
            .await
            .map_err(|_| "not connected (the reason is logged above)".to_owned())?;
        let tools = match connection.service.peer().list_all_tools().await {
            Ok(tools) => tools,
            Err(error) => {
                self.request_failed(&connection, "tools/list", error);
                return Err("tools/list failed (the reason is logged above)".into());
            }
        };
        self.succeeded();
        Ok(tools
            .into_iter()
            .map(|tool| {
                let description = tool
                    .description
                    .as_deref()
                    .or(tool.title.as_deref())
                    .unwrap_or_default()
                    .to_owned();
                let schema = Value::Object((*tool.input_schema).clone());
                Listed {
                    name: format!("{}:{}", self.server, tool.name),
                    spec: ToolSpec::new(description, schema),
                    tool: Arc::new(McpTool {
                        server: self.clone(),
                        name: tool.name.into_owned(),
                    }) as Arc<dyn Tool>,
                }
            })
            .collect())
    }
}

/// After a failure: the next attempt waits, longer each time.
fn note_failure(state: &mut State) {
    state.failures = state.failures.saturating_add(1);
    let backoff = FIRST_BACKOFF
        .saturating_mul(1 << (state.failures - 1).min(16))
        .min(MAX_BACKOFF);
    state.retry_at = Some(Instant::now() + backoff);
}

/// Whether a transport error is the HTTP transport refusing an answer for its size.
fn too_large(error: &rmcp::transport::DynamicTransportError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error.error.as_ref());
    while let Some(e) = source {
        if let Some(StreamableHttpError::<reqwest::Error>::ResponseBodyTooLarge { .. }) =
            e.downcast_ref::<StreamableHttpError<reqwest::Error>>()
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// A stdio server's stderr, line by line into the broker's log (never to scripts).
async fn log_stderr(server: String, pid: Option<u32>, mut stderr: ChildStderr) {
    let mut buf = vec![0u8; 8192];
    let mut line: Vec<u8> = Vec::new();
    let mut dropped = false;
    let emit = |line: &mut Vec<u8>, dropped: &mut bool| {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end();
        if !text.is_empty() {
            let more = if *dropped { " …" } else { "" };
            tracing::info!(server = %server, pid = ?pid, "mcp server stderr: {text}{more}");
        }
        line.clear();
        *dropped = false;
    };
    loop {
        let n = match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &byte in &buf[..n] {
            if byte == b'\n' {
                emit(&mut line, &mut dropped);
            } else if line.len() < MAX_STDERR_LINE {
                line.push(byte);
            } else {
                dropped = true;
            }
        }
    }
    emit(&mut line, &mut dropped);
}

/// What the script gets for an MCP tool's result:
///
/// - `isError: true`: an Error whose message is the text of the result's text blocks
///   (joined by newlines, at most 1000 characters);
/// - `structuredContent` when the server gives it (any JSON);
/// - else a lone text block's text, parsed when it is JSON (`"42"` gives the number
///   42, `"{\"a\":1}"` an object), as it is when not;
/// - else no content: `null`;
/// - else the content blocks as MCP writes them: `[{"type": "text", "text": ...},
///   {"type": "image", "data": <base64>, "mimeType": ...}, ...]`.
pub(crate) fn outcome(result: CallToolResult) -> Result<Value, ToolError> {
    if result.is_error == Some(true) {
        let text: Vec<&str> = result
            .content
            .iter()
            .filter_map(|block| block.as_text().map(|t| t.text.as_str()))
            .collect();
        let message = text.join("\n");
        let message = if message.trim().is_empty() {
            "the tool failed and gave no message".to_owned()
        } else {
            shorten(&message, MAX_ERROR_CHARS)
        };
        return Err(ToolError::failed(message));
    }
    if let Some(structured) = result.structured_content {
        return Ok(structured);
    }
    match result.content.as_slice() {
        [] => Ok(Value::Null),
        [ContentBlock::Text(text)] => {
            Ok(serde_json::from_str(&text.text)
                .unwrap_or_else(|_| Value::String(text.text.clone())))
        }
        blocks => serde_json::to_value(blocks).map_err(|e| {
            ToolError::failed(format!("the tool's content is not JSON-encodable: {e}"))
        }),
    }
}

impl Lister for McpServer {
    fn list(&self) -> ListFuture<'_> {
        Box::pin(self.0.list())
    }
}

/// One listed tool: calls go to its server under the server's own name for it.
struct McpTool {
    server: Arc<Inner>,
    name: String,
}

impl Tool for McpTool {
    fn call<'a>(&'a self, cx: &'a ToolContext<'a>, args: Value) -> ToolFuture<'a> {
        Box::pin(self.server.call(&self.name, cx, args))
    }
}

#[cfg(test)]
mod tests {
    use rmcp::model::ContentBlock;
    use serde_json::json;

    use super::*;

    fn result(value: Value) -> CallToolResult {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn structured_content_comes_first() {
        let r = result(json!({
            "content": [{"type": "text", "text": "{\"rows\": [1]}"}],
            "structuredContent": {"rows": [1, 2]},
        }));
        assert_eq!(outcome(r).unwrap(), json!({"rows": [1, 2]}));
    }

    #[test]
    fn a_lone_text_block_is_parsed_when_it_is_json() {
        let text = |t: &str| result(json!({"content": [{"type": "text", "text": t}]}));
        assert_eq!(outcome(text("{\"a\": 1}")).unwrap(), json!({"a": 1}));
        assert_eq!(outcome(text("42")).unwrap(), json!(42));
        assert_eq!(outcome(text("hello")).unwrap(), json!("hello"));
        assert_eq!(outcome(text("")).unwrap(), json!(""));
        assert_eq!(
            outcome(result(json!({"content": []}))).unwrap(),
            Value::Null
        );
    }

    #[test]
    fn other_content_stays_as_mcp_gives_it() {
        let r = CallToolResult::success(vec![
            ContentBlock::text("a"),
            ContentBlock::image("aGk=", "image/png"),
        ]);
        assert_eq!(
            outcome(r).unwrap(),
            json!([
                {"type": "text", "text": "a"},
                {"type": "image", "data": "aGk=", "mimeType": "image/png"},
            ])
        );
    }

    #[test]
    fn errors_carry_the_tools_text() {
        let r = result(json!({
            "content": [{"type": "text", "text": "no such table"}, {"type": "text", "text": "hint: t"}],
            "isError": true,
        }));
        assert_eq!(outcome(r).unwrap_err().message, "no such table\nhint: t");
        let r = result(json!({"content": [], "isError": true}));
        assert_eq!(
            outcome(r).unwrap_err().message,
            "the tool failed and gave no message"
        );
        let r = result(json!({
            "content": [{"type": "text", "text": "x".repeat(5000)}],
            "isError": true,
        }));
        assert_eq!(
            outcome(r).unwrap_err().message.chars().count(),
            MAX_ERROR_CHARS + 1
        );
        // Structured content does not turn an error into a result.
        let r = result(json!({
            "content": [{"type": "text", "text": "bad"}],
            "structuredContent": {"ok": false},
            "isError": true,
        }));
        assert_eq!(outcome(r).unwrap_err().message, "bad");
    }

    #[tokio::test]
    async fn names_may_not_overlap_built_ins_or_other_sources() {
        use crate::config::Config;
        use crate::tools::Tools;
        let tools_for = |extra: &str| {
            let config = Config::parse(
                &format!(
                    "[tools.\"http:fetch\"]\nallow_hosts = [\"a.com\"]\n\
                     [tool_services.db]\ngrpc = \"http://127.0.0.1:1\"\n{extra}"
                ),
                std::path::Path::new("/"),
            )
            .unwrap();
            let mut tools = Tools::from_config(&config.tools).unwrap();
            tools.add_services(&config.tool_services).unwrap();
            tools
                .add_mcp_servers(&config.mcp)
                .map(|()| tools)
                .map_err(|e| e.to_string())
        };
        let url = "url = \"http://127.0.0.1:1/mcp\"";
        for (section, expected) in [
            (
                "db",
                "mcp.db: answers db:*, which overlaps tool_services.db (db:*)",
            ),
            (
                "http",
                "mcp.http: answers http:*, which takes the name of the tool `http:fetch`",
            ),
            ("tools", "`tools:list` is the broker's own"),
        ] {
            let err = tools_for(&format!("[mcp.{section}]\n{url}\n"))
                .err()
                .unwrap();
            assert!(err.contains(expected), "{section}: {err}");
        }
        let err = tools_for(&format!("[mcp.a]\n{url}\n[mcp.a2]\n{url}\n")).err();
        assert!(err.is_none(), "{err:?}");
        let err = tools_for(&format!("[mcp.x]\n{url}\nsecrets = [\"nope\"]\n"))
            .err()
            .unwrap();
        assert!(
            err.contains("mcp.x: secrets: `nope` is not a readable secret"),
            "{err}"
        );
        let tools = tools_for(&format!("[mcp.search]\n{url}\n")).unwrap();
        assert!(tools.names().any(|n| n == "mcp.search"));
        assert_eq!(tools.metric_label("search:web"), "mcp.search");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut state = State::default();
        let waits: Vec<Duration> = (0..12)
            .map(|_| {
                let before = Instant::now();
                note_failure(&mut state);
                state.retry_at.unwrap() - before
            })
            .collect();
        assert!(waits[0] >= FIRST_BACKOFF && waits[0] < FIRST_BACKOFF * 2);
        assert!(waits[1] >= FIRST_BACKOFF * 2);
        assert!(
            waits
                .iter()
                .all(|w| *w <= MAX_BACKOFF + Duration::from_millis(50))
        );
        assert!(waits[11] >= MAX_BACKOFF);
    }
}
