//! The broker's configuration, read from a TOML file.
//!
//! Every section and field is optional and every default is a named constant below with
//! the reason for its value, so an empty file is a working (embedded, echo-only) broker.
//! Unknown keys are errors rather than silently ignored: a misspelt `allow_host` must not
//! leave a tool open or closed without anyone noticing.
//!
//! New sections (`[sessions]`, `[limits]`, ...) go in [`Config`] as a field with
//! `#[serde(default)]` and their own struct with `deny_unknown_fields`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A tool call's own deadline when its section sets none. Echo and secrets answer in
/// microseconds; this only bounds a tool that hangs.
pub const DEFAULT_TOOL_TIMEOUT_MS: u64 = 5_000;
/// `http:fetch` deadline: long enough for a slow API, short enough that one stuck
/// upstream cannot eat a STANDARD job's 30 s.
pub const DEFAULT_HTTP_TIMEOUT_MS: u64 = 10_000;
/// `http:fetch` response cap: the body becomes a tool result that the script holds in
/// its heap (16 MiB at STRICT) and that crosses gRPC to the executor.
pub const DEFAULT_HTTP_MAX_RESPONSE_BYTES: u64 = 1 << 20;
/// Redirects followed by `http:fetch`, every hop checked against the allow-list. Five is
/// what real APIs need (http->https, a trailing slash, a moved resource) with room left.
pub const DEFAULT_HTTP_MAX_REDIRECTS: u32 = 5;
/// A response may not exceed this even if configured higher: it must fit in a tool
/// result ([`crate::tools::MAX_RESULT_BYTES`]) along with its JSON framing.
pub const MAX_HTTP_RESPONSE_BYTES: u64 = (enclave_proto::MAX_PLAINTEXT_LEN as u64) / 2;

/// How often a `dns` executor name is resolved again: quick enough to pick up
/// `docker compose --scale` within seconds, rare enough to cost nothing.
pub const DEFAULT_DNS_REFRESH_SECS: u64 = 5;
/// TCP connect to an executor. They sit on a private network and answer in
/// milliseconds; a second means the host is gone.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Opening a job's stream (connect, admission, the executor reading the job). Past this
/// the executor is treated as down and the job tries another.
pub const DEFAULT_START_TIMEOUT_MS: u64 = 3_000;
/// Executors a job may try before it fails: enough to get past one full and one dead
/// executor, few enough that an overloaded cluster answers quickly.
pub const DEFAULT_MAX_START_ATTEMPTS: u32 = 3;
/// How long an executor that failed to connect is skipped (unless nothing else is left,
/// or a health check finds it serving again).
pub const DEFAULT_DOWN_RETRY_MS: u64 = 2_000;
/// Health checks (grpc.health.v1) of every executor: they revive executors marked down
/// and notice draining ones before a job is sent there.
pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 2_000;
/// Jobs the embedded sandbox runs at once. Lower than a dedicated executor's 256: the
/// broker process also holds sessions and tool calls, and embedded mode is for one box.
pub const DEFAULT_EMBEDDED_MAX_JOBS: u32 = 64;
/// How long past a job's own time limit the broker waits for the executor's final
/// event: the executor stops the job at its limit, so only a stuck or partitioned
/// executor ever reaches this.
pub const DEFAULT_DEADLINE_MARGIN_MS: u64 = 2_000;

/// A job's events waiting for a slow client, per job: above it the broker stops taking
/// the job's events from its executor (the job waits, its time limit running). A
/// client that reads at all, however slowly, keeps it below this; one that stopped
/// reading holds no more than this plus one HTTP/2 stream window.
pub const DEFAULT_OUTPUT_BUFFER_BYTES: u64 = 1 << 20;
/// How long a job with a full buffer waits for its client to read anything before it
/// ends with OUTPUT_STALLED: long enough for a client paused by a slow network or a
/// garbage collection, short enough that an abandoned stream frees its executor slot
/// well before a long job's time limit.
pub const DEFAULT_OUTPUT_STALL_MS: u64 = 10_000;

/// How long a client-provided tool's call waits for the client: a person or a program
/// answering a lookup does so in seconds; a client that never answers must cost the
/// script one call, not its whole time limit.
pub const DEFAULT_CLIENT_TOOL_TIMEOUT_MS: u64 = 10_000;
/// A tool service's per-call deadline when it sets none: a database query or a search
/// answers well inside it, and one stuck service still leaves a STANDARD job most of its
/// 30 s.
pub const DEFAULT_SERVICE_TIMEOUT_MS: u64 = 10_000;
/// Calls in flight to one tool service, from all jobs together: a script's
/// `Promise.all` over a thousand calls must not open a thousand requests to the
/// integrator's service. Calls past it wait for a turn within their deadline.
pub const DEFAULT_SERVICE_MAX_CONCURRENCY: u32 = 32;
/// A tool service's result cap; like `http:fetch`'s, it lands in the script's heap.
pub const DEFAULT_SERVICE_MAX_RESULT_BYTES: u64 = 1 << 20;
/// How often a gRPC tool service is asked for its tools again (new tools appear, removed
/// ones go), and how soon after a failed listing it is asked again.
pub const DEFAULT_SERVICE_REFRESH_SECS: u64 = 60;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub tools: ToolsConfig,
    /// `[tool_services.NAME]`: the integrator's own tools, answered by its services.
    #[serde(default)]
    pub tool_services: BTreeMap<String, ToolServiceConfig>,
    /// `[mcp.NAME]`: MCP servers whose tools scripts call as `NAME:tool`.
    #[serde(default)]
    pub mcp: BTreeMap<String, McpConfig>,
    #[serde(default)]
    pub executors: ExecutorsConfig,
    #[serde(default)]
    pub jobs: JobsConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Reads and checks a config file. Relative paths in it (the secrets file, the
    /// executors' CA file) are relative to the file's own directory, not to wherever the
    /// broker was started.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Config::parse(&text, base).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// Parses TOML text; relative paths resolve against `base_dir`.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            source: Box::new(source),
        })?;
        if let Some(file) = config
            .tools
            .secrets_get
            .as_mut()
            .and_then(|s| s.file.as_mut())
            && file.is_relative()
        {
            *file = base_dir.join(&*file);
        }
        for service in config.tool_services.values_mut() {
            if let Some(file) = service.hmac_key_file.as_mut()
                && file.is_relative()
            {
                *file = base_dir.join(&*file);
            }
        }
        if let Some(file) = config.executors.ca_file.as_mut()
            && file.is_relative()
        {
            *file = base_dir.join(&*file);
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let t = &self.tools;
        for (name, timeout) in [
            ("echo", t.echo.timeout_ms),
            (
                "secrets:get",
                t.secrets_get.as_ref().map_or(1, |s| s.timeout_ms),
            ),
            (
                "http:fetch",
                t.http_fetch.as_ref().map_or(1, |h| h.timeout_ms),
            ),
        ] {
            if timeout == 0 {
                return Err(invalid(format!(
                    "tools.\"{name}\".timeout_ms must be above zero"
                )));
            }
        }
        let http = t.http_fetch.as_ref().filter(|h| h.enabled);
        if let Some(secrets) = t.secrets_get.as_ref().filter(|s| s.enabled) {
            if secrets.file.is_none() && secrets.env.is_empty() {
                return Err(invalid(
                    "tools.\"secrets:get\" needs a `file`, an `env` list, or both",
                ));
            }
            if secrets.names.is_empty() && secrets.secrets.is_empty() {
                return Err(invalid(
                    "tools.\"secrets:get\" makes no secret readable: add a [tools.\"secrets:get\".secrets.<name>] section for each (with `hosts` and `inject`)",
                ));
            }
            for (name, binding) in &secrets.secrets {
                let at = format!("tools.\"secrets:get\".secrets.{name}");
                if binding.hosts.is_empty() {
                    return Err(invalid(format!(
                        "{at}.hosts is empty: name the hosts this secret may be sent to"
                    )));
                }
                for host in &binding.hosts {
                    let bound = HostPort::parse(host)
                        .map_err(|e| invalid(format!("{at}.hosts: `{host}`: {e}")))?;
                    // Only a diagnostic: requests are checked against both lists anyway.
                    if let Some(http) = http
                        && !http
                            .allow_hosts
                            .iter()
                            .filter_map(|a| HostPort::parse(a).ok())
                            .any(|a| a.host == bound.host)
                    {
                        return Err(invalid(format!(
                            "{at}.hosts: `{host}` is not in tools.\"http:fetch\".allow_hosts, so the secret could never be sent there"
                        )));
                    }
                }
            }
        }
        if let Some(http) = &t.http_fetch {
            for host in &http.allow_hosts {
                let entry = HostPort::parse(host).map_err(|e| {
                    invalid(format!("tools.\"http:fetch\".allow_hosts: `{host}`: {e}"))
                })?;
                if !http.allow_private_ips
                    && let Some(ip) = entry.ip()
                    && let Some(kind) = crate::tools::http::address::non_public(ip)
                {
                    return Err(invalid(format!(
                        "tools.\"http:fetch\".allow_hosts: `{host}` is a {kind} address, which http:fetch only reaches with `allow_private_ips = true`"
                    )));
                }
            }
            if http.max_response_bytes == 0 || http.max_response_bytes > MAX_HTTP_RESPONSE_BYTES {
                return Err(invalid(format!(
                    "tools.\"http:fetch\".max_response_bytes must be between 1 and {MAX_HTTP_RESPONSE_BYTES}"
                )));
            }
        }
        for (name, service) in &self.tool_services {
            service.validate(name)?;
        }
        for (name, server) in &self.mcp {
            server.validate(name)?;
        }
        let e = &self.executors;
        if !e.endpoints.is_empty() && e.dns.is_some() {
            return Err(invalid("executors: give `endpoints` or `dns`, not both"));
        }
        for endpoint in &e.endpoints {
            let uri: tonic::transport::Uri = endpoint
                .parse()
                .map_err(|err| invalid(format!("executors.endpoints: `{endpoint}`: {err}")))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.port_u16().is_none() {
                return Err(invalid(format!(
                    "executors.endpoints: `{endpoint}` must look like http://host:port (plaintext gRPC on a private network) or https://host:port (with `ca_file`)"
                )));
            }
        }
        if let Some(dns) = &e.dns {
            match dns.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
                _ => return Err(invalid(format!("executors.dns: `{dns}` must be host:port"))),
            }
        }
        for (name, value) in [
            ("refresh_secs", e.refresh_secs),
            ("connect_timeout_ms", e.connect_timeout_ms),
            ("start_timeout_ms", e.start_timeout_ms),
            ("health_interval_ms", e.health_interval_ms),
            ("max_start_attempts", e.max_start_attempts.into()),
            ("embedded_max_jobs", e.embedded_max_jobs.into()),
        ] {
            if value == 0 {
                return Err(invalid(format!("executors.{name} must be above zero")));
            }
        }
        for (name, value) in [
            ("output_buffer_bytes", self.jobs.output_buffer_bytes),
            ("output_stall_ms", self.jobs.output_stall_ms),
            ("client_tool_timeout_ms", self.jobs.client_tool_timeout_ms),
        ] {
            if value == 0 {
                return Err(invalid(format!("jobs.{name} must be above zero")));
            }
        }
        Ok(())
    }
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

/// `[tools.*]`: one optional section per built-in tool.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsConfig {
    /// On unless disabled: harmless, and what a first script tries.
    #[serde(default)]
    pub echo: EchoConfig,
    /// Off unless configured: no secret is readable by default.
    #[serde(rename = "secrets:get")]
    pub secrets_get: Option<SecretsConfig>,
    /// Off unless configured: scripts reach no network by default. Also registered as
    /// `http:post` and `http:get`.
    #[serde(rename = "http:fetch")]
    pub http_fetch: Option<HttpFetchConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_tool_timeout")]
    pub timeout_ms: u64,
}

impl Default for EchoConfig {
    fn default() -> Self {
        EchoConfig {
            enabled: true,
            timeout_ms: DEFAULT_TOOL_TIMEOUT_MS,
        }
    }
}

/// Where secrets come from, which ones scripts may ask for, and where each may be sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A TOML file of `name = "value"` lines.
    pub file: Option<PathBuf>,
    /// Environment variables to read; a variable answers to the name that equals it
    /// ignoring ASCII case (`API_KEY` is the secret `api_key`).
    #[serde(default)]
    pub env: Vec<String>,
    /// `[tools."secrets:get".secrets.<name>]`: the secrets `secrets:get` answers for, each
    /// with the hosts it may be sent to and where in the request. Each must be found in
    /// `file` or `env` when the broker starts. Listed separately from the sources, so
    /// that a secrets file shared with other programs does not expose all of its entries.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretBinding>,
    /// Readable secrets without a binding: `secrets:get` answers with a handle, and
    /// `http:fetch` sends it nowhere. The list that came before bindings, kept so that
    /// such configs still start, with a warning per name, and stay safe.
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default = "default_tool_timeout")]
    pub timeout_ms: u64,
}

impl SecretsConfig {
    /// Every name `secrets:get` answers for: the bound ones, then `names`.
    pub fn readable(&self) -> impl Iterator<Item = &str> {
        self.secrets
            .keys()
            .map(String::as_str)
            .chain(self.names.iter().map(String::as_str))
    }
}

/// Where one secret may go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretBinding {
    /// `host:port` or `host`, as in `allow_hosts`: the only destinations of the value.
    pub hosts: Vec<String>,
    /// Where in the request the value may be placed.
    pub inject: Inject,
}

/// Where in a request a secret's value may be placed. The script still places the
/// handle itself; a handle anywhere else is refused, never filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inject {
    /// `{ header = "Authorization", format = "Bearer {}" }`: only as this header, whose
    /// value is `format` with the secret in place of `{}`. The script writes the handle
    /// alone, or `format` with the handle in place of `{}`.
    Header { name: String, format: String },
    /// `{ query = "key" }`: only as the whole value of this query parameter.
    Query { name: String },
    /// `"anywhere"`: wherever the script puts the handle in the URL's path or query, in
    /// headers or in the body (never the user info). The opt-in for APIs that need it:
    /// a host that echoes requests back can then be made to reveal the value piecewise.
    Anywhere,
}

const INJECT_SHAPES: &str = r#"expected `inject = { header = "Name", format = "Prefix {}" }` (format optional), `inject = { query = "name" }` or `inject = "anywhere"`"#;

impl<'de> Deserialize<'de> for Inject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Inject, D::Error> {
        let value = toml::Value::deserialize(deserializer)?;
        Inject::from_toml(&value).map_err(serde::de::Error::custom)
    }
}

impl Inject {
    fn from_toml(value: &toml::Value) -> Result<Inject, String> {
        let table = match value {
            toml::Value::String(s) if s == "anywhere" => return Ok(Inject::Anywhere),
            toml::Value::Table(table) => table,
            _ => return Err(INJECT_SHAPES.into()),
        };
        if let Some(key) = table
            .keys()
            .find(|k| !["header", "format", "query"].contains(&k.as_str()))
        {
            return Err(format!("unknown key `{key}`; {INJECT_SHAPES}"));
        }
        let text = |key: &str| {
            table
                .get(key)
                .map(|v| v.as_str().ok_or(format!("`{key}` must be a string")))
                .transpose()
        };
        match (text("header")?, text("format")?, text("query")?) {
            (Some(header), format, None) => {
                let name = reqwest::header::HeaderName::from_bytes(header.as_bytes())
                    .map_err(|_| format!("`{header}` is not a valid header name"))?;
                if crate::tools::http::FORBIDDEN_HEADERS.contains(&name.as_str()) {
                    return Err(format!(
                        "header `{header}` frames the request; a secret may not be sent in it"
                    ));
                }
                let format = format.unwrap_or("{}");
                if format.matches("{}").count() != 1 {
                    return Err(format!(
                        "format `{format}` must contain `{{}}` exactly once (where the secret goes)"
                    ));
                }
                if reqwest::header::HeaderValue::from_str(format).is_err() {
                    return Err(format!(
                        "format `{format}` has characters not allowed in a header"
                    ));
                }
                Ok(Inject::Header {
                    name: header.to_string(),
                    format: format.to_string(),
                })
            }
            (None, None, Some(query)) if !query.is_empty() => Ok(Inject::Query {
                name: query.to_string(),
            }),
            _ => Err(INJECT_SHAPES.into()),
        }
    }
}

impl fmt::Display for Inject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Inject::Header { name, format } => write!(f, "as the header `{name}: {format}`"),
            Inject::Query { name } => write!(f, "as the query parameter `{name}`"),
            Inject::Anywhere => f.write_str("anywhere in the request but the user info"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFetchConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `host:port`, or `host` for the scheme's default port (80 / 443). Nothing else is
    /// reachable, including by redirect.
    pub allow_hosts: Vec<String>,
    /// Whether loopback, private, link-local (where cloud metadata services answer),
    /// unique-local and other non-public addresses may be reached. Off: such an address
    /// is refused whether the URL names it or an allowed name resolves to it, so that a
    /// DNS answer cannot turn an allowed name into a way into the broker's own network.
    #[serde(default)]
    pub allow_private_ips: bool,
    #[serde(default = "default_http_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_http_max_response")]
    pub max_response_bytes: u64,
    #[serde(default = "default_http_max_redirects")]
    pub max_redirects: u32,
}

/// `[tool_services.NAME]`: tools answered by a service the integrator runs, over gRPC
/// (`enclave.v1.ToolService`, proto/proto/enclave/v1/tools.proto) or as an HTTP webhook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolServiceConfig {
    /// `http://host:port` of an `enclave.v1.ToolService`; its `List` names the tools.
    pub grpc: Option<String>,
    /// `http(s)://...`: each call is a `POST` of JSON to this URL (README.md).
    pub webhook: Option<String>,
    /// The names this service answers: `db:query`, or `db:*` for every name with that
    /// prefix. By default `NAME:*`. A listed tool outside them is ignored, so a service
    /// can never answer for a built-in or another service's tool.
    #[serde(default)]
    pub answers: Vec<String>,
    /// A webhook's tools (it has no `List`): `[tool_services.NAME.tools."NAME:tool"]`.
    #[serde(default)]
    pub tools: BTreeMap<String, DeclaredTool>,
    #[serde(default = "default_service_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_service_max_concurrency")]
    pub max_concurrency: u32,
    #[serde(default = "default_service_max_result")]
    pub max_result_bytes: u64,
    /// A webhook's signing key: the environment variable that holds it. Each request
    /// then carries `X-Enclave-Signature` (README.md), so the service can tell the
    /// broker's calls from anyone else's.
    pub hmac_key_env: Option<String>,
    /// Or the file that holds it (a container secret), relative to this config file.
    pub hmac_key_file: Option<PathBuf>,
    /// Readable secrets (`[tools."secrets:get"]`) this service receives as values: the
    /// broker replaces their handles in its arguments. Any other handle reaches it as
    /// a handle.
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default = "default_service_refresh")]
    pub refresh_secs: u64,
}

/// One tool of a webhook service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredTool {
    pub description: String,
    /// JSON Schema of the arguments, written in TOML (an inline table or a section).
    /// None: any arguments.
    pub input_schema: Option<toml::Value>,
}

impl ToolServiceConfig {
    /// The name patterns this service answers, its `answers` or `NAME:*`.
    pub fn answers(&self, name: &str) -> Vec<String> {
        if self.answers.is_empty() {
            vec![format!("{name}:*")]
        } else {
            self.answers.clone()
        }
    }

    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        let at = format!("tool_services.{name}");
        match (&self.grpc, &self.webhook) {
            (Some(url), None) => {
                let uri: tonic::transport::Uri = url
                    .parse()
                    .map_err(|e| invalid(format!("{at}.grpc: `{url}`: {e}")))?;
                if uri.scheme_str() != Some("http") || uri.port_u16().is_none() {
                    return Err(invalid(format!(
                        "{at}.grpc: `{url}` must look like http://host:port (plaintext gRPC inside the deployment)"
                    )));
                }
                if !self.tools.is_empty() {
                    return Err(invalid(format!(
                        "{at}.tools: a gRPC service lists its own tools; declare tools only for a webhook"
                    )));
                }
            }
            (None, Some(url)) => {
                let parsed = url::Url::parse(url)
                    .map_err(|e| invalid(format!("{at}.webhook: `{url}`: {e}")))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(invalid(format!("{at}.webhook: `{url}` must be http(s)://")));
                }
                if self.tools.is_empty() {
                    return Err(invalid(format!(
                        "{at}: a webhook needs its tools declared, each in a [{at}.tools.\"NAME\"] section with a description"
                    )));
                }
            }
            _ => {
                return Err(invalid(format!(
                    "{at}: give `grpc` (an enclave.v1.ToolService) or `webhook` (a URL), exactly one"
                )));
            }
        }
        for pattern in self.answers(name) {
            let stem = pattern.strip_suffix('*').unwrap_or(&pattern);
            if stem.is_empty() || stem.contains('*') {
                return Err(invalid(format!(
                    "{at}.answers: `{pattern}` must be a tool name, or a prefix followed by one `*` (`db:*`)"
                )));
            }
        }
        if (self.hmac_key_env.is_some() || self.hmac_key_file.is_some()) && self.grpc.is_some() {
            return Err(invalid(format!(
                "{at}.hmac_key_env and hmac_key_file sign webhook requests; a gRPC service has none"
            )));
        }
        if self.hmac_key_env.is_some() && self.hmac_key_file.is_some() {
            return Err(invalid(format!(
                "{at}: give hmac_key_env or hmac_key_file, not both"
            )));
        }
        validate_remote_limits(
            &at,
            self.timeout_ms,
            self.max_concurrency,
            self.refresh_secs,
            self.max_result_bytes,
        )
    }
}

/// `[mcp.NAME]`: an MCP server (Model Context Protocol) whose tools scripts call as
/// `NAME:tool`, with the input schemas the server lists. The broker connects at start-up
/// in the background, lists the tools again every `refresh_secs`, and reconnects (or
/// restarts the command) when the connection is lost.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// `http(s)://host:port/path` of a streamable-HTTP MCP server (`.../mcp` usually).
    pub url: Option<String>,
    /// Or a stdio server the broker starts itself: the program and its arguments,
    /// `["python3", "/srv/mcp/db.py"]`. Not run through a shell. A program without a `/`
    /// is looked up in `PATH`; a relative path is relative to the broker's working
    /// directory.
    pub command: Option<Vec<String>>,
    /// The command's environment, besides `HOME`, `LOGNAME`, `PATH`, `SHELL`, `TERM` and
    /// `USER`, which it inherits from the broker. Nothing else of the broker's
    /// environment reaches it: that may hold secrets (`[tools."secrets:get"] env`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default = "default_service_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_service_max_concurrency")]
    pub max_concurrency: u32,
    #[serde(default = "default_service_max_result")]
    pub max_result_bytes: u64,
    /// Readable secrets (`[tools."secrets:get"]`) this server receives as values: the
    /// broker replaces their handles in its tools' arguments. Any other handle reaches
    /// it as a handle.
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default = "default_service_refresh")]
    pub refresh_secs: u64,
}

/// The environment variables a stdio MCP server inherits from the broker (the set the
/// official MCP SDKs pass to the servers they start).
pub const MCP_INHERITED_ENV: [&str; 6] = ["HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER"];

impl McpConfig {
    /// The names this server's tools get: `NAME:*`.
    pub fn answers(name: &str) -> Vec<String> {
        vec![format!("{name}:*")]
    }

    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        let at = format!("mcp.{name}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        {
            return Err(invalid(format!(
                "[{at}]: a server's name is letters, digits, `_`, `-` and `.` (its tools are `NAME:tool`)"
            )));
        }
        match (&self.url, &self.command) {
            (Some(url), None) => {
                let parsed =
                    url::Url::parse(url).map_err(|e| invalid(format!("{at}.url: `{url}`: {e}")))?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                    return Err(invalid(format!(
                        "{at}.url: `{url}` must be http(s)://host[:port]/path (a streamable-HTTP MCP endpoint)"
                    )));
                }
                if !self.env.is_empty() {
                    return Err(invalid(format!(
                        "{at}.env is the environment of a `command`; a `url` server runs elsewhere"
                    )));
                }
            }
            (None, Some(command)) => {
                if command.first().is_none_or(|program| program.is_empty()) {
                    return Err(invalid(format!(
                        "{at}.command must name a program: [\"program\", \"arg\", ...]"
                    )));
                }
                if command.iter().any(|part| part.contains('\0')) {
                    return Err(invalid(format!(
                        "{at}.command: an argument contains a NUL character"
                    )));
                }
                for (key, value) in &self.env {
                    if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
                        return Err(invalid(format!(
                            "{at}.env: `{key}` is not a usable environment variable (a name without `=` or NUL, a value without NUL)"
                        )));
                    }
                }
            }
            _ => {
                return Err(invalid(format!(
                    "{at}: give `url` (a streamable-HTTP MCP server) or `command` (a stdio MCP server the broker starts), exactly one"
                )));
            }
        }
        validate_remote_limits(
            &at,
            self.timeout_ms,
            self.max_concurrency,
            self.refresh_secs,
            self.max_result_bytes,
        )
    }
}

/// The limits every remote tool source has (a tool service, an MCP server).
fn validate_remote_limits(
    at: &str,
    timeout_ms: u64,
    max_concurrency: u32,
    refresh_secs: u64,
    max_result_bytes: u64,
) -> Result<(), ConfigError> {
    for (field, value) in [
        ("timeout_ms", timeout_ms),
        ("max_concurrency", max_concurrency.into()),
        ("refresh_secs", refresh_secs),
    ] {
        if value == 0 {
            return Err(invalid(format!("{at}.{field} must be above zero")));
        }
    }
    let max = crate::tools::MAX_RESULT_BYTES as u64;
    if max_result_bytes == 0 || max_result_bytes > max {
        return Err(invalid(format!(
            "{at}.max_result_bytes must be between 1 and {max}"
        )));
    }
    Ok(())
}

/// `[executors]`: where jobs run. Neither `endpoints` nor `dns`: in this process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorsConfig {
    /// Fixed executors, `http://host:port`.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// One name whose A/AAAA records are the executors (`executor:7701`), resolved
    /// every `refresh_secs`.
    pub dns: Option<String>,
    #[serde(default = "default_refresh")]
    pub refresh_secs: u64,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_start_timeout")]
    pub start_timeout_ms: u64,
    #[serde(default = "default_max_start_attempts")]
    pub max_start_attempts: u32,
    #[serde(default = "default_down_retry")]
    pub down_retry_ms: u64,
    #[serde(default = "default_health_interval")]
    pub health_interval_ms: u64,
    /// Embedded mode only.
    #[serde(default = "default_embedded_max_jobs")]
    pub embedded_max_jobs: u32,
    /// Embedded mode only: where the compiled guest snapshot is kept between starts
    /// (the executor's `--snapshot-dir`). `--snapshot-dir` overrides it.
    pub embedded_snapshot_dir: Option<PathBuf>,
    /// CA bundle (PEM) for executors served over TLS: `https://` endpoints must chain
    /// to it, and with `dns` it switches the executors to https (their certificate must
    /// name the DNS host). `--executor-ca` overrides it.
    pub ca_file: Option<PathBuf>,
}

impl Default for ExecutorsConfig {
    fn default() -> Self {
        ExecutorsConfig {
            endpoints: Vec::new(),
            dns: None,
            refresh_secs: DEFAULT_DNS_REFRESH_SECS,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            start_timeout_ms: DEFAULT_START_TIMEOUT_MS,
            max_start_attempts: DEFAULT_MAX_START_ATTEMPTS,
            down_retry_ms: DEFAULT_DOWN_RETRY_MS,
            health_interval_ms: DEFAULT_HEALTH_INTERVAL_MS,
            embedded_max_jobs: DEFAULT_EMBEDDED_MAX_JOBS,
            embedded_snapshot_dir: None,
            ca_file: None,
        }
    }
}

impl ExecutorsConfig {
    pub fn is_embedded(&self) -> bool {
        self.endpoints.is_empty() && self.dns.is_none()
    }

    /// The TLS settings once command-line overrides are in: `https://` endpoints need
    /// `ca_file`, and `ca_file` must be a readable PEM bundle.
    pub fn check_tls(&self) -> Result<(), ConfigError> {
        if self.ca_file.is_none()
            && let Some(endpoint) = self.endpoints.iter().find(|e| e.starts_with("https://"))
        {
            return Err(invalid(format!(
                "executor `{endpoint}` is https but no CA is given (--executor-ca, or `ca_file` in [executors])"
            )));
        }
        self.tls().map(|_| ())
    }

    /// `ca_file` as tonic's client TLS settings (`None` without one).
    pub fn tls(&self) -> Result<Option<tonic::transport::ClientTlsConfig>, ConfigError> {
        let Some(path) = &self.ca_file else {
            return Ok(None);
        };
        let pem = std::fs::read(path)
            .map_err(|e| invalid(format!("executors.ca_file {}: {e}", path.display())))?;
        if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
            return Err(invalid(format!(
                "executors.ca_file {}: no PEM certificate in it",
                path.display()
            )));
        }
        Ok(Some(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        ))
    }
    pub fn refresh(&self) -> Duration {
        Duration::from_secs(self.refresh_secs)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn start_timeout(&self) -> Duration {
        Duration::from_millis(self.start_timeout_ms)
    }
    pub fn down_retry(&self) -> Duration {
        Duration::from_millis(self.down_retry_ms)
    }
    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health_interval_ms)
    }
}

/// `[jobs]`: what the broker adds to the executor's own limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    #[serde(default = "default_deadline_margin")]
    pub deadline_margin_ms: u64,
    /// Bytes of a job's events the broker holds for a client that is not reading them.
    #[serde(default = "default_output_buffer_bytes")]
    pub output_buffer_bytes: u64,
    /// How long a job may wait, its buffer full, for its client to read anything before
    /// it ends with OUTPUT_STALLED.
    #[serde(default = "default_output_stall_ms")]
    pub output_stall_ms: u64,
    /// How long one call of a client-provided tool waits for the client's answer
    /// (within the job's own time limit).
    #[serde(default = "default_client_tool_timeout_ms")]
    pub client_tool_timeout_ms: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            deadline_margin_ms: DEFAULT_DEADLINE_MARGIN_MS,
            output_buffer_bytes: DEFAULT_OUTPUT_BUFFER_BYTES,
            output_stall_ms: DEFAULT_OUTPUT_STALL_MS,
            client_tool_timeout_ms: DEFAULT_CLIENT_TOOL_TIMEOUT_MS,
        }
    }
}

impl JobsConfig {
    pub fn deadline_margin(&self) -> Duration {
        Duration::from_millis(self.deadline_margin_ms)
    }

    pub fn output_stall(&self) -> Duration {
        Duration::from_millis(self.output_stall_ms)
    }

    pub fn client_tool_timeout(&self) -> Duration {
        Duration::from_millis(self.client_tool_timeout_ms)
    }
}

/// One `allow_hosts` entry, normalised the way URLs are (lower case, IDNA, IPv6 in
/// brackets) so that comparing it with a parsed URL's host is exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    /// `None`: the scheme's default port only.
    pub port: Option<u16>,
}

impl HostPort {
    pub fn parse(entry: &str) -> Result<HostPort, String> {
        let entry = entry.trim();
        if entry.contains(['/', '@', '?', '#', '*']) {
            return Err("expected host or host:port, without scheme, path or wildcard".into());
        }
        let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
            let (v6, after) = rest
                .split_once(']')
                .ok_or("unclosed `[` in an IPv6 address")?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or("expected `:port` after `]`")?),
            };
            (format!("[{v6}]"), port)
        } else {
            match entry.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (entry.to_string(), None),
            }
        };
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .map_err(|_| format!("`{p}` is not a port number"))
            })
            .transpose()?;
        if host.is_empty() || host.contains(['/', '@', '?', '#', '*']) {
            return Err("expected host or host:port, without scheme, path or wildcard".into());
        }
        let url = reqwest::Url::parse(&format!("http://{host}/")).map_err(|e| e.to_string())?;
        let host = url.host_str().ok_or("no host")?.to_string();
        Ok(HostPort { host, port })
    }

    /// The address, when the entry is an IP literal rather than a name.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()
    }

    /// Whether `url` (http or https) points here.
    pub fn matches(&self, url: &reqwest::Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        if host != self.host {
            return false;
        }
        match self.port {
            Some(port) => url.port_or_known_default() == Some(port),
            // The url crate drops a port equal to the scheme's default.
            None => url.port().is_none(),
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_tool_timeout() -> u64 {
    DEFAULT_TOOL_TIMEOUT_MS
}
fn default_client_tool_timeout_ms() -> u64 {
    DEFAULT_CLIENT_TOOL_TIMEOUT_MS
}
fn default_service_timeout() -> u64 {
    DEFAULT_SERVICE_TIMEOUT_MS
}
fn default_service_max_concurrency() -> u32 {
    DEFAULT_SERVICE_MAX_CONCURRENCY
}
fn default_service_max_result() -> u64 {
    DEFAULT_SERVICE_MAX_RESULT_BYTES
}
fn default_service_refresh() -> u64 {
    DEFAULT_SERVICE_REFRESH_SECS
}
fn default_http_timeout() -> u64 {
    DEFAULT_HTTP_TIMEOUT_MS
}
fn default_http_max_response() -> u64 {
    DEFAULT_HTTP_MAX_RESPONSE_BYTES
}
fn default_http_max_redirects() -> u32 {
    DEFAULT_HTTP_MAX_REDIRECTS
}
fn default_refresh() -> u64 {
    DEFAULT_DNS_REFRESH_SECS
}
fn default_connect_timeout() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_MS
}
fn default_start_timeout() -> u64 {
    DEFAULT_START_TIMEOUT_MS
}
fn default_max_start_attempts() -> u32 {
    DEFAULT_MAX_START_ATTEMPTS
}
fn default_down_retry() -> u64 {
    DEFAULT_DOWN_RETRY_MS
}
fn default_health_interval() -> u64 {
    DEFAULT_HEALTH_INTERVAL_MS
}
fn default_embedded_max_jobs() -> u32 {
    DEFAULT_EMBEDDED_MAX_JOBS
}
fn default_output_buffer_bytes() -> u64 {
    DEFAULT_OUTPUT_BUFFER_BYTES
}

fn default_output_stall_ms() -> u64 {
    DEFAULT_OUTPUT_STALL_MS
}

fn default_deadline_margin() -> u64 {
    DEFAULT_DEADLINE_MARGIN_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/enclave"))
    }

    #[test]
    fn empty_config_is_embedded_with_echo_only() {
        let c = parse("").unwrap();
        assert!(c.tools.echo.enabled);
        assert!(c.tools.secrets_get.is_none());
        assert!(c.tools.http_fetch.is_none());
        assert!(c.executors.is_embedded());
        assert_eq!(c.jobs.deadline_margin_ms, DEFAULT_DEADLINE_MARGIN_MS);
    }

    /// README's example, exactly.
    const README_EXAMPLE: &str = r#"
[tools.echo]                  # on by default: returns its arguments

[tools."secrets:get"]         # {key} -> an opaque per-job handle, never the value
file = "secrets.toml"         # name = "value" lines; and/or
env = ["API_KEY", "MAPS_KEY"] # environment variables (API_KEY answers to api_key)

[tools."secrets:get".secrets.api_key]        # readable, and where it may be sent:
hosts = ["api.example.com"]                  # only to these hosts,
inject = { header = "Authorization", format = "Bearer {}" }   # only as this header

[tools."secrets:get".secrets.maps_key]
hosts = ["maps.example.com"]
inject = { query = "key" }    # only as the value of ?key=

[tools."http:fetch"]          # also http:post and http:get; off unless configured
allow_hosts = ["api.example.com", "maps.example.com", "10.0.0.7:8080"]
allow_private_ips = true      # needed for 10.0.0.7; off by default
timeout_ms = 5000
max_response_bytes = 1048576

[executors]                   # none: jobs run in the broker process
endpoints = ["http://10.0.0.5:7701"]   # or: dns = "executor:7701" (re-resolved periodically)
"#;

    #[test]
    fn full_example_parses() {
        let readme = include_str!("../../README.md");
        assert!(
            readme.contains(README_EXAMPLE.trim()),
            "README's example changed"
        );
        let c = parse(README_EXAMPLE).unwrap();
        let secrets = c.tools.secrets_get.unwrap();
        assert_eq!(
            secrets.file.as_deref(),
            Some(Path::new("/etc/enclave/secrets.toml"))
        );
        assert_eq!(
            secrets.readable().collect::<Vec<_>>(),
            ["api_key", "maps_key"]
        );
        assert_eq!(secrets.secrets["api_key"].hosts, ["api.example.com"]);
        assert_eq!(
            secrets.secrets["api_key"].inject,
            Inject::Header {
                name: "Authorization".into(),
                format: "Bearer {}".into()
            }
        );
        assert_eq!(
            secrets.secrets["maps_key"].inject,
            Inject::Query { name: "key".into() }
        );
        let http = c.tools.http_fetch.unwrap();
        assert_eq!(http.timeout_ms, 5000);
        assert!(http.allow_private_ips);
        assert_eq!(http.max_redirects, DEFAULT_HTTP_MAX_REDIRECTS);
        assert!(!c.executors.is_embedded());
    }

    #[test]
    fn secret_bindings_and_their_mistakes() {
        let with = |binding: &str| {
            parse(&format!(
                "[tools.\"secrets:get\"]\nenv = [\"K\"]\n[tools.\"secrets:get\".secrets.k]\n{binding}\n[tools.\"http:fetch\"]\nallow_hosts = [\"a.com\"]\n"
            ))
        };
        let inject = |c: Config| c.tools.secrets_get.unwrap().secrets["k"].inject.clone();
        assert_eq!(
            inject(with("hosts = [\"a.com\"]\ninject = \"anywhere\"").unwrap()),
            Inject::Anywhere
        );
        assert_eq!(
            inject(with("hosts = [\"a.com\"]\ninject = { header = \"X-Key\" }").unwrap()),
            Inject::Header {
                name: "X-Key".into(),
                format: "{}".into()
            }
        );
        for (binding, expected) in [
            ("hosts = [\"a.com\"]", "missing field `inject`"),
            ("inject = \"anywhere\"", "missing field `hosts`"),
            ("hosts = []\ninject = \"anywhere\"", "hosts is empty"),
            (
                "hosts = [\"b.com\"]\ninject = \"anywhere\"",
                "`b.com` is not in tools.\"http:fetch\".allow_hosts",
            ),
            (
                "hosts = [\"http://a.com\"]\ninject = \"anywhere\"",
                "without scheme",
            ),
            (
                "hosts = [\"a.com\"]\ninject = \"everywhere\"",
                "expected `inject = ",
            ),
            (
                "hosts = [\"a.com\"]\ninject = { header = \"X\", query = \"q\" }",
                "expected `inject = ",
            ),
            (
                "hosts = [\"a.com\"]\ninject = { query = \"\" }",
                "expected `inject = ",
            ),
            (
                "hosts = [\"a.com\"]\ninject = { heder = \"X\" }",
                "unknown key `heder`",
            ),
            (
                "hosts = [\"a.com\"]\ninject = { header = \"X\", format = \"Bearer\" }",
                "must contain `{}` exactly once",
            ),
            (
                "hosts = [\"a.com\"]\ninject = { header = \"X\", format = \"{} {}\" }",
                "must contain `{}` exactly once",
            ),
            (
                "hosts = [\"a.com\"]\ninject = { header = \"X\", format = \"a\\n{}\" }",
                "not allowed in a header",
            ),
            (
                "hosts = [\"a.com\"]\ninject = { header = \"Host\" }",
                "frames the request",
            ),
            (
                "hosts = [\"a.com\"]\ninject = { header = \"Bad Name\" }",
                "not a valid header name",
            ),
            (
                "hosts = [\"a.com\"]\ninject = { header = 1 }",
                "`header` must be a string",
            ),
        ] {
            let err = with(binding).unwrap_err().to_string();
            assert!(err.contains(expected), "{binding}: {err}");
        }
        // A secrets section that makes nothing readable.
        let err = parse("[tools.\"secrets:get\"]\nenv = [\"K\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("makes no secret readable"), "{err}");
        // The shape from before bindings still parses (its secrets are bound nowhere).
        let c = parse("[tools.\"secrets:get\"]\nenv = [\"K\"]\nnames = [\"k\"]\n").unwrap();
        assert_eq!(c.tools.secrets_get.unwrap().names, ["k"]);
    }

    #[test]
    fn private_addresses_in_the_allow_list_need_the_opt_in() {
        for host in [
            "127.0.0.1:8080",
            "10.0.0.7",
            "[::1]:80",
            "[::ffff:127.0.0.1]:80",
            "169.254.169.254",
            "[fd00::1]",
        ] {
            let text = format!("[tools.\"http:fetch\"]\nallow_hosts = [\"{host}\"]\n");
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains("only reaches with `allow_private_ips = true`"),
                "{host}: {err}"
            );
            assert!(
                parse(&format!("{text}allow_private_ips = true\n")).is_ok(),
                "{host}"
            );
        }
        // Names are checked when they resolve, not here.
        assert!(
            parse("[tools.\"http:fetch\"]\nallow_hosts = [\"localhost:80\", \"8.8.8.8\"]\n")
                .is_ok()
        );
    }

    #[test]
    fn unknown_keys_and_tools_are_refused() {
        let err = parse("[tools.\"http:fetch\"]\nallow_host = [\"x\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("allow_host"), "{err}");
        let err = parse("[tools.\"shell:exec\"]\n").unwrap_err().to_string();
        assert!(err.contains("shell:exec"), "{err}");
        assert!(parse("[executor]\n").is_err());
    }

    #[test]
    fn nonsense_values_are_refused() {
        assert!(parse("[executors]\nendpoints = [\"10.0.0.5:7701\"]\n").is_err());
        assert!(parse("[executors]\nendpoints = [\"http://a:1\"]\ndns = \"b:2\"\n").is_err());
        assert!(parse("[executors]\ndns = \"executor\"\n").is_err());
        assert!(parse("[tools.\"http:fetch\"]\nallow_hosts = [\"http://a.com\"]\n").is_err());
        assert!(parse("[tools.\"http:fetch\"]\nallow_hosts = [\"*.a.com\"]\n").is_err());
        assert!(
            parse("[tools.\"http:fetch\"]\nallow_hosts = []\nmax_response_bytes = 0\n").is_err()
        );
        assert!(parse("[tools.\"secrets:get\"]\nnames = [\"a\"]\n").is_err());
        assert!(parse("[tools.echo]\ntimeout_ms = 0\n").is_err());
    }

    /// README's MCP example, exactly.
    const README_MCP_EXAMPLE: &str = r#"
[mcp.files]                         # a stdio server: the broker starts it
command = ["python3", "/srv/mcp/files.py", "--stdio"]   # program and arguments, no shell
env = { FILES_ROOT = "/srv/data" }  # its environment, besides HOME LOGNAME PATH SHELL TERM USER
timeout_ms = 10000                  # per call, inside the job's own time limit
max_concurrency = 32                # calls in flight from all jobs; more wait for a turn
max_result_bytes = 1048576
# secrets = ["files_token"]         # handles of these secrets reach it as values
# refresh_secs = 60                 # how often its tool list is fetched again

[mcp.search]                        # a streamable-HTTP server
url = "http://search-mcp:8000/mcp"
"#;

    #[test]
    fn readme_mcp_example_parses() {
        let readme = include_str!("../../README.md");
        assert!(
            readme.contains(README_MCP_EXAMPLE.trim()),
            "README's MCP example changed"
        );
        let c = parse(README_MCP_EXAMPLE).unwrap();
        assert_eq!(c.mcp["files"].command.as_ref().unwrap()[0], "python3");
        assert_eq!(c.mcp["files"].env["FILES_ROOT"], "/srv/data");
        assert_eq!(
            c.mcp["search"].url.as_deref(),
            Some("http://search-mcp:8000/mcp")
        );
    }

    #[test]
    fn mcp_servers_and_their_mistakes() {
        let c = parse(
            r#"
[mcp.db]
command = ["python3", "db.py", "--stdio"]
env = { DB_URL = "postgres://db/app" }
secrets = ["db_password"]

[mcp.search]
url = "http://search:8000/mcp"
timeout_ms = 2000
max_concurrency = 4
max_result_bytes = 65536
refresh_secs = 5
"#,
        )
        .unwrap();
        let db = &c.mcp["db"];
        assert_eq!(
            db.command.as_deref(),
            Some(&["python3".to_owned(), "db.py".into(), "--stdio".into()][..])
        );
        assert_eq!(db.env["DB_URL"], "postgres://db/app");
        assert_eq!(db.secrets, ["db_password"]);
        assert_eq!(db.timeout_ms, DEFAULT_SERVICE_TIMEOUT_MS);
        assert_eq!(db.max_concurrency, DEFAULT_SERVICE_MAX_CONCURRENCY);
        assert_eq!(db.max_result_bytes, DEFAULT_SERVICE_MAX_RESULT_BYTES);
        assert_eq!(db.refresh_secs, DEFAULT_SERVICE_REFRESH_SECS);
        let search = &c.mcp["search"];
        assert_eq!(search.url.as_deref(), Some("http://search:8000/mcp"));
        assert_eq!(
            (
                search.timeout_ms,
                search.max_concurrency,
                search.max_result_bytes,
                search.refresh_secs
            ),
            (2000, 4, 65536, 5)
        );
        assert_eq!(McpConfig::answers("db"), ["db:*"]);

        for (section, expected) in [
            (
                "[mcp.x]
",
                "give `url`",
            ),
            (
                "[mcp.x]
url = \"http://a/mcp\"
command = [\"a\"]
",
                "exactly one",
            ),
            (
                "[mcp.x]
command = []
",
                "must name a program",
            ),
            (
                "[mcp.x]
command = [\"\"]
",
                "must name a program",
            ),
            (
                "[mcp.x]
command = \"python3 x.py\"
",
                "expected a sequence",
            ),
            (
                "[mcp.x]
command = [\"a\", \"b\\u0000\"]
",
                "NUL",
            ),
            (
                "[mcp.x]
url = \"ftp://a/mcp\"
",
                "must be http(s)://",
            ),
            (
                "[mcp.x]
url = \"not a url\"
",
                "mcp.x.url",
            ),
            (
                "[mcp.x]
url = \"http://a/mcp\"
env = { A = \"1\" }
",
                "environment of a `command`",
            ),
            (
                "[mcp.x]
command = [\"a\"]
env = { \"A=B\" = \"1\" }
",
                "not a usable environment variable",
            ),
            (
                "[mcp.x]
command = [\"a\"]
timeout_ms = 0
",
                "mcp.x.timeout_ms must be above zero",
            ),
            (
                "[mcp.x]
command = [\"a\"]
max_concurrency = 0
",
                "mcp.x.max_concurrency must be above zero",
            ),
            (
                "[mcp.x]
command = [\"a\"]
refresh_secs = 0
",
                "mcp.x.refresh_secs must be above zero",
            ),
            (
                "[mcp.x]
command = [\"a\"]
max_result_bytes = 0
",
                "mcp.x.max_result_bytes must be between 1 and",
            ),
            (
                "[mcp.x]
command = [\"a\"]
max_result_bytes = 999999999
",
                "mcp.x.max_result_bytes must be between 1 and",
            ),
            (
                "[mcp.x]
command = [\"a\"]
answers = [\"y:*\"]
",
                "unknown field `answers`",
            ),
            (
                "[mcp.\"a:b\"]
command = [\"a\"]
",
                "a server's name is",
            ),
            (
                "[mcp.\"\"]
command = [\"a\"]
",
                "a server's name is",
            ),
            (
                "[mcp.\"a*\"]
command = [\"a\"]
",
                "a server's name is",
            ),
        ] {
            let err = parse(section).unwrap_err().to_string();
            assert!(err.contains(expected), "{section}: {err}");
        }
    }

    #[test]
    fn host_port_matching() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        let exact = HostPort::parse("127.0.0.1:8080").unwrap();
        assert!(exact.matches(&url("http://127.0.0.1:8080/x?y")));
        assert!(!exact.matches(&url("http://127.0.0.1:8081/")));
        assert!(!exact.matches(&url("http://127.0.0.2:8080/")));
        let bare = HostPort::parse("API.Example.com").unwrap();
        assert_eq!(bare.host, "api.example.com");
        assert!(bare.matches(&url("https://api.example.com/v1")));
        assert!(bare.matches(&url("http://api.example.com/v1")));
        assert!(!bare.matches(&url("https://api.example.com:8443/v1")));
        assert!(!bare.matches(&url("https://api.example.com.evil.net/")));
        assert!(!bare.matches(&url("https://api.example.com@evil.net/")));
        let v6 = HostPort::parse("[::1]:9000").unwrap();
        assert!(v6.matches(&url("http://[::1]:9000/")));
        let default_port = HostPort::parse("a.com:443").unwrap();
        assert!(default_port.matches(&url("https://a.com/")));
        assert!(!default_port.matches(&url("http://a.com/")));
    }

    #[test]
    fn https_executors_need_a_readable_ca() {
        let c =
            parse("[executors]\nendpoints = [\"https://a:1\"]\nca_file = \"ca.pem\"\n").unwrap();
        // Relative to the config file, like the secrets file.
        assert_eq!(
            c.executors.ca_file.as_deref(),
            Some(Path::new("/etc/enclave/ca.pem"))
        );
        let err = c.executors.check_tls().unwrap_err().to_string();
        assert!(err.contains("/etc/enclave/ca.pem"), "{err}");
        let c = parse("[executors]\nendpoints = [\"https://a:1\"]\n").unwrap();
        let err = c.executors.check_tls().unwrap_err().to_string();
        assert!(err.contains("no CA is given"), "{err}");
        assert!(parse("[executors]\nendpoints = [\"ftp://a:1\"]\n").is_err());
        let plaintext = parse("[executors]\nendpoints = [\"http://a:1\"]\n").unwrap();
        assert!(plaintext.executors.check_tls().is_ok());
    }
}
