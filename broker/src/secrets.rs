//! Secrets that scripts may use but never see.
//!
//! # Why handles
//!
//! A script runs on an executor, and everything it holds travels over the executor's
//! stream, shows up in `tool_call` events that go to the client, and can be logged or
//! returned. A secret value given to the script would leak through any of these. So
//! `secrets:get` answers with an opaque handle, `enclave-secret:<24 hex>`, unique to the
//! job and meaningless anywhere else. The broker swaps the real value in only where the
//! broker itself sends it (the URL, headers and body of `http:fetch`, also when the
//! script has concatenated the handle into a longer string such as `'Bearer ' + key`),
//! and swaps it back out of everything that returns to the script, so an API that echoes
//! a header does not hand the value back.
//!
//! Values live in [`Zeroizing`] buffers (wiped when the store is dropped) and no type here
//! prints a value in its `Debug` output. Copies the HTTP stack makes while sending a
//! request are outside our control; they live for the duration of that request only.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use zeroize::Zeroizing;

use crate::config::SecretsConfig;

/// Every handle starts with this, so substitution can find handles inside longer text.
pub const HANDLE_PREFIX: &str = "enclave-secret:";
/// Random hex digits after the prefix: 96 bits, so a script cannot guess another job's
/// handles (they would not resolve here anyway) or forge one.
const HANDLE_HEX_LEN: usize = 24;
/// Scrubbing replaces a value wherever it appears; a value this short also appears by
/// chance in ordinary text, which would then be mangled. Worth a warning, not a refusal.
const SHORT_SECRET_BYTES: usize = 8;

/// One readable secret.
pub struct Secret {
    name: String,
    value: Zeroizing<String>,
    /// The value as it appears in a URL, for scrubbing echoed URLs.
    url_encoded: Zeroizing<String>,
}

impl Secret {
    fn new(name: String, value: Zeroizing<String>) -> Secret {
        let url_encoded = Zeroizing::new(utf8_percent_encode(&value, NON_ALPHANUMERIC).to_string());
        Secret {
            name,
            value,
            url_encoded,
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .finish()
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
    #[error("secret `{0}` is listed in `names` but found in neither the file nor `env`")]
    Missing(String),
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
        for name in &config.names {
            let value = found
                .iter()
                .find(|(k, _)| *k == name)
                .or_else(|| found.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
                .map(|(_, v)| v.clone())
                .ok_or_else(|| SecretsError::Missing(name.clone()))?;
            if value.is_empty() {
                return Err(SecretsError::Empty(name.clone()));
            }
            if value.len() < SHORT_SECRET_BYTES {
                tracing::warn!(
                    secret = %name,
                    "secret is shorter than {SHORT_SECRET_BYTES} bytes: every occurrence of its value in tool results will be replaced by its handle"
                );
            }
            secrets.insert(name.clone(), Arc::new(Secret::new(name.clone(), value)));
        }
        Ok(SecretStore {
            secrets: Arc::new(secrets),
        })
    }

    /// A store from given values (tests, or a broker that fetches secrets elsewhere).
    pub fn from_values<I, N, V>(values: I) -> SecretStore
    where
        I: IntoIterator<Item = (N, V)>,
        N: Into<String>,
        V: Into<String>,
    {
        let secrets = values
            .into_iter()
            .map(|(n, v)| {
                let name = n.into();
                (
                    name.clone(),
                    Arc::new(Secret::new(name, Zeroizing::new(v.into()))),
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

    /// `text` with this job's handles replaced by their values. Unknown handles (another
    /// job's, or made up) stay as they are.
    pub fn reveal(&self, text: &str) -> Zeroizing<String> {
        self.substitute(text, |s| &s.value)
    }

    /// Like [`reveal`](Self::reveal), percent-encoding the values: for URLs, where a
    /// value with `&` or `/` must stay one query parameter or path segment.
    pub fn reveal_in_url(&self, text: &str) -> Zeroizing<String> {
        self.substitute(text, |s| &s.url_encoded)
    }

    fn substitute(&self, text: &str, value: impl Fn(&Secret) -> &str) -> Zeroizing<String> {
        if !text.contains(HANDLE_PREFIX) {
            return Zeroizing::new(text.to_string());
        }
        let issued = self.lock();
        let mut out = Zeroizing::new(String::with_capacity(text.len()));
        let mut rest = text;
        while let Some(at) = rest.find(HANDLE_PREFIX) {
            out.push_str(&rest[..at]);
            let candidate = rest.get(at..at + HANDLE_PREFIX.len() + HANDLE_HEX_LEN);
            match candidate.and_then(|h| issued.by_handle.get(h)) {
                Some(secret) => {
                    out.push_str(value(secret));
                    rest = &rest[at + HANDLE_PREFIX.len() + HANDLE_HEX_LEN..];
                }
                None => {
                    out.push_str(HANDLE_PREFIX);
                    rest = &rest[at + HANDLE_PREFIX.len()..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// `text` with every readable secret's value (raw or percent-encoded) replaced by
    /// its handle. All readable secrets, not only those this job asked for: an allowed
    /// API may answer with a credential the script never requested.
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for secret in self.store.secrets.values() {
            for form in [&*secret.value, &*secret.url_encoded] {
                if out.contains(form) {
                    let handle = self.issue(secret);
                    out = Cow::Owned(out.replace(form, &handle));
                }
            }
        }
        out
    }

    /// Scrubs every string (keys included) of a JSON value in place. Walking the parsed
    /// value rather than its text also catches values the JSON encoding escaped.
    pub fn scrub_json(&self, value: &mut serde_json::Value) {
        if self.store.is_empty() {
            return;
        }
        match value {
            serde_json::Value::String(s) => {
                if let Cow::Owned(clean) = self.scrub(s) {
                    *s = clean;
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| self.scrub_json(v)),
            serde_json::Value::Object(map) => {
                let dirty: Vec<String> = map
                    .keys()
                    .filter(|k| matches!(self.scrub(k), Cow::Owned(_)))
                    .cloned()
                    .collect();
                for key in dirty {
                    if let Some(v) = map.remove(&key) {
                        map.insert(self.scrub(&key).into_owned(), v);
                    }
                }
                map.values_mut().for_each(|v| self.scrub_json(v));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(
            *job.reveal("enclave-secret:zz enclave-secret:"),
            "enclave-secret:zz enclave-secret:"
        );
    }

    #[test]
    fn scrubbing_replaces_raw_encoded_and_json_escaped_values() {
        let store = SecretStore::from_values([("k", "s3cr3t&/x\"")]);
        let job = store.for_job();
        let scrubbed = job.scrub("a s3cr3t&/x\" b s3cr3t%26%2Fx%22").into_owned();
        let h = job.handle_for("k").unwrap();
        assert_eq!(scrubbed, format!("a {h} b {h}"));
        let mut v = serde_json::json!({"echo": "s3cr3t&/x\"", "s3cr3t&/x\"": [1, "x s3cr3t&/x\""]});
        job.scrub_json(&mut v);
        let text = v.to_string();
        assert!(!text.contains("s3cr3t"), "{text}");
        assert_eq!(v["echo"], serde_json::json!(h));
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
