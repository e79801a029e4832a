//! Tests of the broker's HTTP API (docs/HTTP.md) against the real `enclave-broker`
//! binary: protocol v1 in JSON, the legacy API, and the seed documentation's own
//! `EncryptedEnclaveClient` running unchanged under Node.

mod support;

mod legacy;
mod limits;
mod seed;
mod v1;
