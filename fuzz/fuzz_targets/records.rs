//! Sealed records at both ends of an established session: arbitrary records never open
//! (and never panic), and genuine ones carry any plaintext exactly once.
#![no_main]

use std::sync::Arc;

use enclave_proto::handshake::{self, ClientConfig, ClientHandshake, ServerConfig};
use enclave_proto::v1::{self, RecordKind};
use enclave_proto::{ClientSession, IdentityKey, ServerSession, SessionId, StreamOpener};
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// A session made with fixed secrets, so that every run starts from the same keys.
fn pair() -> (ServerSession, ClientSession) {
    let key = Arc::new(IdentityKey::from_seed(&[0x5e; 32]));
    let server = ServerConfig::new(key.clone());
    let client = ClientConfig::new(key.fingerprint());
    let (hs, hello) = ClientHandshake::start_with(&client, &[7; 32]).unwrap();
    let (session, reply) =
        handshake::accept_with(&server, &hello, &[9; 32], SessionId::from_bytes([1; 16])).unwrap();
    (session, hs.finish(&reply).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let Some((&op, rest)) = data.split_first() else {
        return;
    };
    let (mut server, mut client) = pair();
    match op % 3 {
        0 => {
            if let Ok(record) = v1::SealedRecord::decode(rest) {
                for kind in [
                    RecordKind::ExecuteRequest,
                    RecordKind::StreamRequest,
                    RecordKind::CloseRequest,
                    RecordKind::RekeyRequest,
                ] {
                    assert!(server.open_request(&record, kind).is_err());
                }
            }
        }
        1 => {
            if let Ok(record) = v1::SealedRecord::decode(rest) {
                let channel = client.channel();
                assert!(
                    channel
                        .open_reply(1, RecordKind::ExecuteResult, &record)
                        .is_err()
                );
                assert!(StreamOpener::new(1).open(channel, &record).is_err());
            }
        }
        _ => {
            let record = client
                .channel()
                .seal_request(RecordKind::ExecuteRequest, rest)
                .unwrap();
            let opened = server
                .open_request(&record, RecordKind::ExecuteRequest)
                .unwrap();
            assert_eq!(opened.plaintext, rest);
            // The same record twice is a replay.
            assert!(
                server
                    .open_request(&record, RecordKind::ExecuteRequest)
                    .is_err()
            );
            let reply = server
                .channel()
                .seal_reply(opened.seq, RecordKind::ExecuteResult, 0, rest)
                .unwrap();
            let answer = client
                .channel()
                .open_reply(opened.seq, RecordKind::ExecuteResult, &reply)
                .unwrap();
            assert_eq!(answer, rest);
        }
    }
});
