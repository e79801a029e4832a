//! The one error type of the client library.
//!
//! Job failures (a script error, a timeout) are results, not errors: [`crate::Execution`]
//! carries them, and only [`crate::Execution::into_value`] turns them into
//! [`ClientError::JobFailed`], for callers who want `?` to treat a failed job like any
//! other failure.

use enclave_proto::Fingerprint;
use tonic::Code;

use crate::outcome::JobFailure;

/// Boxed error from a user-supplied signer (see [`crate::Signer`]).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The builder was given something unusable (no pin, a bad URL, an unreadable file).
    #[error("invalid client configuration: {0}")]
    Config(String),

    /// The broker proved a key other than the pinned one: a different broker, a key
    /// rotation nobody told this client about, or a man in the middle. Never retried.
    #[error(
        "the broker's key {actual} does not match the pinned fingerprint {pinned}: refusing to connect"
    )]
    PinMismatch {
        pinned: Fingerprint,
        actual: Fingerprint,
    },

    /// The broker serves only authenticated clients and this client has no identity.
    #[error(
        "the broker requires client authentication: configure a client identity (ENCLAVE_IDENTITY / --identity)"
    )]
    ClientAuthRequired,

    /// The connection itself failed (refused, TLS, DNS). The message includes the
    /// whole cause chain (tonic's own message is just "transport error"), so the error
    /// reports no `source` of its own: printing both would say everything twice.
    #[error("cannot reach the broker: {}", error_chain(.0))]
    Transport(tonic::transport::Error),

    /// The broker (or something on the path) answered with a gRPC status. Statuses are
    /// not authenticated, so they only ever mean "no sealed answer".
    #[error("broker answered {code:?}: {message}")]
    Status { code: Code, message: String },

    /// The sealed protocol refused something: a record that does not authenticate, a
    /// downgrade, a bad signature, exhausted sequence numbers.
    #[error("protocol error: {0}")]
    Protocol(enclave_proto::Error),

    /// A sealed answer opened fine but its content makes no sense (a result that is not
    /// JSON, a reply without an outcome, the wrong handshake step).
    #[error("invalid answer from the broker: {0}")]
    InvalidReply(String),

    /// An ExecuteStream ended without its final event. `status` is what the transport
    /// said when it ended, if anything; it is not authenticated.
    #[error("the event stream ended without its final event (truncated){}", status_suffix(.status))]
    StreamTruncated { status: Option<(Code, String)> },

    /// The job ran (or was refused) and failed: only from
    /// [`crate::Execution::into_value`].
    #[error("job failed: {0}")]
    JobFailed(JobFailure),

    /// The external signer behind [`crate::ClientBuilder::signer`] failed.
    #[error("client signer failed: {0}")]
    Signer(BoxError),
}

/// `outer: inner: innermost`, skipping a cause that repeats the previous message
/// (hyper and tonic wrap errors in layers that say the same thing).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![error.to_string()];
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        cause = e.source();
    }
    parts.join(": ")
}

fn status_suffix(status: &Option<(Code, String)>) -> String {
    match status {
        Some((code, message)) => format!(" (transport: {code:?}: {message})"),
        None => String::new(),
    }
}

impl ClientError {
    /// The gRPC code behind a [`ClientError::Status`], for callers that branch on it
    /// (RESOURCE_EXHAUSTED: back off; UNAVAILABLE: no executor could start the job).
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn invalid_reply(what: impl Into<String>) -> Self {
        ClientError::InvalidReply(what.into())
    }

    /// A call that did not finish within the client's request timeout.
    pub(crate) fn deadline(timeout: std::time::Duration) -> Self {
        ClientError::Status {
            code: Code::DeadlineExceeded,
            message: format!("no answer within the request timeout of {timeout:?}"),
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        ClientError::Status {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

impl From<enclave_proto::Error> for ClientError {
    /// The two protocol errors a user must be able to match on without digging: a
    /// wrong pin and a truncated stream get their own variants.
    fn from(error: enclave_proto::Error) -> Self {
        match error {
            enclave_proto::Error::PinMismatch { pinned, actual } => {
                ClientError::PinMismatch { pinned, actual }
            }
            enclave_proto::Error::StreamTruncated => ClientError::StreamTruncated { status: None },
            other => ClientError::Protocol(other),
        }
    }
}

impl From<tonic::transport::Error> for ClientError {
    fn from(error: tonic::transport::Error) -> Self {
        ClientError::Transport(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_mismatch_and_truncation_get_their_own_variants() {
        let pinned = Fingerprint::from_bytes([1; 32]);
        let actual = Fingerprint::from_bytes([2; 32]);
        let e = ClientError::from(enclave_proto::Error::PinMismatch { pinned, actual });
        assert!(matches!(e, ClientError::PinMismatch { .. }));
        let text = e.to_string();
        assert!(
            text.contains("does not match the pinned fingerprint"),
            "{text}"
        );
        assert!(text.contains(&pinned.to_string()) && text.contains(&actual.to_string()));

        let e = ClientError::from(enclave_proto::Error::StreamTruncated);
        assert!(matches!(e, ClientError::StreamTruncated { status: None }));
        let e = ClientError::from(enclave_proto::Error::RecordAuth);
        assert!(matches!(
            e,
            ClientError::Protocol(enclave_proto::Error::RecordAuth)
        ));
    }

    #[test]
    fn error_chains_skip_repeated_causes() {
        #[derive(Debug)]
        struct Layer(&'static str, Option<Box<Layer>>);
        impl std::fmt::Display for Layer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Layer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let e = Layer(
            "transport error",
            Some(Box::new(Layer(
                "tcp connect error",
                Some(Box::new(Layer(
                    "tcp connect error",
                    Some(Box::new(Layer("Connection refused", None))),
                ))),
            ))),
        );
        assert_eq!(
            error_chain(&e),
            "transport error: tcp connect error: Connection refused"
        );
    }

    #[test]
    fn statuses_keep_code_and_message() {
        let e = ClientError::from(tonic::Status::resource_exhausted("too many sessions"));
        assert_eq!(e.code(), Some(Code::ResourceExhausted));
        assert!(e.to_string().contains("too many sessions"));
        assert_eq!(ClientError::ClientAuthRequired.code(), None);
    }

    #[test]
    fn truncation_mentions_the_transport_status_when_there_was_one() {
        let e = ClientError::StreamTruncated {
            status: Some((Code::Internal, "h2 reset".into())),
        };
        let text = e.to_string();
        assert!(
            text.contains("truncated") && text.contains("h2 reset"),
            "{text}"
        );
        let e = ClientError::StreamTruncated { status: None };
        assert!(!e.to_string().contains("transport"));
    }
}
