//! `http:fetch {url, method?, headers?, body?}` (also `http:post`, `http:get`): an HTTP
//! request to an allow-listed host, answered with `{status, headers, body}`.
//!
//! The allow-list is the whole of a script's network reach, so it is checked on the URL
//! as the script wrote it (before secret values are substituted: a handle placed in the
//! host part can never make a DNS query carry a secret) and again on every redirect hop,
//! and the addresses behind an allowed name must be public unless the config says
//! otherwise ([`address`]). A secret's handle is filled in only where the secret's
//! binding allows it: its hosts, its place in the request (one header, one query
//! parameter, or anywhere but the user info for a secret that opted in). A handle
//! anywhere else refuses the whole request; it is never sent, filled in or not.
//! Redirects are followed here rather than by reqwest so that each hop can be checked
//! and so that headers and bodies that carry a secret are never re-sent to another host.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{Tool, ToolContext, ToolError, ToolFuture, ToolSpec, parse_args};
use crate::config::{HostPort, HttpFetchConfig, Inject};
use crate::secrets::{HANDLE_PREFIX, JobSecrets, Secret};

pub mod address;

/// Headers a script may not set: they frame the request (smuggling a second request to
/// an allowed host, or confusing its proxy) or belong to the connection.
pub(crate) const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-connection",
];

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

const USAGE: &str =
    "{ url: string, method?: string, headers?: { [name]: string }, body?: string | JSON }";

/// Policy and client shared by `http:fetch` and its aliases.
struct Shared {
    client: reqwest::Client,
    allow: Vec<HostPort>,
    /// For error messages: the allow-list as configured.
    allow_shown: String,
    allow_private_ips: bool,
    max_response_bytes: u64,
    max_redirects: u32,
}

/// One registered name of the tool: `http:fetch` lets the script pick the method,
/// `http:post` / `http:get` fix it.
pub struct HttpFetch {
    shared: Arc<Shared>,
    fixed_method: Option<Method>,
}

impl HttpFetch {
    /// The tool under each of its names.
    pub fn family(config: &HttpFetchConfig) -> Result<Vec<(&'static str, HttpFetch)>, String> {
        let shared = Arc::new(Shared::new(config, address::system_lookup())?);
        let tool = |fixed_method| HttpFetch {
            shared: shared.clone(),
            fixed_method,
        };
        Ok(vec![
            ("http:fetch", tool(None)),
            ("http:post", tool(Some(Method::POST))),
            ("http:get", tool(Some(Method::GET))),
        ])
    }
}

impl HttpFetch {
    /// What `ListTools` says about this name: the method it sends and the hosts it
    /// reaches, so that an agent can tell what is worth trying.
    pub fn spec(&self) -> ToolSpec {
        let what = match &self.fixed_method {
            None => "Sends an HTTP request (GET unless `method` says otherwise)".to_owned(),
            Some(method) => format!("Sends an HTTP {method} request"),
        };
        let hosts = if self.shared.allow_shown.is_empty() {
            "no host (none is allowed)".to_owned()
        } else {
            self.shared.allow_shown.clone()
        };
        ToolSpec::new(
            format!(
                "{what} to one of: {hosts}. Answers {{status, headers, body}}: body is the \
                 response's text, or its JSON value when it is JSON. A secret's handle \
                 (from secrets:get) is replaced by its value where the secret may go."
            ),
            serde_json::json!({
                "type": "object",
                "properties": {
                    "url": {"type": "string", "description": "Absolute http(s) URL."},
                    "method": {"type": "string", "description": format!("One of {}.", METHODS.join(", "))},
                    "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                    "body": {"description": "A string, sent as it is, or any other JSON value, sent as JSON."},
                },
                "required": ["url"],
                "additionalProperties": false,
            }),
        )
    }
}

impl Shared {
    fn new(config: &HttpFetchConfig, lookup: address::Lookup) -> Result<Shared, String> {
        let allow = config
            .allow_hosts
            .iter()
            .map(|h| HostPort::parse(h))
            .collect::<Result<Vec<_>, _>>()?;
        let resolver = (!config.allow_private_ips).then(|| address::PublicOnly::new(lookup));
        Ok(Shared {
            client: client(resolver)?,
            allow,
            allow_shown: config.allow_hosts.join(", "),
            allow_private_ips: config.allow_private_ips,
            max_response_bytes: config.max_response_bytes,
            max_redirects: config.max_redirects,
        })
    }
}

/// Redirects off (followed by hand), no proxy from the environment, TLS with the ring
/// provider and the OS trust store, and (unless private addresses are allowed) the
/// resolver that refuses them.
pub(crate) fn client(resolver: Option<address::PublicOnly>) -> Result<reqwest::Client, String> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_platform_verifier()
        .map_err(|e| format!("TLS trust store: {e}"))?
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("enclave-broker/", env!("CARGO_PKG_VERSION")))
        .tls_backend_preconfigured(tls);
    if let Some(resolver) = resolver {
        builder = builder.dns_resolver(resolver);
    }
    builder
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    url: String,
    method: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<serde_json::Value>,
}

/// A request with secrets substituted, ready to send (and re-send on a redirect).
struct Prepared {
    method: Method,
    url: Url,
    headers: HeaderMap,
    /// Headers whose value had a secret substituted: dropped on a cross-origin redirect.
    secret_headers: Vec<HeaderName>,
    body: Option<Zeroizing<Vec<u8>>>,
    body_has_secret: bool,
}

impl Tool for HttpFetch {
    fn call<'a>(&'a self, cx: &'a ToolContext<'a>, args: serde_json::Value) -> ToolFuture<'a> {
        Box::pin(async move {
            let args: Args = parse_args(args, USAGE)?;
            let request = self.prepare(cx.secrets, args)?;
            self.shared.send(cx.secrets, request).await
        })
    }
}

impl HttpFetch {
    fn prepare(&self, secrets: &JobSecrets, args: Args) -> Result<Prepared, ToolError> {
        let method = match (&self.fixed_method, args.method) {
            (Some(fixed), None) => fixed.clone(),
            (Some(fixed), Some(m)) if m.eq_ignore_ascii_case(fixed.as_str()) => fixed.clone(),
            (Some(fixed), Some(m)) => {
                return Err(ToolError::bad_args(format!(
                    "this tool only sends {fixed}, not {m}; use http:fetch"
                )));
            }
            (None, None) => Method::GET,
            (None, Some(m)) => {
                let upper = m.to_ascii_uppercase();
                if !METHODS.contains(&upper.as_str()) {
                    return Err(ToolError::bad_args(format!(
                        "method `{m}` is not one of {}",
                        METHODS.join(", ")
                    )));
                }
                Method::from_bytes(upper.as_bytes())
                    .map_err(|_| ToolError::bad_args("invalid method"))?
            }
        };
        if args.body.is_some() && (method == Method::GET || method == Method::HEAD) {
            return Err(ToolError::bad_args(format!(
                "a {method} request cannot have a body"
            )));
        }

        // The URL as written (handles, not values) decides where the request goes, and
        // every handle in it must be allowed there before any is filled in.
        let written = Url::parse(&args.url)
            .map_err(|e| ToolError::bad_args(format!("`url` is not an absolute URL: {e}")))?;
        self.shared.check_destination(&written)?;
        check_url(secrets, &written)?;
        let url = Url::parse(&secrets.reveal_in_url(written.as_str())).map_err(|_| {
            ToolError::bad_args("`url` is not valid once its secrets are filled in")
        })?;
        if origin(&url) != origin(&written) {
            return Err(ToolError::denied(
                "a secret may not change where a request goes",
            ));
        }

        let mut headers = HeaderMap::new();
        let mut secret_headers = Vec::new();
        for (name, value) in &args.headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ToolError::bad_args(format!("`{name}` is not a valid header name")))?;
            if FORBIDDEN_HEADERS.contains(&header.as_str()) {
                return Err(ToolError::denied(format!(
                    "header `{header}` is set by the broker, not the script"
                )));
            }
            let found = secrets.handles_in(value);
            for handle in &found {
                let place = Place::Header {
                    name: &header,
                    value,
                    handle: &value[handle.range.clone()],
                };
                admit(&handle.secret, place, &written)?;
            }
            // A header-bound secret written as its handle alone gets its format.
            let text: Cow<str> = match found.as_slice() {
                [only] if only.range == (0..value.len()) => match only.secret.binding() {
                    Some(b) => match &b.inject {
                        Inject::Header { format, .. } => Cow::Owned(format.replace("{}", value)),
                        _ => Cow::Borrowed(value),
                    },
                    None => Cow::Borrowed(value),
                },
                _ => Cow::Borrowed(value),
            };
            let revealed = secrets.reveal(&text);
            let mut header_value = HeaderValue::from_str(&revealed).map_err(|_| {
                ToolError::bad_args(format!(
                    "header `{name}` has a value that is not allowed in HTTP"
                ))
            })?;
            if !found.is_empty() {
                header_value.set_sensitive(true);
                secret_headers.push(header.clone());
            }
            headers.append(header, header_value);
        }

        let (body, body_has_secret) = match args.body {
            None => (None, false),
            Some(serde_json::Value::String(text)) => {
                let found = secrets.handles_in(&text);
                for handle in &found {
                    admit(&handle.secret, Place::Body, &written)?;
                }
                let revealed = secrets.reveal(&text);
                (
                    Some(Zeroizing::new(revealed.as_bytes().to_vec())),
                    !found.is_empty(),
                )
            }
            Some(mut value) => {
                check_json_body(secrets, &value, &written)?;
                let has = reveal_json(secrets, &mut value);
                let bytes = serde_json::to_vec(&value).map_err(|e| {
                    ToolError::bad_args(format!("`body` is not JSON-encodable: {e}"))
                })?;
                if has {
                    zero_json(&mut value);
                }
                if !headers.contains_key(CONTENT_TYPE) {
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                }
                (Some(Zeroizing::new(bytes)), has)
            }
        };
        Ok(Prepared {
            method,
            url,
            headers,
            secret_headers,
            body,
            body_has_secret,
        })
    }
}

/// Where in a request a handle was found.
enum Place<'a> {
    /// The path, the fragment, or the query other than a parameter's whole value.
    Url,
    /// The whole value of this query parameter (its name decoded).
    Query(String),
    Header {
        name: &'a HeaderName,
        value: &'a str,
        handle: &'a str,
    },
    Body,
}

impl fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Url => f.write_str("in the URL"),
            Place::Query(name) => write!(f, "in the query parameter `{name}`"),
            Place::Header { name, value, .. } => write!(f, "in the header `{name}: {value}`"),
            Place::Body => f.write_str("in the body"),
        }
    }
}

/// Whether `secret`'s binding lets its value go to `url`, at `place`.
fn admit(secret: &Secret, place: Place<'_>, url: &Url) -> Result<(), ToolError> {
    let name = secret.name();
    let Some(binding) = secret.binding() else {
        return Err(ToolError::denied(format!(
            "secret `{name}` is not bound to any host, so http:fetch sends it nowhere (the broker's config binds it in [tools.\"secrets:get\".secrets.{name}])"
        )));
    };
    if !binding.allows_host(url) {
        return Err(ToolError::denied(format!(
            "secret `{name}` may only be sent {binding}, not to `{}`",
            host_port(url)
        )));
    }
    let allowed = match (&binding.inject, &place) {
        (Inject::Anywhere, _) => true,
        (Inject::Query { name: bound }, Place::Query(key)) => bound == key,
        (
            Inject::Header {
                name: bound,
                format,
            },
            Place::Header {
                name: header,
                value,
                handle,
            },
        ) => {
            header.as_str().eq_ignore_ascii_case(bound)
                && (value == handle || *value == format.replace("{}", handle))
        }
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(ToolError::denied(format!(
            "secret `{name}` may only be sent {binding}; here it is {place}"
        )))
    }
}

/// Every handle in the URL is somewhere its secret may go. Found in the URL's full text
/// and placed by offset, so that a handle cannot straddle two parts unseen (`user:pass`
/// is split at the `:` that every handle has).
fn check_url(secrets: &JobSecrets, url: &Url) -> Result<(), ToolError> {
    use url::Position;
    let text = url.as_str();
    let at = |p: Position| url[..p].len();
    let userinfo = at(Position::BeforeUsername)..at(Position::AfterPassword);
    let host = at(Position::BeforeHost)..at(Position::AfterPort);
    let query = at(Position::BeforeQuery)..at(Position::AfterQuery);
    let in_userinfo = |secret: &Secret| {
        ToolError::denied(format!(
            "secret `{}` may not go in the URL's user info: it would be sent base64-encoded in an `Authorization: Basic` header, which no binding covers",
            secret.name()
        ))
    };
    // The URL parser percent-encodes the `:` of a handle in the password.
    for part in [url.username(), url.password().unwrap_or_default()] {
        let decoded = percent_encoding::percent_decode_str(part).decode_utf8_lossy();
        if let Some(found) = secrets.handles_in(&decoded).first() {
            return Err(in_userinfo(&found.secret));
        }
    }
    for found in secrets.handles_in(text) {
        let r = &found.range;
        let overlaps = |p: &Range<usize>| r.start < p.end && p.start < r.end;
        if overlaps(&userinfo) {
            return Err(in_userinfo(&found.secret));
        }
        if overlaps(&host) {
            return Err(ToolError::denied(
                "a secret may not change where a request goes",
            ));
        }
        let place = if query.start <= r.start && r.end <= query.end {
            query_place(
                &text[query.clone()],
                r.start - query.start..r.end - query.start,
            )
        } else {
            Place::Url
        };
        admit(&found.secret, place, url)?;
    }
    Ok(())
}

/// A handle at `r` in `query`: the whole value of a parameter, or somewhere else.
fn query_place(query: &str, r: Range<usize>) -> Place<'static> {
    let start = query[..r.start].rfind('&').map_or(0, |i| i + 1);
    let end = query[r.end..].find('&').map_or(query.len(), |i| r.end + i);
    match query[start..end].split_once('=') {
        Some((key, _)) if start + key.len() + 1 == r.start && r.end == end => {
            let key = key.replace('+', " ");
            Place::Query(
                percent_encoding::percent_decode_str(&key)
                    .decode_utf8_lossy()
                    .into_owned(),
            )
        }
        _ => Place::Url,
    }
}

/// Every handle in a JSON body is somewhere its secret may go.
fn check_json_body(
    secrets: &JobSecrets,
    value: &serde_json::Value,
    url: &Url,
) -> Result<(), ToolError> {
    let check = |text: &str| {
        secrets
            .handles_in(text)
            .iter()
            .try_for_each(|h| admit(&h.secret, Place::Body, url))
    };
    match value {
        serde_json::Value::String(s) => check(s),
        serde_json::Value::Array(items) => items
            .iter()
            .try_for_each(|v| check_json_body(secrets, v, url)),
        serde_json::Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            // Keys are not filled in (nor could they be wiped afterwards).
            if let Some(h) = secrets.handles_in(k).first() {
                return Err(ToolError::denied(format!(
                    "secret `{}` may not be a key of the body, only a value",
                    h.secret.name()
                )));
            }
            check_json_body(secrets, v, url)
        }),
        _ => Ok(()),
    }
}

impl Shared {
    /// The scheme, the allow-list, and (for an IP literal, which no resolver sees) the
    /// address. Names are checked by the resolver, when reqwest connects.
    fn check_destination(&self, url: &Url) -> Result<(), ToolError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ToolError::denied(format!(
                "scheme `{}` is not allowed; use http or https",
                url.scheme()
            )));
        }
        if !self.allow.iter().any(|allowed| allowed.matches(url)) {
            return Err(ToolError::denied(format!(
                "host `{}` is not in the allow-list ({})",
                host_port(url),
                if self.allow_shown.is_empty() {
                    "empty"
                } else {
                    &self.allow_shown
                }
            )));
        }
        if !self.allow_private_ips
            && let Some(refusal) = url
                .host_str()
                .and_then(|h| h.trim_start_matches('[').trim_end_matches(']').parse().ok())
                .and_then(address::NonPublic::literal)
        {
            return Err(ToolError::denied(refusal.to_string()));
        }
        Ok(())
    }

    async fn send(
        &self,
        secrets: &JobSecrets,
        mut request: Prepared,
    ) -> Result<serde_json::Value, ToolError> {
        let mut hops = 0;
        let response = loop {
            let mut builder = self
                .client
                .request(request.method.clone(), request.url.clone());
            builder = builder.headers(request.headers.clone());
            if let Some(body) = &request.body {
                builder = builder.body(body.to_vec());
            }
            let response = builder
                .send()
                .await
                .map_err(|e| describe(&request.url, e))?;
            let Some(next) = redirect_target(&request.url, &response) else {
                break response;
            };
            hops += 1;
            if hops > self.max_redirects {
                return Err(ToolError::failed(format!(
                    "more than {} redirects",
                    self.max_redirects
                )));
            }
            let next = next?;
            self.check_destination(&next)
                .map_err(|e| ToolError::denied(format!("redirect refused: {e}")))?;
            // The service wrote this URL: a secret value in it (echoed from this
            // request) goes on only where the secret may be sent in a URL.
            for secret in secrets.values_in(next.as_str()) {
                let allowed = secret.binding().filter(|b| {
                    b.allows_host(&next)
                        && matches!(b.inject, Inject::Query { .. } | Inject::Anywhere)
                });
                if allowed.is_none() {
                    return Err(ToolError::denied(format!(
                        "redirect to `{}` refused: its URL carries the value of secret `{}`, which may only be sent {}",
                        host_port(&next),
                        secret.name(),
                        secret
                            .binding()
                            .map_or_else(|| "nowhere".to_string(), |b| b.to_string())
                    )));
                }
            }
            let status = response.status();
            if status == StatusCode::SEE_OTHER
                || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
                    && request.method == Method::POST)
            {
                if request.method != Method::HEAD {
                    request.method = Method::GET;
                }
                request.body = None;
                request.body_has_secret = false;
                request.headers.remove(CONTENT_TYPE);
            }
            if origin(&next) != origin(&request.url) {
                for name in request.secret_headers.drain(..) {
                    request.headers.remove(name);
                }
                for name in ["authorization", "cookie"] {
                    request.headers.remove(name);
                }
                if request.body_has_secret {
                    return Err(ToolError::denied(format!(
                        "redirect to `{}` refused: the request body carries a secret",
                        host_port(&next)
                    )));
                }
            }
            request.url = next;
        };
        self.read(response, request.method == Method::HEAD).await
    }

    async fn read(
        &self,
        mut response: reqwest::Response,
        head: bool,
    ) -> Result<serde_json::Value, ToolError> {
        let cap = self.max_response_bytes;
        let too_large = || {
            ToolError::failed(format!(
                "the response body is larger than the {cap}-byte limit"
            ))
        };
        // A HEAD response announces the length of a body it does not send.
        if !head && response.content_length().is_some_and(|n| n > cap) {
            return Err(too_large());
        }
        let status = response.status().as_u16();
        let mut headers = BTreeMap::<String, String>::new();
        for (name, value) in response.headers() {
            let value = String::from_utf8_lossy(value.as_bytes());
            headers
                .entry(name.as_str().to_string())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert_with(|| value.into_owned());
        }
        let is_json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|ct| {
                let essence = ct
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                essence == "application/json" || essence.ends_with("+json")
            })
            .unwrap_or(false);
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| describe(response.url(), e))?
        {
            if body.len() as u64 + chunk.len() as u64 > cap {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        let body = match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(json) if is_json => json,
            _ => serde_json::Value::String(String::from_utf8_lossy(&body).into_owned()),
        };
        Ok(serde_json::json!({ "status": status, "headers": headers, "body": body }))
    }
}

/// `Some` when the response is a redirect the client would follow.
fn redirect_target(current: &Url, response: &reqwest::Response) -> Option<Result<Url, ToolError>> {
    let status = response.status();
    if !matches!(
        status,
        StatusCode::MOVED_PERMANENTLY
            | StatusCode::FOUND
            | StatusCode::SEE_OTHER
            | StatusCode::TEMPORARY_REDIRECT
            | StatusCode::PERMANENT_REDIRECT
    ) {
        return None;
    }
    let location = response.headers().get(LOCATION)?;
    Some(
        location
            .to_str()
            .ok()
            .and_then(|l| current.join(l).ok())
            .ok_or_else(|| {
                ToolError::failed(format!("redirect ({status}) to an invalid Location"))
            }),
    )
}

/// Fills secrets into every string of a JSON body; true if any was filled in.
fn reveal_json(secrets: &JobSecrets, value: &mut serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) if s.contains(HANDLE_PREFIX) => {
            let revealed = secrets.reveal(s);
            let changed = *revealed != *s;
            if changed {
                let mut old = std::mem::replace(s, revealed.to_string());
                zeroize::Zeroize::zeroize(&mut old);
            }
            changed
        }
        serde_json::Value::Array(items) => items
            .iter_mut()
            .fold(false, |any, v| reveal_json(secrets, v) | any),
        serde_json::Value::Object(map) => map
            .values_mut()
            .fold(false, |any, v| reveal_json(secrets, v) | any),
        _ => false,
    }
}

/// Wipes the strings of a JSON value that held revealed secrets, once encoded.
fn zero_json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) => zeroize::Zeroize::zeroize(s),
        serde_json::Value::Array(items) => items.iter_mut().for_each(zero_json),
        serde_json::Value::Object(map) => map.values_mut().for_each(zero_json),
        _ => {}
    }
}

fn origin(url: &Url) -> (String, Option<String>, Option<u16>) {
    (
        url.scheme().to_string(),
        url.host_str().map(str::to_string),
        url.port_or_known_default(),
    )
}

fn host_port(url: &Url) -> String {
    match (url.host_str(), url.port_or_known_default()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => "(none)".into(),
    }
}

/// A script-facing description of a transport error. Never includes the URL, which
/// carries secret values by now (the registry scrubs too; this keeps logs clean as well).
fn describe(url: &Url, error: reqwest::Error) -> ToolError {
    let target = host_port(url);
    let what = if error.is_connect() {
        format!("could not connect to {target}")
    } else if error.is_timeout() {
        format!("{target} timed out")
    } else if error.is_body() || error.is_decode() {
        format!("reading the response from {target} failed")
    } else {
        format!("the request to {target} failed")
    };
    let mut causes = Vec::new();
    let error = error.without_url();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&error);
    while let Some(cause) = source {
        // The resolver refused the name's addresses: a refusal, and its own message.
        if let Some(refusal) = cause.downcast_ref::<address::NonPublic>() {
            return ToolError::denied(refusal.to_string());
        }
        causes.push(cause.to_string());
        source = cause.source();
    }
    causes.dedup();
    match causes.last() {
        Some(root) => ToolError::failed(format!("{what}: {root}")),
        None => ToolError::failed(what),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    fn config(allow: &str) -> HttpFetchConfig {
        HttpFetchConfig {
            enabled: true,
            allow_hosts: vec![allow.into()],
            allow_private_ips: false,
            timeout_ms: 1_000,
            max_response_bytes: 1 << 20,
            max_redirects: 2,
        }
    }

    /// A rebinding DNS server answers the check with a public address and the connection
    /// with loopback. There is only one lookup, and the connection uses its answer.
    #[tokio::test]
    async fn the_connection_goes_to_the_address_that_was_checked() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            }
        });
        let lookups = Arc::new(AtomicUsize::new(0));
        let count = lookups.clone();
        let lookup: address::Lookup = Arc::new(move |_name: String| {
            let n = count.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                // TEST-NET addresses are refused too; this one is public, and nothing here
                // answers on it.
                let public = "1.1.1.1".parse().unwrap();
                Ok(vec![if n == 0 {
                    public
                } else {
                    "127.0.0.1".parse().unwrap()
                }])
            })
        });
        let shared =
            Arc::new(Shared::new(&config(&format!("rebind.test:{port}")), lookup).unwrap());
        let tool = HttpFetch {
            shared,
            fixed_method: None,
        };
        let secrets = JobSecrets::none();
        let cx = ToolContext {
            name: "http:fetch",
            job_id: "test",
            secrets: &secrets,
            deadline: tokio::time::Instant::now() + Duration::from_secs(1),
        };
        for _ in 0..2 {
            let args = serde_json::json!({"url": format!("http://rebind.test:{port}/")});
            let outcome = tokio::time::timeout(Duration::from_secs(1), tool.call(&cx, args)).await;
            assert!(!matches!(outcome, Ok(Ok(_))), "{outcome:?}");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            0,
            "connected to the second answer"
        );
        assert_eq!(lookups.load(Ordering::SeqCst), 2, "one lookup per request");
    }
}
