//! One error type for the sealed protocol, with the gRPC status the broker answers with.
//!
//! The mapping lives here rather than in the broker so that every implementation of the
//! protocol (and docs/PROTOCOL.md, which lists the same table) agrees on what a client
//! sees for each failure.

use std::fmt;
use std::path::PathBuf;

use crate::keys::Fingerprint;
use crate::v1::RecordKind;

/// Which side of the handshake produced or failed a proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    Client,
    Server,
}

impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Party::Client => "client",
            Party::Server => "server",
        })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- handshake input -------------------------------------------------------------
    #[error("unsupported protocol version {0} (supported: 1)")]
    UnsupportedVersion(u32),
    #[error("unsupported suite {0} (supported: 1 = X25519, 2 = P-256)")]
    UnsupportedSuite(i32),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("invalid {0} key share")]
    InvalidShare(&'static str),
    /// RFC 7748 section 6.1: a low-order peer share makes X25519 output all zeros, which
    /// would give an attacker-known key.
    #[error("key exchange produced the all-zero shared secret (low-order X25519 share)")]
    ZeroSharedSecret,
    #[error("server answered with version {version} / suite {suite}, not the one offered")]
    Downgrade { version: u32, suite: i32 },
    #[error("server identity {actual} does not match the pinned fingerprint {pinned}")]
    PinMismatch {
        pinned: Fingerprint,
        actual: Fingerprint,
    },
    #[error("{0} signature does not verify over the handshake transcript")]
    BadSignature(Party),
    #[error("{0} Finished MAC does not verify")]
    BadFinished(Party),
    #[error("client key {0} is not allowed")]
    UnknownClientKey(Fingerprint),
    #[error("this broker requires client authentication before any request")]
    ClientAuthRequired,
    #[error("client authentication is only possible once, before the first request")]
    ClientAuthUnexpected,
    /// For the broker's session table: the protocol itself never looks sessions up.
    #[error("unknown or expired session")]
    UnknownSession,

    // ---- records ---------------------------------------------------------------------
    #[error("record belongs to another session")]
    WrongSession,
    #[error("record kind {got:?} where {expected:?} was expected")]
    UnexpectedKind {
        expected: RecordKind,
        got: RecordKind,
    },
    #[error("record sequence number {0} was already received")]
    Replay(u64),
    #[error("record sequence number {0} is older than the replay window")]
    TooOld(u64),
    #[error("key epoch {0} has expired")]
    StaleEpoch(u32),
    #[error("key epoch {got} is ahead of the expected epoch {current}+1")]
    EpochAhead { current: u32, got: u32 },
    #[error("record authentication failed")]
    RecordAuth,
    #[error("record plaintext of {0} bytes exceeds the 16 MiB limit")]
    RecordTooLarge(usize),
    #[error("sequence numbers or key epochs exhausted: start a new session")]
    Exhausted,
    #[error("could not decode {what}: {source}")]
    Decode {
        what: &'static str,
        source: prost::DecodeError,
    },

    // ---- streams (client side) -------------------------------------------------------
    #[error("stream event {got} arrived where event {expected} was expected")]
    StreamOrder { expected: u32, got: u32 },
    #[error("stream ended without its final event (truncated)")]
    StreamTruncated,
    #[error("record after the stream's final event")]
    StreamFinished,
    #[error("stream event content does not match its record kind")]
    StreamKindMismatch,

    // ---- local -----------------------------------------------------------------------
    #[error("operating system random number generator failed: {0}")]
    Rng(getrandom::Error),
    #[error("key file {path}: {source}")]
    KeyFileIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("invalid fingerprint {0:?}: expected sha256:<64 hex digits>")]
    InvalidFingerprint(String),
}

impl Error {
    /// The gRPC status code the broker answers with (docs/PROTOCOL.md, "Errors").
    ///
    /// UNAUTHENTICATED tells a client its proofs or its session are not accepted (start
    /// over with a new handshake); ABORTED that nothing ran and re-sealing the request
    /// under a fresh sequence number is safe; INVALID_ARGUMENT a bug or an attack.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::UnsupportedVersion(_)
            | Error::UnsupportedSuite(_)
            | Error::Malformed(_)
            | Error::InvalidShare(_)
            | Error::ZeroSharedSecret
            | Error::WrongSession
            | Error::UnexpectedKind { .. }
            | Error::RecordTooLarge(_)
            | Error::Decode { .. } => Code::InvalidArgument,
            Error::Downgrade { .. }
            | Error::PinMismatch { .. }
            | Error::BadSignature(_)
            | Error::BadFinished(_)
            | Error::UnknownClientKey(_)
            | Error::ClientAuthRequired
            | Error::UnknownSession
            | Error::RecordAuth => Code::Unauthenticated,
            Error::ClientAuthUnexpected => Code::FailedPrecondition,
            Error::Replay(_)
            | Error::TooOld(_)
            | Error::StaleEpoch(_)
            | Error::EpochAhead { .. } => Code::Aborted,
            Error::Exhausted => Code::ResourceExhausted,
            Error::StreamOrder { .. }
            | Error::StreamTruncated
            | Error::StreamFinished
            | Error::StreamKindMismatch => Code::DataLoss,
            Error::Rng(_)
            | Error::KeyFileIo { .. }
            | Error::KeyFile { .. }
            | Error::InvalidKey(_)
            | Error::InvalidFingerprint(_) => Code::Internal,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}
