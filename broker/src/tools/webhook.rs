//! Webhook tool services: each call is a `POST` of JSON to the integrator's URL.
//!
//! The request body is `{"tool", "args", "jobId", "deadlineUnixMs"}`; the answer is
//! `{"result": <JSON>}` or `{"error": "<message>"}` (README.md, "Tool services"). With
//! `hmac_key_env`, every request carries `X-Enclave-Signature: t=<unix seconds>,
//! v1=<hex HMAC-SHA256(key, "<t>." + body)>`, Stripe's scheme: the service checks the
//! MAC and that `t` is recent, so a captured request cannot be replayed later.
//!
//! What reaches the script on failure names the service, never its address or what its
//! error page said: those go to the broker's log.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{KeyInit, Mac};
use serde_json::Value;
use zeroize::Zeroizing;

use super::{Tool, ToolContext, ToolError, ToolFuture, ToolSpec, ToolsError, shorten, unix_ms};
use crate::config::{DeclaredTool, ToolServiceConfig};

/// The signature header's name.
pub const SIGNATURE_HEADER: &str = "x-enclave-signature";

/// The longest error message a service's answer passes to the script.
pub(crate) const MAX_ERROR_CHARS: usize = 1000;

/// What a webhook may add around its result (`{"result": ...}`, whitespace).
const ENVELOPE_BYTES: usize = 4096;

pub(crate) struct Webhook {
    service: String,
    url: reqwest::Url,
    client: reqwest::Client,
    key: Option<Zeroizing<Vec<u8>>>,
    reveal: Vec<String>,
    max_answer_bytes: usize,
}

impl Webhook {
    pub(crate) fn new(
        service: &str,
        url: &str,
        config: &ToolServiceConfig,
        reveal: Vec<String>,
    ) -> Result<Webhook, ToolsError> {
        let error = |message: String| ToolsError::Service {
            service: service.to_owned(),
            message,
        };
        let url = reqwest::Url::parse(url).map_err(|e| error(format!("webhook: {e}")))?;
        let key = match (&config.hmac_key_env, &config.hmac_key_file) {
            (Some(var), _) => Some((
                format!("hmac_key_env: {var}"),
                Zeroizing::new(std::env::var(var).map_err(|_| {
                    error(format!(
                        "hmac_key_env: the environment variable {var} is not set"
                    ))
                })?),
            )),
            (None, Some(file)) => Some((
                format!("hmac_key_file: {}", file.display()),
                Zeroizing::new(
                    std::fs::read_to_string(file)
                        .map_err(|e| error(format!("hmac_key_file: {}: {e}", file.display())))?,
                ),
            )),
            (None, None) => None,
        };
        let key = match key {
            None => None,
            Some((from, key)) => {
                // A key file usually ends with a newline that is not part of the key.
                let key = key.trim_end_matches(['\r', '\n']);
                if key.len() < 16 {
                    return Err(error(format!(
                        "{from}: the key is {} bytes; use at least 16 (32 random bytes, hex or base64, is usual)",
                        key.len()
                    )));
                }
                Some(Zeroizing::new(key.as_bytes().to_vec()))
            }
        };
        Ok(Webhook {
            service: service.to_owned(),
            url,
            client: super::http::client(None).map_err(error)?,
            key,
            reveal,
            max_answer_bytes: config.max_result_bytes as usize + ENVELOPE_BYTES,
        })
    }

    fn fail(&self, message: impl std::fmt::Display) -> ToolError {
        ToolError::failed(format!("tool service `{}` {message}", self.service))
    }

    /// The request body; a `Zeroizing` string, as it may carry a revealed secret.
    fn body(&self, cx: &ToolContext<'_>, args: &Value) -> Zeroizing<String> {
        let args = args.to_string();
        let args = cx.secrets.reveal_in_json(&args, &self.reveal);
        let deadline = unix_ms(cx.deadline);
        Zeroizing::new(format!(
            "{{\"tool\":{},\"args\":{},\"jobId\":{},\"deadlineUnixMs\":{deadline}}}",
            Value::from(cx.name),
            args.as_str(),
            Value::from(cx.job_id),
        ))
    }

    fn signature(&self, body: &str) -> Option<String> {
        let key = self.key.as_ref()?;
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Some(format!("t={t},v1={}", sign(key, t, body)))
    }

    async fn send(&self, cx: &ToolContext<'_>, args: Value) -> Result<Value, ToolError> {
        let body = self.body(cx, &args);
        let mut request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(signature) = self.signature(&body) {
            request = request.header(SIGNATURE_HEADER, signature);
        }
        let mut response = request
            .body(body.as_bytes().to_vec())
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(service = %self.service, error = %e, "webhook call failed");
                self.fail("is unreachable")
            })?;
        let status = response.status();
        if !status.is_success() {
            tracing::warn!(service = %self.service, %status, "webhook answered an error status");
            return Err(self.fail(format_args!("answered HTTP {}", status.as_u16())));
        }
        let mut answer = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            tracing::warn!(service = %self.service, error = %e, "reading the webhook's answer");
            self.fail("broke off its answer")
        })? {
            if answer.len() + chunk.len() > self.max_answer_bytes {
                return Err(self.fail(format_args!(
                    "answered more than its max_result_bytes ({} bytes)",
                    self.max_answer_bytes - ENVELOPE_BYTES
                )));
            }
            answer.extend_from_slice(&chunk);
        }
        outcome(&answer).map_err(|message| self.fail(message))?
    }
}

impl Tool for Webhook {
    fn call<'a>(&'a self, cx: &'a ToolContext<'a>, args: Value) -> ToolFuture<'a> {
        Box::pin(self.send(cx, args))
    }
}

/// The script's outcome from a webhook's answer: `Err` when the answer is not one.
fn outcome(answer: &[u8]) -> Result<Result<Value, ToolError>, String> {
    let not_an_answer =
        || "answered something other than {\"result\": ...} or {\"error\": \"...\"}".to_owned();
    let Ok(Value::Object(mut answer)) = serde_json::from_slice::<Value>(answer) else {
        return Err(not_an_answer());
    };
    if let Some(result) = answer.remove("result") {
        return Ok(Ok(result));
    }
    match answer.remove("error") {
        Some(Value::String(message)) => {
            Ok(Err(ToolError::failed(shorten(&message, MAX_ERROR_CHARS))))
        }
        _ => Err(not_an_answer()),
    }
}

/// The hex HMAC-SHA256 of `"<t>.<body>"`.
pub(crate) fn sign(key: &[u8], t: u64, body: &str) -> String {
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key)
        .expect("HMAC takes keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A declared tool's spec, its TOML schema as JSON.
pub(crate) fn spec(
    service: &str,
    tool: &str,
    declared: &DeclaredTool,
) -> Result<ToolSpec, ToolsError> {
    let schema = match &declared.input_schema {
        None => Value::Object(Default::default()),
        Some(toml) => serde_json::to_value(toml).map_err(|e| ToolsError::Service {
            service: service.to_owned(),
            message: format!("tools.\"{tool}\".input_schema: {e}"),
        })?,
    };
    Ok(ToolSpec::new(declared.description.clone(), schema))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_become_results_or_errors() {
        assert_eq!(
            outcome(br#"{"result": {"rows": [1]}}"#).unwrap().unwrap(),
            serde_json::json!({"rows": [1]})
        );
        assert_eq!(
            outcome(br#"{"result": null}"#).unwrap().unwrap(),
            Value::Null
        );
        assert_eq!(
            outcome(br#"{"error": "no such table"}"#)
                .unwrap()
                .unwrap_err()
                .message,
            "no such table"
        );
        let long = format!(r#"{{"error": "{}"}}"#, "x".repeat(5000));
        let message = outcome(long.as_bytes()).unwrap().unwrap_err().message;
        assert_eq!(message.chars().count(), MAX_ERROR_CHARS + 1);
        for bad in [&b"[1]"[..], b"{}", b"{\"error\": 7}", b"<html>"] {
            assert!(outcome(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_time_dot_body() {
        // Computed independently with Python's hmac module:
        // hmac.new(b"Jefe", b"1700000000.{}", "sha256").hexdigest()
        assert_eq!(
            sign(b"Jefe", 1_700_000_000, "{}"),
            "d3793e2b4103edfbd98cc19591832f5fad701d413db9fcae0ae7dab8184ed207"
        );
    }
}
