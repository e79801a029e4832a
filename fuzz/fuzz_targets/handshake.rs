//! The handshake from both ends, fed arbitrary messages: a broker reading a ClientHello,
//! then a ClientAuth and a request for the session it made; a client reading a
//! ServerHello. Nothing may panic, and nothing unauthenticated may be accepted.
#![no_main]

use std::sync::Arc;

use enclave_proto::IdentityKey;
use enclave_proto::handshake::{self, ClientConfig, ClientHandshake, ServerConfig};
use enclave_proto::v1::{self, RecordKind, Suite};
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// Splits the input at a length given by its first byte.
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.split_first() {
        Some((&n, rest)) => rest.split_at((n as usize).min(rest.len())),
        None => (&[], &[]),
    }
}

fuzz_target!(|data: &[u8]| {
    let key = Arc::new(IdentityKey::from_seed(&[0x5e; 32]));
    let mut server = ServerConfig::new(key.clone());
    server.allowed_clients = (data.first() == Some(&0)).then(Vec::new);

    let (hello, rest) = split(data);
    if let Ok(hello) = v1::ClientHello::decode(hello) {
        if let Ok((mut session, _reply)) = handshake::accept(&server, &hello) {
            let (auth, record) = split(rest);
            if let Ok(auth) = v1::ClientAuth::decode(auth) {
                // Nobody here holds a client key the broker would accept.
                assert!(session.verify_client_auth(&server, &auth).is_err());
            }
            if let Ok(record) = v1::SealedRecord::decode(record) {
                for kind in [RecordKind::ExecuteRequest, RecordKind::StreamRequest] {
                    // Without the client's keys no record can open.
                    assert!(session.open_request(&record, kind).is_err());
                }
            }
        }
    }

    for suite in [
        Suite::X25519Ed25519Aes256gcmSha256,
        Suite::P256Ed25519Aes256gcmSha256,
    ] {
        let mut config = ClientConfig::new(key.fingerprint());
        config.suite = suite;
        let (hs, _hello) = ClientHandshake::start_with(&config, &[7; 32]).unwrap();
        if let Ok(hello) = v1::ServerHello::decode(data) {
            // A ServerHello the pinned key did not sign can never be accepted.
            assert!(hs.finish(&hello).is_err());
        }
    }
});
