//! Secrets that scripts may use but never see.
//!
//! # Why handles
//!
//! A script runs on an executor, and everything it holds travels over the executor's
//! stream, shows up in `tool_call` events that go to the client, and can be logged or
//! returned. A secret value given to the script would leak through any of these. So
//! `secrets:get` answers with an opaque handle, `enclave-secret:<24 hex>`, unique to the
//! job and meaningless anywhere else.
//!
//! # Why bindings
//!
//! The broker swaps the real value in only where the broker itself sends it, and only
//! where the secret's [`Binding`] says: to its hosts, in its place (one header, one query
//! parameter, or, as an explicit opt-in, anywhere). Swapping it in wherever the script
//! likes would let a script steer the value into a part of the request that an allowed
//! service reflects in a form no scrubbing recognises: the URL's user info becomes a
//! base64 `Authorization: Basic` header, and a service that echoes only part of a body
//! can be fed the value at a different offset each time and the pieces joined. With
//! the value pinned to one header of one host, the script has nothing to steer.
//!
//! # Why scrubbing too
//!
//! Everything that leaves the broker (tool results, errors, events, logs, requests to
//! services) has every readable secret's value replaced by its handle, in the common
//! encodings too (the `scrub` module), in case a service returns the value or a script obtained
//! it some other way. This is defence in depth, not a guarantee: a value split into
//! pieces or transformed is not recognisable.
//!
//! Values live in [`Zeroizing`] buffers (wiped when the store is dropped) and no type here
//! prints a value in its `Debug` output. Copies the HTTP stack makes while sending a
//! request are outside our control; they live for the duration of that request only.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use zeroize::Zeroizing;

use crate::config::{HostPort, Inject, SecretBinding, SecretsConfig};

mod scrub;

/// Every handle starts with this, so substitution can find handles inside longer text.
pub const HANDLE_PREFIX: &str = "enclave-secret:";
/// Random hex digits after the prefix: 96 bits, so a script cannot guess another job's
/// handles (they would not resolve here anyway) or forge one.
const HANDLE_HEX_LEN: usize = 24;
/// Scrubbing replaces a value wherever it appears; a value this short also appears by
/// chance in ordinary text, which would then be mangled. Worth a warning, not a refusal.
const SHORT_SECRET_BYTES: usize = 8;
/// Scrubbing passes over one text. One is enough unless a replacement made two encoded
/// halves adjacent; the cap only bounds the work.
const MAX_SCRUB_PASSES: usize = 3;

/// One readable secret.
pub struct Secret {
    name: String,
    value: Zeroizing<String>,
    /// The value as substituted into a URL (every byte but letters and digits escaped).
    url_encoded: Zeroizing<String>,
    forms: scrub::Forms,
    binding: Option<Binding>,
}

impl Secret {
    fn new(name: String, value: Zeroizing<String>, binding: Option<Binding>) -> Secret {
        let url_encoded = Zeroizing::new(utf8_percent_encode(&value, NON_ALPHANUMERIC).to_string());
        Secret {
            name,
            forms: scrub::Forms::new(&value),
            value,
            url_encoded,
            binding,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the value may be sent; `None`: nowhere.
    pub fn binding(&self) -> Option<&Binding> {
        self.binding.as_ref()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .field("binding", &self.binding)
            .finish()
    }
}

/// The hosts a secret may be sent to and its place in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub hosts: Vec<HostPort>,
    pub inject: Inject,
}

impl Binding {
    pub fn from_config(config: &SecretBinding) -> Result<Binding, String> {
        let hosts = config
            .hosts
            .iter()
            .map(|h| HostPort::parse(h).map_err(|e| format!("hosts: `{h}`: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if hosts.is_empty() {
            return Err("hosts is empty".into());
        }
        Ok(Binding {
            hosts,
            inject: config.inject.clone(),
        })
    }

    /// Whether `url` points at one of the hosts.
    pub fn allows_host(&self, url: &reqwest::Url) -> bool {
        self.hosts.iter().any(|h| h.matches(url))
    }
}

impl fmt::Display for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<String> = self.hosts.iter().map(|h| format!("`{h}`")).collect();
        write!(f, "{} to {}", self.inject, hosts.join(" or "))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("reading the secrets file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// Deliberately without the parser's message, which may quote the file's contents.
    #[error(
        "the secrets file {path} is not a TOML table of `name = \"value\"` strings (error at {at})"
    )]
    Parse { path: String, at: String },
    #[error("secret `{0}` is configured but found in neither the file nor `env`")]
    Missing(String),
    #[error("secret `{name}`: {message}")]
    Binding { name: String, message: String },
    #[error("secret `{0}` is empty")]
    Empty(String),
}

/// The secrets scripts may ask for, loaded once at start-up. Cheap to clone.
#[derive(Clone, Default)]
pub struct SecretStore {
    secrets: Arc<BTreeMap<String, Arc<Secret>>>,
}

impl fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretStore")
            .field("names", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SecretStore {
    /// Reads the configured sources and keeps only the configured names. A listed name
    /// that is found nowhere is an error now rather than a failing script later.
    pub fn load(config: &SecretsConfig) -> Result<SecretStore, SecretsError> {
        let mut found: HashMap<String, Zeroizing<String>> = HashMap::new();
        if let Some(path) = &config.file {
            let shown = path.display().to_string();
            let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
                SecretsError::Read {
                    path: shown.clone(),
                    source,
                }
            })?);
            let table: toml::Table = toml::from_str(&text).map_err(|e| SecretsError::Parse {
                path: shown.clone(),
                at: e.span().map_or_else(
                    || "unknown position".into(),
                    |s| format!("byte {}", s.start),
                ),
            })?;
            for (name, value) in table {
                match value {
                    toml::Value::String(s) => {
                        found.insert(name, Zeroizing::new(s));
                    }
                    _ => {
                        return Err(SecretsError::Parse {
                            path: shown,
                            at: format!("key `{name}`"),
                        });
                    }
                }
            }
        }
        for var in &config.env {
            if let Ok(value) = std::env::var(var) {
                found.insert(var.clone(), Zeroizing::new(value));
            }
        }
        let mut secrets = BTreeMap::new();
        for name in config.readable() {
            if secrets.contains_key(name) {
                continue;
            }
            let value = found
                .iter()
                .find(|(k, _)| *k == name)
                .or_else(|| found.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
                .map(|(_, v)| v.clone())
                .ok_or_else(|| SecretsError::Missing(name.to_string()))?;
            if value.is_empty() {
                return Err(SecretsError::Empty(name.to_string()));
            }
            if value.len() < SHORT_SECRET_BYTES {
                tracing::warn!(
                    secret = %name,
                    "secret is shorter than {SHORT_SECRET_BYTES} bytes: every occurrence of its value in what leaves the broker will be replaced by its handle"
                );
            }
            let binding = config
                .secrets
                .get(name)
                .map(Binding::from_config)
                .transpose()
                .map_err(|message| SecretsError::Binding {
                    name: name.to_string(),
                    message,
                })?;
            match &binding {
                None => tracing::warn!(
                    secret = %name,
                    "secret has no binding: scripts get its handle, but http:fetch sends it nowhere; give it a [tools.\"secrets:get\".secrets.{name}] section with `hosts` and `inject`"
                ),
                Some(b) if b.inject == Inject::Anywhere => tracing::warn!(
                    secret = %name,
                    "secret may be placed anywhere in requests to its hosts: a host that echoes requests can be made to reveal it piece by piece"
                ),
                Some(_) => {}
            }
            secrets.insert(
                name.to_string(),
                Arc::new(Secret::new(name.to_string(), value, binding)),
            );
        }
        Ok(SecretStore {
            secrets: Arc::new(secrets),
        })
    }

    /// A store from given values, none of them bound (tests, or a broker that fetches
    /// secrets elsewhere): scripts get handles, `http:fetch` sends them nowhere.
    pub fn from_values<I, N, V>(values: I) -> SecretStore
    where
        I: IntoIterator<Item = (N, V)>,
        N: Into<String>,
        V: Into<String>,
    {
        SecretStore::from_bound(values.into_iter().map(|(n, v)| (n, v, None)))
    }

    /// A store from given values and their bindings.
    pub fn from_bound<I, N, V>(values: I) -> SecretStore
    where
        I: IntoIterator<Item = (N, V, Option<Binding>)>,
        N: Into<String>,
        V: Into<String>,
    {
        let secrets = values
            .into_iter()
            .map(|(n, v, binding)| {
                let name = n.into();
                (
                    name.clone(),
                    Arc::new(Secret::new(name, Zeroizing::new(v.into()), binding)),
                )
            })
            .filter(|(_, s)| !s.value.is_empty())
            .collect();
        SecretStore {
            secrets: Arc::new(secrets),
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.secrets.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The per-job view: handles issued to one job resolve in that job only.
    pub fn for_job(&self) -> JobSecrets {
        JobSecrets {
            store: self.clone(),
            issued: Mutex::new(Issued::default()),
        }
    }
}

#[derive(Default)]
struct Issued {
    by_handle: HashMap<String, Arc<Secret>>,
    by_name: HashMap<String, String>,
}

/// One job's handles. Tool calls of a job run concurrently, so this is shared by
/// reference with interior mutability; the lock is never held across an await.
pub struct JobSecrets {
    store: SecretStore,
    issued: Mutex<Issued>,
}

impl fmt::Debug for JobSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobSecrets")
            .field("issued", &self.lock().by_name.len())
            .finish()
    }
}

impl JobSecrets {
    /// A job with no secrets at all (nothing to substitute or scrub).
    pub fn none() -> JobSecrets {
        SecretStore::default().for_job()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Issued> {
        // A panic elsewhere while holding the lock leaves the maps consistent (each
        // update is a pair of inserts), so a poisoned lock is still usable.
        self.issued
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The handle for secret `name`, the same one every time within the job; `None`
    /// for a name that is not readable.
    pub fn handle_for(&self, name: &str) -> Option<String> {
        let secret = self.store.secrets.get(name)?;
        Some(self.issue(secret))
    }

    fn issue(&self, secret: &Arc<Secret>) -> String {
        let mut issued = self.lock();
        if let Some(handle) = issued.by_name.get(&secret.name) {
            return handle.clone();
        }
        let bytes: [u8; HANDLE_HEX_LEN / 2] = rand::random();
        let mut handle = String::with_capacity(HANDLE_PREFIX.len() + HANDLE_HEX_LEN);
        handle.push_str(HANDLE_PREFIX);
        for b in bytes {
            handle.push_str(&format!("{b:02x}"));
        }
        issued.by_name.insert(secret.name.clone(), handle.clone());
        issued.by_handle.insert(handle.clone(), secret.clone());
        handle
    }

    /// Whether any handle was given out (if not, there is nothing to substitute).
    pub fn any_issued(&self) -> bool {
        !self.lock().by_handle.is_empty()
    }

    /// This job's handles in `text`, in order. Unknown handles (another job's, or made
    /// up) are not among them: they are just text.
    pub fn handles_in(&self, text: &str) -> Vec<FoundHandle> {
        let mut found = Vec::new();
        if !text.contains(HANDLE_PREFIX) {
            return found;
        }
        let issued = self.lock();
        let mut from = 0;
        while let Some(at) = text[from..].find(HANDLE_PREFIX).map(|i| from + i) {
            let end = at + HANDLE_PREFIX.len() + HANDLE_HEX_LEN;
            match text.get(at..end).and_then(|h| issued.by_handle.get(h)) {
                Some(secret) => {
                    found.push(FoundHandle {
                        range: at..end,
                        secret: secret.clone(),
                    });
                    from = end;
                }
                None => from = at + HANDLE_PREFIX.len(),
            }
        }
        found
    }

    /// `text` with this job's handles replaced by their values. No binding is checked
    /// here: the caller has checked every handle [`handles_in`](Self::handles_in) finds.
    pub(crate) fn reveal(&self, text: &str) -> Zeroizing<String> {
        self.substitute(text, |s| &s.value)
    }

    /// Like [`reveal`](Self::reveal), percent-encoding the values: for URLs, where a
    /// value with `&` or `/` must stay one query parameter or path segment.
    pub(crate) fn reveal_in_url(&self, text: &str) -> Zeroizing<String> {
        self.substitute(text, |s| &s.url_encoded)
    }

    /// `json` (a JSON text) with the handles of the secrets named in `names` replaced by
    /// their values, JSON-escaped; every other handle stays a handle. For a tool service
    /// the config gives those secrets (`[tool_services.NAME] secrets`).
    pub(crate) fn reveal_in_json(&self, json: &str, names: &[String]) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::with_capacity(json.len()));
        let mut last = 0;
        for found in self.handles_in(json) {
            if !names.iter().any(|n| n == found.secret.name()) {
                continue;
            }
            out.push_str(&json[last..found.range.start]);
            // A JSON string of the value, without its quotes (serialising a `str` cannot
            // fail, and always gives at least `""`).
            let quoted = Zeroizing::new(
                serde_json::to_string(found.secret.value.as_str())
                    .unwrap_or_else(|_| String::from("\"\"")),
            );
            out.push_str(&quoted[1..quoted.len() - 1]);
            last = found.range.end;
        }
        out.push_str(&json[last..]);
        out
    }

    fn substitute(&self, text: &str, value: impl Fn(&Secret) -> &str) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::with_capacity(text.len()));
        let mut last = 0;
        for found in self.handles_in(text) {
            out.push_str(&text[last..found.range.start]);
            out.push_str(value(&found.secret));
            last = found.range.end;
        }
        out.push_str(&text[last..]);
        out
    }

    /// The readable secrets whose value `text` carries, in any form scrubbing finds.
    pub fn values_in(&self, text: &str) -> Vec<Arc<Secret>> {
        let scrubber = self.scrubber();
        let mut found: Vec<Arc<Secret>> = Vec::new();
        for (_, index) in scrubber.searcher.find(text) {
            let secret = scrubber.secrets[index];
            if !found.iter().any(|s| Arc::ptr_eq(s, secret)) {
                found.push(secret.clone());
            }
        }
        found
    }

    fn scrubber(&self) -> Scrubber<'_> {
        let secrets: Vec<&Arc<Secret>> = self.store.secrets.values().collect();
        let forms: Vec<&scrub::Forms> = secrets.iter().map(|s| &s.forms).collect();
        Scrubber {
            searcher: scrub::Searcher::new(&forms),
            secrets,
        }
    }

    /// `text` with every readable secret's value replaced by its handle: the value as it
    /// is and in the encodings the `scrub` module knows (JSON escapes, percent-encoding,
    /// base64 and base64url). All readable secrets, not only those this job asked for:
    /// an allowed API may answer with a credential the script never requested.
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if self.store.is_empty() {
            return Cow::Borrowed(text);
        }
        self.scrub_with(&self.scrubber(), text)
    }

    fn scrub_with<'a>(&self, scrubber: &Scrubber<'_>, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for _ in 0..MAX_SCRUB_PASSES {
            let found = scrubber.searcher.find(&out);
            if found.is_empty() {
                break;
            }
            let mut clean = String::with_capacity(out.len());
            let mut last = 0;
            for (range, index) in found {
                clean.push_str(&out[last..range.start]);
                clean.push_str(&self.issue(scrubber.secrets[index]));
                last = range.end;
            }
            clean.push_str(&out[last..]);
            out = Cow::Owned(clean);
        }
        out
    }

    /// Scrubs every string (keys included) of a JSON value in place. Each string is
    /// scrubbed as decoded, and also for the encodings inside it (a service's JSON
    /// answer in a text body).
    pub fn scrub_json(&self, value: &mut serde_json::Value) {
        if self.store.is_empty() {
            return;
        }
        self.scrub_json_with(&self.scrubber(), value);
    }

    fn scrub_json_with(&self, scrubber: &Scrubber<'_>, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(s) => {
                if let Cow::Owned(clean) = self.scrub_with(scrubber, s) {
                    *s = clean;
                }
            }
            serde_json::Value::Array(items) => items
                .iter_mut()
                .for_each(|v| self.scrub_json_with(scrubber, v)),
            serde_json::Value::Object(map) => {
                let dirty: Vec<(String, String)> = map
                    .keys()
                    .filter_map(|k| match self.scrub_with(scrubber, k) {
                        Cow::Owned(clean) => Some((k.clone(), clean)),
                        Cow::Borrowed(_) => None,
                    })
                    .collect();
                for (key, clean) in dirty {
                    if let Some(v) = map.remove(&key) {
                        map.insert(clean, v);
                    }
                }
                map.values_mut()
                    .for_each(|v| self.scrub_json_with(scrubber, v));
            }
            _ => {}
        }
    }

    /// A JSON text, scrubbed. Replacing in the text keeps the author's key order and
    /// spacing; walking the parsed value is the fallback when a replacement broke the
    /// JSON (a value matched across a string's end), and `null` the answer when that
    /// still leaves a value in the text, or the text was not JSON to begin with.
    pub fn scrub_json_text<'a>(&self, json: &'a str) -> Cow<'a, str> {
        let clean = match self.scrub(json) {
            Cow::Borrowed(_) => return Cow::Borrowed(json),
            Cow::Owned(clean) => clean,
        };
        if serde_json::from_str::<serde::de::IgnoredAny>(&clean).is_ok() {
            return Cow::Owned(clean);
        }
        let Ok(mut value) = serde_json::from_str::<serde_json::Value>(json) else {
            return Cow::Borrowed("null");
        };
        self.scrub_json(&mut value);
        match serde_json::to_string(&value) {
            Ok(walked) if matches!(self.scrub(&walked), Cow::Borrowed(_)) => Cow::Owned(walked),
            _ => Cow::Borrowed("null"),
        }
    }
}

/// The store's secrets and the search for their forms, for one scrubbing call.
struct Scrubber<'a> {
    searcher: scrub::Searcher<'a>,
    secrets: Vec<&'a Arc<Secret>>,
}

/// One of this job's handles, where it was found in a text.
#[derive(Debug)]
pub struct FoundHandle {
    pub range: Range<usize>,
    pub secret: Arc<Secret>,
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    #[test]
    fn handles_resolve_only_in_their_job() {
        let store = SecretStore::from_values([("api_key", "s3cr3t&/x")]);
        let job = store.for_job();
        let other = store.for_job();
        let h = job.handle_for("api_key").unwrap();
        assert!(h.starts_with(HANDLE_PREFIX) && h.len() == HANDLE_PREFIX.len() + HANDLE_HEX_LEN);
        assert_eq!(job.handle_for("api_key").unwrap(), h, "stable within a job");
        assert!(job.handle_for("nope").is_none());
        assert_eq!(*job.reveal(&format!("Bearer {h}!")), "Bearer s3cr3t&/x!");
        assert_eq!(
            *job.reveal_in_url(&format!("/q?k={h}")),
            "/q?k=s3cr3t%26%2Fx"
        );
        assert_eq!(*other.reveal(&format!("Bearer {h}")), format!("Bearer {h}"));
        assert!(other.handles_in(&h).is_empty());
        assert_eq!(
            *job.reveal("enclave-secret:zz enclave-secret:"),
            "enclave-secret:zz enclave-secret:"
        );
        let text = format!("a {h}{h} enclave-secret:{}", &h[HANDLE_PREFIX.len()..]);
        let found = job.handles_in(&text);
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(found[1].range, 2 + h.len()..2 + 2 * h.len());
        assert_eq!(found[2].secret.name(), "api_key");
    }

    /// Characters that JSON, URLs and base64 each treat specially.
    const VALUE: &str = "sk-live-Abc/123&x=y+z\"é";

    fn scrubbed(text: &str) -> (String, String) {
        let store = SecretStore::from_values([("k", VALUE)]);
        let job = store.for_job();
        let out = job.scrub(text).into_owned();
        (out, job.handle_for("k").unwrap())
    }

    fn assert_scrubbed(text: &str, expected: &str) {
        let (out, h) = scrubbed(text);
        assert_eq!(out, expected.replace("{h}", &h), "scrubbing {text}");
    }

    #[test]
    fn scrubbing_finds_the_value_as_it_is() {
        assert_scrubbed(&format!("a {VALUE} b {VALUE}"), "a {h} b {h}");
        assert_scrubbed("a sk-live-Abc/123 b", "a sk-live-Abc/123 b");
    }

    #[test]
    fn scrubbing_finds_json_escaped_values() {
        // serde_json's own escaping, and `\/` as PHP and others write it.
        let json = serde_json::to_string(VALUE).unwrap();
        assert_scrubbed(&format!("[{json}]"), "[\"{h}\"]");
        assert_scrubbed(r#"{"t":"sk-live-Abc\/123&x=y+z\"é"}"#, r#"{"t":"{h}"}"#);
        // Escaped twice (JSON inside a JSON string).
        let twice = serde_json::to_string(&json).unwrap();
        let (out, h) = scrubbed(&twice);
        assert!(out.contains(&h) && !out.contains("sk-live"), "{out}");
    }

    #[test]
    fn scrubbing_finds_unicode_escaped_values() {
        // Every character escaped; only some (`&` as `\u0026`, as Go and JS do for
        // HTML safety); upper-case hex; and a character outside the BMP as a pair.
        let all: String = VALUE
            .encode_utf16()
            .map(|u| format!("\\u{u:04x}"))
            .collect();
        assert_scrubbed(&format!("<{all}>"), "<{h}>");
        assert_scrubbed(r#""sk-live-Abc/123\u0026x=y\u002Bz\"\u00e9""#, r#""{h}""#);
        let store = SecretStore::from_values([("k", "emoji-😀-secret")]);
        let job = store.for_job();
        let out = job.scrub(r#"x emoji-\ud83d\ude00-secret y"#).into_owned();
        assert_eq!(out, format!("x {} y", job.handle_for("k").unwrap()));
    }

    #[test]
    fn scrubbing_finds_base64_values_at_every_alignment() {
        let engines = [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
        ];
        for engine in engines {
            for prefix in ["", "u:", "us:", "user:"] {
                let encoded = engine.encode(format!("{prefix}{VALUE}"));
                let (out, h) = scrubbed(&format!("Authorization: Basic {encoded}"));
                assert!(out.contains(&h), "{prefix}: {out}");
                assert!(
                    !out.contains(&encoded[prefix.len() * 4 / 3 + 2..encoded.len() - 3]),
                    "{out}"
                );
            }
        }
        // Inside JSON that escapes its slashes.
        let encoded = base64::engine::general_purpose::STANDARD.encode(VALUE);
        let (out, h) = scrubbed(&format!("{{\"b\":\"{}\"}}", encoded.replace('/', "\\/")));
        assert!(out.contains(&h), "{out}");
    }

    #[test]
    fn scrubbing_finds_base64url_values() {
        // `?` and `>` make `/` and `+` in base64, `_` and `-` in base64url.
        let value = "tok???>>>secret";
        let store = SecretStore::from_values([("k", value)]);
        let job = store.for_job();
        let h = job.handle_for("k").unwrap();
        for prefix in ["", "a", "ab"] {
            let encoded =
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{prefix}{value}"));
            assert!(encoded.contains(['-', '_']), "{encoded}");
            let out = job
                .scrub(&format!("/callback?token={encoded}&x=1"))
                .into_owned();
            assert!(out.contains(&h) && out.ends_with("&x=1"), "{prefix}: {out}");
            assert!(out.starts_with("/callback?token="), "{out}");
        }
    }

    #[test]
    fn scrubbing_finds_percent_encoded_values() {
        let every = percent_encoding::utf8_percent_encode(VALUE, NON_ALPHANUMERIC).to_string();
        assert_scrubbed(&format!("/q?k={every}&x=1"), "/q?k={h}&x=1");
        let lower: String = VALUE
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => char::from(b).to_string(),
                _ => format!("%{b:02x}"),
            })
            .collect();
        assert_scrubbed(&format!("/q?k={lower}"), "/q?k={h}");
        // Only the characters a URL needs escaped, as browsers and `encodeURIComponent` do.
        assert_scrubbed("?k=sk-live-Abc%2F123%26x%3Dy%2Bz%22%C3%A9", "?k={h}");
        // Percent-encoding inside JSON.
        assert_scrubbed(
            r#"{"url":"\/q?k=sk-live-Abc%2F123%26x%3Dy%2Bz%22%c3%a9"}"#,
            r#"{"url":"\/q?k={h}"}"#,
        );
        // Encoded twice.
        assert_scrubbed(&format!("?k={}", every.replace('%', "%25")), "?k={h}");
        // A form writes spaces as `+`.
        let store = SecretStore::from_values([("k", "open sesame 123")]);
        let job = store.for_job();
        let out = job.scrub("a=1&pw=open+sesame%20123").into_owned();
        assert_eq!(out, format!("a=1&pw={}", job.handle_for("k").unwrap()));
    }

    #[test]
    fn scrubbing_json_values_and_texts() {
        let store = SecretStore::from_values([("k", VALUE)]);
        let job = store.for_job();
        let h = job.handle_for("k").unwrap();
        let mut v = serde_json::json!({"echo": VALUE, VALUE: [1, format!("x {VALUE}")], "body": serde_json::to_string(&serde_json::json!({"t": VALUE})).unwrap().replace('/', "\\/")});
        job.scrub_json(&mut v);
        let text = v.to_string();
        assert!(!text.contains("sk-live"), "{text}");
        assert_eq!(v["echo"], serde_json::json!(h));
        // In a JSON text: replaced in place when that keeps it JSON...
        let json = format!(
            "{{\"b\": 1, \"a\": {}}}",
            serde_json::to_string(VALUE).unwrap()
        );
        assert_eq!(
            job.scrub_json_text(&json),
            format!("{{\"b\": 1, \"a\": \"{h}\"}}")
        );
        // ...by walking the value when it does not (the value matched across the
        // array's structure), and `null` if even that leaves the value in the text.
        let across = SecretStore::from_values([("q", "1,\"tail-secret")]).for_job();
        assert_eq!(across.scrub_json_text("[1,\"tail-secret\"]"), "null");
        let across = SecretStore::from_values([("q", "1, \"tail-secret")]).for_job();
        assert_eq!(
            across.scrub_json_text("[1, \"tail-secret\"]"),
            "[1,\"tail-secret\"]"
        );
        assert_eq!(job.scrub_json_text(&format!("not json {VALUE}")), "null");
        assert_eq!(job.scrub_json_text("[1]"), "[1]");
    }

    #[test]
    fn what_a_value_is_found_in() {
        let binding = Binding {
            hosts: vec![HostPort::parse("a.example").unwrap()],
            inject: Inject::Anywhere,
        };
        let store = SecretStore::from_bound([
            ("a", "first-secret-1", Some(binding.clone())),
            ("b", "second-secret-2", None),
        ]);
        let job = store.for_job();
        let found = job.values_in("x?t=second%2Dsecret-2&u=first-secret-1");
        let mut names: Vec<&str> = found.iter().map(|s| s.name()).collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        let a = found.iter().find(|s| s.name() == "a").unwrap();
        assert_eq!(a.binding(), Some(&binding));
        assert_eq!(
            binding.to_string(),
            "anywhere in the request but the user info to `a.example`"
        );
        assert!(job.values_in("nothing here").is_empty());
    }

    #[test]
    fn debug_output_has_no_values() {
        let store = SecretStore::from_values([("k", "hunter2")]);
        let job = store.for_job();
        job.handle_for("k");
        let shown = format!(
            "{store:?} {job:?} {:?}",
            store.secrets.values().collect::<Vec<_>>()
        );
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
