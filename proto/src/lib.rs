//! The `enclave.v1` contract shared by broker, executor and client.
//!
//! The `.proto` files under `proto/` are the source of truth; this crate is their
//! generated Rust form plus the descriptor set that gRPC server reflection serves, and
//! [`codec`], the gRPC codec the generated services use (malformed messages are
//! INVALID_ARGUMENT).
//!
//! With the `seal` feature it also implements protocol v1, the end-to-end encryption
//! between client and broker (docs/PROTOCOL.md). It is a feature because the executor
//! needs only the messages, and must not pull in cryptography it never uses.
//!
//! # Layout (feature `seal`)
//! - [`keys`]: long-term Ed25519 identities, fingerprints (`sha256:<hex>`), key files.
//! - [`handshake`]: ClientHello/ServerHello/ClientAuth, transcript and state machines.
//! - [`seal`]: records, replay window, key epochs, stream sealing and truncation checks.
//! - [`key_schedule`]: the TLS 1.3-style HKDF labels.
//! - [`error`]: one error type, with the gRPC code the broker answers with.
//!
//! A broker keeps one `Mutex<ServerSession>` per session; a client one `ClientSession`.

/// Generated messages and services of package `enclave.v1`.
pub mod v1 {
    tonic::include_proto!("enclave.v1");
    // Feature `json`: `serde::{Serialize, Deserialize}` in the proto3 JSON mapping.
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/enclave.v1.serde.rs"));
}

pub mod codec;

/// Plaintexts above 16 MiB are refused: bounded records are what make the rekey
/// limits a bound on bytes per key. Outside the `seal` feature too: servers size their
/// messages by it.
pub const MAX_PLAINTEXT_LEN: usize = 16 << 20;

/// Encoded `FileDescriptorSet` of every enclave proto, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/enclave_descriptor.bin"));

#[cfg(feature = "seal")]
mod ecdh;
#[cfg(feature = "seal")]
pub mod error;
#[cfg(feature = "seal")]
pub mod handshake;
#[cfg(feature = "seal")]
pub mod key_schedule;
#[cfg(feature = "seal")]
pub mod keys;
#[cfg(feature = "seal")]
pub mod seal;
#[cfg(all(test, feature = "seal"))]
mod tests;
#[cfg(all(test, feature = "seal"))]
mod vectors;

#[cfg(feature = "seal")]
pub use ecdh::{P256_SHARE_LEN, X25519_SHARE_LEN};
#[cfg(feature = "seal")]
pub use error::{Error, Party, Result};
#[cfg(feature = "seal")]
pub use handshake::{
    ClientConfig, ClientHandshake, ClientSession, PROTOCOL_VERSION, ServerConfig, ServerSession,
};
#[cfg(feature = "seal")]
pub use keys::{Fingerprint, IdentityKey, PublicIdentity};
#[cfg(feature = "seal")]
pub use seal::{
    ClientChannel, OpenedRequest, RekeyPolicy, ServerChannel, SessionId, StreamOpener, StreamSealer,
};
