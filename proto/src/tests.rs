//! Behaviour of the whole protocol: one test per protection, each written so that it
//! fails if the protection is removed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;

use crate::error::{Error, Party};
use crate::handshake::{
    self, ClientConfig, ClientHandshake, ClientSession, ServerConfig, ServerSession,
};
use crate::keys::{Fingerprint, IdentityKey, hex};
use crate::seal::{
    ClientChannel, RekeyPolicy, ServerChannel, SessionId, StreamOpener, StreamSealer,
};
use crate::v1::{self, RecordKind, SealedRecord, Suite};

const SUITES: [Suite; 2] = [
    Suite::X25519Ed25519Aes256gcmSha256,
    Suite::P256Ed25519Aes256gcmSha256,
];

fn server_key() -> Arc<IdentityKey> {
    Arc::new(IdentityKey::from_seed(&[0x5e; 32]))
}

fn client_key() -> IdentityKey {
    IdentityKey::from_seed(&[0xc1; 32])
}

fn configs(suite: Suite) -> (ServerConfig, ClientConfig) {
    let key = server_key();
    let mut client = ClientConfig::new(key.fingerprint());
    client.suite = suite;
    (ServerConfig::new(key), client)
}

fn connect(server: &ServerConfig, client: &ClientConfig) -> (ServerSession, ClientSession) {
    let (hs, hello) = ClientHandshake::start(client).unwrap();
    let (session, reply) = handshake::accept(server, &hello).unwrap();
    (session, hs.finish(&reply).unwrap())
}

fn pair(suite: Suite) -> (ServerSession, ClientSession) {
    let (s, c) = configs(suite);
    connect(&s, &c)
}

fn exec(client: &mut ClientSession, body: &[u8]) -> SealedRecord {
    client
        .channel()
        .seal_request(RecordKind::ExecuteRequest, body)
        .unwrap()
}

fn open(server: &mut ServerSession, record: &SealedRecord) -> crate::Result<Vec<u8>> {
    server
        .open_request(record, RecordKind::ExecuteRequest)
        .map(|r| r.plaintext)
}

/// Two channels that share keys but not session ids: only the AD tells them apart.
fn twin_servers() -> (ClientChannel, ServerChannel, ServerChannel) {
    let c = || zeroize::Zeroizing::new([1u8; 32]);
    let s = || zeroize::Zeroizing::new([2u8; 32]);
    let a = SessionId::from_bytes([0xaa; 16]);
    let b = SessionId::from_bytes([0xbb; 16]);
    (
        ClientChannel::new(a, c(), s(), RekeyPolicy::default()),
        ServerChannel::new(a, c(), s(), RekeyPolicy::default()),
        ServerChannel::new(b, c(), s(), RekeyPolicy::default()),
    )
}

// ---- handshake ---------------------------------------------------------------------------

#[test]
fn round_trip_both_suites_and_both_directions() {
    for suite in SUITES {
        let (mut server, mut client) = pair(suite);
        assert_eq!(server.session_id(), client.session_id());
        assert_eq!(client.server_fingerprint(), server_key().fingerprint());
        let job = v1::ExecuteRequest {
            job: Some(v1::Job {
                code: "return 1".into(),
                ..Default::default()
            }),
            client_tools: vec![],
        }
        .encode_to_vec();
        let rec = exec(&mut client, &job);
        assert_ne!(rec.ciphertext[..job.len()], job[..], "plaintext visible");
        let req = server
            .open_request(&rec, RecordKind::ExecuteRequest)
            .unwrap();
        assert_eq!(req.plaintext, job);
        let reply = server
            .channel()
            .seal_reply(req.seq, RecordKind::ExecuteResult, 0, b"result")
            .unwrap();
        let got = client
            .channel()
            .open_reply(rec.seq, RecordKind::ExecuteResult, &reply)
            .unwrap();
        assert_eq!(got, b"result");
        // Empty plaintexts are records too.
        let rec = exec(&mut client, b"");
        assert_eq!(open(&mut server, &rec).unwrap(), b"");
    }
}

#[test]
fn sessions_get_fresh_ephemeral_keys_and_ids() {
    let (s1, c1) = configs(Suite::X25519Ed25519Aes256gcmSha256);
    let (hs1, hello1) = ClientHandshake::start(&c1).unwrap();
    let (hs2, hello2) = ClientHandshake::start(&c1).unwrap();
    assert_ne!(hello1.client_share, hello2.client_share);
    let (_, reply1) = handshake::accept(&s1, &hello1).unwrap();
    let (_, reply2) = handshake::accept(&s1, &hello1).unwrap();
    assert_ne!(reply1.server_share, reply2.server_share);
    assert_ne!(reply1.session_id, reply2.session_id);
    drop((hs1, hs2));
}

#[test]
fn wrong_pin_refuses_to_connect() {
    let (server, mut client) = configs(Suite::X25519Ed25519Aes256gcmSha256);
    client.server_pin = IdentityKey::from_seed(&[9; 32]).fingerprint();
    let (hs, hello) = ClientHandshake::start(&client).unwrap();
    let (_, reply) = handshake::accept(&server, &hello).unwrap();
    assert!(matches!(hs.finish(&reply), Err(Error::PinMismatch { .. })));
}

#[test]
fn man_in_the_middle_with_its_own_share_fails_the_signature() {
    // The attacker relays the broker's identity and signature but substitutes its own
    // ephemeral share (to learn the client's keys).
    for suite in SUITES {
        let (server, client) = configs(suite);
        let (hs, hello) = ClientHandshake::start(&client).unwrap();
        let (_, mut reply) = handshake::accept(&server, &hello).unwrap();
        let (_, other) = ClientHandshake::start(&client).unwrap();
        reply.server_share = other.client_share;
        assert!(matches!(
            hs.finish(&reply),
            Err(Error::BadSignature(Party::Server))
        ));
    }
}

#[test]
fn man_in_the_middle_with_its_own_key_fails_the_pin() {
    let (server, client) = configs(Suite::X25519Ed25519Aes256gcmSha256);
    let mitm = ServerConfig::new(Arc::new(IdentityKey::from_seed(&[0x66; 32])));
    let (hs, hello) = ClientHandshake::start(&client).unwrap();
    let (_, reply) = handshake::accept(&mitm, &hello).unwrap();
    assert!(matches!(hs.finish(&reply), Err(Error::PinMismatch { .. })));
    drop(server);
}

#[test]
fn tampered_server_hello_fields_are_refused() {
    let (server, client) = configs(Suite::X25519Ed25519Aes256gcmSha256);
    let fresh = || {
        let (hs, hello) = ClientHandshake::start(&client).unwrap();
        let (_, reply) = handshake::accept(&server, &hello).unwrap();
        (hs, reply)
    };
    let (hs, mut r) = fresh();
    r.signature[0] ^= 1;
    assert!(matches!(
        hs.finish(&r),
        Err(Error::BadSignature(Party::Server))
    ));
    let (hs, mut r) = fresh();
    r.finished[0] ^= 1;
    assert!(matches!(
        hs.finish(&r),
        Err(Error::BadFinished(Party::Server))
    ));
    let (hs, mut r) = fresh();
    r.session_id[0] ^= 1;
    assert!(matches!(
        hs.finish(&r),
        Err(Error::BadSignature(Party::Server))
    ));
    // Dropping the client-auth requirement flag is visible too.
    let required = ServerConfig {
        allowed_clients: Some(vec![]),
        ..server.clone()
    };
    let (hs, hello) = ClientHandshake::start(&client).unwrap();
    let (_, mut r) = handshake::accept(&required, &hello).unwrap();
    assert!(r.client_auth_required);
    r.client_auth_required = false;
    assert!(matches!(
        hs.finish(&r),
        Err(Error::BadSignature(Party::Server))
    ));
}

#[test]
fn downgrade_of_suite_or_version_is_refused() {
    let (server, client) = configs(Suite::P256Ed25519Aes256gcmSha256);
    // The broker answering in another suite or version than offered.
    let (hs, hello) = ClientHandshake::start(&client).unwrap();
    let (_, mut r) = handshake::accept(&server, &hello).unwrap();
    r.suite = Suite::X25519Ed25519Aes256gcmSha256 as i32;
    assert!(matches!(hs.finish(&r), Err(Error::Downgrade { .. })));
    let (hs, hello) = ClientHandshake::start(&client).unwrap();
    let (_, mut r) = handshake::accept(&server, &hello).unwrap();
    r.version = 0;
    assert!(matches!(hs.finish(&r), Err(Error::Downgrade { .. })));
    // The broker refuses versions and suites it does not speak.
    let mut bad = hello.clone();
    bad.version = 2;
    assert!(matches!(
        handshake::accept(&server, &bad),
        Err(Error::UnsupportedVersion(2))
    ));
    bad = hello.clone();
    bad.suite = 0;
    assert!(matches!(
        handshake::accept(&server, &bad),
        Err(Error::UnsupportedSuite(0))
    ));
}

#[test]
fn suite_and_version_are_bound_into_the_transcript() {
    // Same share bytes, different suite: different transcript, so a broker signature
    // made over one never verifies for the other and the keys differ.
    let share = [9u8; 32];
    let x = handshake::encode_client_hello(Suite::X25519Ed25519Aes256gcmSha256, &share);
    let p = handshake::encode_client_hello(Suite::P256Ed25519Aes256gcmSha256, &share);
    assert_ne!(x, p);
    assert_eq!(&x[..5], &[1, 0, 1, 0, 1], "tag, version 1, suite 1");
    let sid = SessionId::from_bytes([0; 16]);
    let sh = handshake::encode_server_hello(
        Suite::X25519Ed25519Aes256gcmSha256,
        &sid,
        &share,
        &[3; 32],
        false,
    );
    let sh2 = handshake::encode_server_hello(
        Suite::P256Ed25519Aes256gcmSha256,
        &sid,
        &share,
        &[3; 32],
        false,
    );
    assert_ne!(sh, sh2);
    let shared = [7u8; 32];
    let a = handshake::Schedule::new(&shared, &x, &sh);
    let b = handshake::Schedule::new(&shared, &p, &sh);
    assert_ne!(a.h_sh, b.h_sh);
    let key = server_key();
    let sig = key.sign(&a.server_signing_input());
    assert!(key.public().verify(&a.server_signing_input(), &sig));
    assert!(!key.public().verify(&b.server_signing_input(), &sig));
}

#[test]
fn low_order_and_invalid_client_shares_are_refused_by_the_broker() {
    let (server, _) = configs(Suite::X25519Ed25519Aes256gcmSha256);
    for p in crate::ecdh::tests::X25519_LOW_ORDER {
        let hello = v1::ClientHello {
            version: 1,
            suite: Suite::X25519Ed25519Aes256gcmSha256 as i32,
            client_share: hex::decode(p).unwrap(),
        };
        assert!(
            matches!(
                handshake::accept(&server, &hello),
                Err(Error::ZeroSharedSecret)
            ),
            "{p}"
        );
    }
    let mut hello = v1::ClientHello {
        version: 1,
        suite: Suite::P256Ed25519Aes256gcmSha256 as i32,
        client_share: vec![4u8; 65],
    };
    assert!(matches!(
        handshake::accept(&server, &hello),
        Err(Error::InvalidShare(_))
    ));
    // An X25519-sized share offered as P-256.
    hello.client_share = vec![9u8; 32];
    assert!(matches!(
        handshake::accept(&server, &hello),
        Err(Error::InvalidShare(_))
    ));
}

#[test]
fn low_order_server_share_is_refused_by_the_client() {
    let (server, client) = configs(Suite::X25519Ed25519Aes256gcmSha256);
    let (hs, hello) = ClientHandshake::start(&client).unwrap();
    let (_, mut r) = handshake::accept(&server, &hello).unwrap();
    r.server_share = vec![0u8; 32];
    assert!(matches!(hs.finish(&r), Err(Error::ZeroSharedSecret)));
}

// ---- client authentication ---------------------------------------------------------------

fn auth_configs() -> (ServerConfig, ClientConfig) {
    let (mut server, client) = configs(Suite::X25519Ed25519Aes256gcmSha256);
    server.allowed_clients = Some(vec![client_key().fingerprint()]);
    (server, client)
}

#[test]
fn client_auth_with_an_allowed_key_unlocks_the_session() {
    let (server, client) = auth_configs();
    let (mut s, mut c) = connect(&server, &client);
    assert!(c.client_auth_required());
    let rec = exec(&mut c, b"x");
    assert!(matches!(open(&mut s, &rec), Err(Error::ClientAuthRequired)));
    let auth = c.authenticate(&client_key()).unwrap();
    assert_eq!(
        s.verify_client_auth(&server, &auth).unwrap(),
        client_key().fingerprint()
    );
    assert_eq!(s.client_fingerprint(), Some(client_key().fingerprint()));
    // The refused record was never opened, so its sequence number is still fresh.
    assert_eq!(open(&mut s, &rec).unwrap(), b"x");
    // Once only.
    assert!(matches!(
        s.verify_client_auth(&server, &auth),
        Err(Error::ClientAuthUnexpected)
    ));
    assert!(matches!(
        c.authenticate(&client_key()),
        Err(Error::ClientAuthUnexpected)
    ));
}

#[test]
fn unknown_client_key_is_refused() {
    let (server, client) = auth_configs();
    let (mut s, mut c) = connect(&server, &client);
    let stranger = IdentityKey::from_seed(&[0x77; 32]);
    let auth = c.authenticate(&stranger).unwrap();
    let err = s.verify_client_auth(&server, &auth).unwrap_err();
    assert!(matches!(err, Error::UnknownClientKey(_)));
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(matches!(
        open(&mut s, &exec(&mut c, b"x")),
        Err(Error::ClientAuthRequired)
    ));
}

#[test]
fn client_signature_and_finished_are_checked() {
    let (server, client) = auth_configs();
    let (mut s, mut c) = connect(&server, &client);
    let good = c.authenticate(&client_key()).unwrap();
    let mut bad = good.clone();
    bad.signature[5] ^= 1;
    assert!(matches!(
        s.verify_client_auth(&server, &bad),
        Err(Error::BadSignature(Party::Client))
    ));
    let mut bad = good.clone();
    bad.finished[5] ^= 1;
    assert!(matches!(
        s.verify_client_auth(&server, &bad),
        Err(Error::BadFinished(Party::Client))
    ));
    // Failed attempts do not lock the real client out.
    s.verify_client_auth(&server, &good).unwrap();
}

#[test]
fn another_allowed_client_cannot_claim_someone_elses_session() {
    // Identity misbinding: Eve (also allowed) watches Alice's plaintext handshake, signs
    // the public transcript with her own key and swaps her identity and signature into
    // Alice's ClientAuth. Without the ECDH secret she cannot compute the Finished MAC.
    let eve = IdentityKey::from_seed(&[0xee; 32]);
    let (mut server, client) = auth_configs();
    server.allowed_clients = Some(vec![client_key().fingerprint(), eve.fingerprint()]);
    let (mut s, mut alice) = connect(&server, &client);
    // Public data: anyone who saw ClientHello and ServerHello can compute this.
    let input = alice.client_auth_signing_input(&eve.public()).unwrap();
    let honest = alice.authenticate(&client_key()).unwrap();
    let forged = v1::ClientAuth {
        client_identity: eve.public().to_bytes().to_vec(),
        signature: eve.sign(&input).to_vec(),
        ..honest.clone()
    };
    assert!(matches!(
        s.verify_client_auth(&server, &forged),
        Err(Error::BadFinished(Party::Client))
    ));
    assert_eq!(
        s.verify_client_auth(&server, &honest).unwrap(),
        client_key().fingerprint()
    );
}

#[test]
fn client_auth_after_the_first_request_is_refused() {
    let (server, client) = configs(Suite::X25519Ed25519Aes256gcmSha256);
    let (mut s, mut c) = connect(&server, &client);
    let rec = exec(&mut c, b"x");
    open(&mut s, &rec).unwrap();
    let auth = c.authenticate(&client_key()).unwrap();
    assert!(matches!(
        s.verify_client_auth(&server, &auth),
        Err(Error::ClientAuthUnexpected)
    ));
    assert_eq!(s.client_fingerprint(), None);
}

#[test]
fn a_forged_request_does_not_end_the_chance_to_authenticate() {
    let (server, client) = configs(Suite::X25519Ed25519Aes256gcmSha256);
    let (mut s, mut c) = connect(&server, &client);
    let mut forged = exec(&mut c, b"x");
    forged.ciphertext[0] ^= 1;
    assert!(open(&mut s, &forged).is_err());
    let auth = c.authenticate(&client_key()).unwrap();
    s.verify_client_auth(&server, &auth).unwrap();
}

#[test]
fn optional_client_auth_is_verified_and_recorded() {
    let (server, client) = configs(Suite::P256Ed25519Aes256gcmSha256);
    let (mut s, mut c) = connect(&server, &client);
    assert!(!c.client_auth_required());
    let auth = c.authenticate(&client_key()).unwrap();
    assert_eq!(
        s.verify_client_auth(&server, &auth).unwrap(),
        client_key().fingerprint()
    );
}

// ---- records -----------------------------------------------------------------------------

#[test]
fn every_tampered_byte_is_refused() {
    let (mut s, mut c) = pair(Suite::X25519Ed25519Aes256gcmSha256);
    let rec = exec(&mut c, b"console.log(secret)");
    for i in 0..rec.ciphertext.len() {
        let mut bad = rec.clone();
        bad.ciphertext[i] ^= 0x01;
        assert!(
            matches!(open(&mut s, &bad), Err(Error::RecordAuth)),
            "byte {i}"
        );
    }
    let mut short = rec.clone();
    short.ciphertext.truncate(15);
    assert!(matches!(open(&mut s, &short), Err(Error::Malformed(_))));
    let mut cut = rec.clone();
    cut.ciphertext.remove(0);
    assert!(matches!(open(&mut s, &cut), Err(Error::RecordAuth)));
    // None of the failures consumed the sequence number.
    assert_eq!(open(&mut s, &rec).unwrap(), b"console.log(secret)");
}

#[test]
fn replayed_request_is_refused() {
    let (mut s, mut c) = pair(Suite::X25519Ed25519Aes256gcmSha256);
    let rec = exec(&mut c, b"charge the card");
    open(&mut s, &rec).unwrap();
    let err = open(&mut s, &rec).unwrap_err();
    assert!(matches!(err, Error::Replay(0)));
    assert_eq!(err.code(), tonic::Code::Aborted);
}

#[test]
fn out_of_order_requests_inside_the_window_are_accepted() {
    let (mut s, mut c) = pair(Suite::X25519Ed25519Aes256gcmSha256);
    let recs: Vec<_> = (0..200u32)
        .map(|i| exec(&mut c, &i.to_be_bytes()))
        .collect();
    // A deterministic shuffle: 0, 199, 1, 198, ...
    let mut order: Vec<usize> = Vec::new();
    for i in 0..100 {
        order.push(i);
        order.push(199 - i);
    }
    order.reverse();
    for i in order {
        assert_eq!(open(&mut s, &recs[i]).unwrap(), (i as u32).to_be_bytes());
    }
    for r in &recs {
        assert!(matches!(open(&mut s, r), Err(Error::Replay(_))));
    }
}

#[test]
fn request_older_than_the_window_is_refused() {
    let (mut s, mut c) = pair(Suite::X25519Ed25519Aes256gcmSha256);
    let recs: Vec<_> = (0..1100).map(|_| exec(&mut c, b"x")).collect();
    open(&mut s, &recs[1099]).unwrap();
    // The window is the 1024 numbers ending at 1099: 76 is the oldest still inside.
    assert!(matches!(open(&mut s, &recs[75]), Err(Error::TooOld(75))));
    open(&mut s, &recs[76]).unwrap();
}

#[test]
fn forged_record_does_not_burn_a_sequence_number() {
    let (mut s, mut c) = pair(Suite::X25519Ed25519Aes256gcmSha256);
    let rec = exec(&mut c, b"x");
    let mut forged = rec.clone();
    forged.ciphertext = vec![0u8; rec.ciphertext.len()];
    assert!(open(&mut s, &forged).is_err());
    let mut ahead = rec.clone();
    ahead.seq = 5000;
    assert!(open(&mut s, &ahead).is_err());
    // Neither moved the window.
    open(&mut s, &rec).unwrap();
}

#[test]
fn session_id_is_bound_by_the_associated_data() {
    let (mut client, _, mut other) = twin_servers();
    let mut rec = client
        .seal_request(RecordKind::ExecuteRequest, b"x")
        .unwrap();
    rec.session_id = other.session_id().as_bytes().to_vec();
    assert!(matches!(
        other.open_request(&rec, RecordKind::ExecuteRequest),
        Err(Error::RecordAuth)
    ));
    // And the untouched record is refused before decryption.
    let rec = client
        .seal_request(RecordKind::ExecuteRequest, b"x")
        .unwrap();
    assert!(matches!(
        other.open_request(&rec, RecordKind::ExecuteRequest),
        Err(Error::WrongSession)
    ));
}

#[test]
fn kind_is_bound_by_the_associated_data() {
    let (mut client, mut server, _) = twin_servers();
    let mut rec = client
        .seal_request(RecordKind::ExecuteRequest, b"x")
        .unwrap();
    rec.kind = RecordKind::StreamRequest as i32;
    assert!(matches!(
        server.open_request(&rec, RecordKind::StreamRequest),
        Err(Error::RecordAuth)
    ));
    rec.kind = RecordKind::ExecuteRequest as i32;
    assert!(matches!(
        server.open_request(&rec, RecordKind::StreamRequest),
        Err(Error::UnexpectedKind { .. })
    ));
    server
        .open_request(&rec, RecordKind::ExecuteRequest)
        .unwrap();
}

#[test]
fn seq_and_epoch_fields_cannot_be_changed() {
    let (mut client, mut server, _) = twin_servers();
    let rec = client
        .seal_request(RecordKind::ExecuteRequest, b"x")
        .unwrap();
    let mut bad = rec.clone();
    bad.seq = 1;
    assert!(matches!(
        server.open_request(&bad, RecordKind::ExecuteRequest),
        Err(Error::RecordAuth)
    ));
    let mut bad = rec.clone();
    bad.epoch = 1;
    assert!(matches!(
        server.open_request(&bad, RecordKind::ExecuteRequest),
        Err(Error::RecordAuth)
    ));
    // The failed epoch-1 attempt did not move the receiver to epoch 1.
    assert_eq!(server.recv_epoch(), 0);
    server
        .open_request(&rec, RecordKind::ExecuteRequest)
        .unwrap();
}

#[test]
fn a_request_cannot_be_reflected_back_as_a_reply() {
    let (_, mut c) = pair(Suite::X25519Ed25519Aes256gcmSha256);
    let rec = exec(&mut c, b"x");
    assert!(matches!(
        c.channel()
            .open_reply(rec.seq, RecordKind::ExecuteResult, &rec),
        Err(Error::UnexpectedKind { .. })
    ));
    let mut reflected = rec.clone();
    reflected.kind = RecordKind::ExecuteResult as i32;
    assert!(matches!(
        c.channel()
            .open_reply(rec.seq, RecordKind::ExecuteResult, &reflected),
        Err(Error::RecordAuth)
    ));
}

#[test]
fn replies_are_bound_to_their_request() {
    // Two concurrent calls: swapping their results must not go unnoticed.
    let (mut s, mut c) = pair(Suite::X25519Ed25519Aes256gcmSha256);
    let a = exec(&mut c, b"a");
    let b = exec(&mut c, b"b");
    let ra = s.open_request(&a, RecordKind::ExecuteRequest).unwrap();
    let rb = s.open_request(&b, RecordKind::ExecuteRequest).unwrap();
    let reply_a = s
        .channel()
        .seal_reply(ra.seq, RecordKind::ExecuteResult, 0, b"A")
        .unwrap();
    let reply_b = s
        .channel()
        .seal_reply(rb.seq, RecordKind::ExecuteResult, 0, b"B")
        .unwrap();
    assert!(matches!(
        c.channel()
            .open_reply(b.seq, RecordKind::ExecuteResult, &reply_a),
        Err(Error::RecordAuth)
    ));
    // Replies may arrive in any order.
    assert_eq!(
        c.channel()
            .open_reply(b.seq, RecordKind::ExecuteResult, &reply_b)
            .unwrap(),
        b"B"
    );
    assert_eq!(
        c.channel()
            .open_reply(a.seq, RecordKind::ExecuteResult, &reply_a)
            .unwrap(),
        b"A"
    );
}

#[test]
fn oversized_plaintext_is_refused() {
    let (_, mut c) = pair(Suite::X25519Ed25519Aes256gcmSha256);
    let big = vec![0u8; crate::seal::MAX_PLAINTEXT_LEN + 1];
    assert!(matches!(
        c.channel().seal_request(RecordKind::ExecuteRequest, &big),
        Err(Error::RecordTooLarge(_))
    ));
    // Sealing a kind of the other direction is a caller bug, refused.
    assert!(
        c.channel()
            .seal_request(RecordKind::ExecuteResult, b"")
            .is_err()
    );
}

// ---- streams -----------------------------------------------------------------------------

fn console(text: &str) -> v1::StreamEvent {
    v1::StreamEvent {
        event: Some(v1::stream_event::Event::Console(v1::ConsoleEvent {
            level: v1::ConsoleLevel::Log as i32,
            text: text.into(),
        })),
    }
}

fn final_event() -> v1::StreamEvent {
    v1::StreamEvent {
        event: Some(v1::stream_event::Event::Final(v1::FinalEvent {
            outcome: Some(v1::final_event::Outcome::ResultJson("42".into())),
            stats: None,
        })),
    }
}

/// A stream request and the broker's sealed events for it.
fn stream(events: &[v1::StreamEvent]) -> (ServerSession, ClientSession, u64, Vec<SealedRecord>) {
    let (mut s, mut c) = pair(Suite::X25519Ed25519Aes256gcmSha256);
    let req = c
        .channel()
        .seal_request(RecordKind::StreamRequest, b"job")
        .unwrap();
    let opened = s.open_request(&req, RecordKind::StreamRequest).unwrap();
    let mut sealer = StreamSealer::new(opened.seq);
    let recs = events
        .iter()
        .map(|e| sealer.seal(s.channel(), e).unwrap())
        .collect();
    (s, c, req.seq, recs)
}

#[test]
fn complete_stream_is_accepted() {
    let (_, mut c, seq, recs) = stream(&[console("a"), console("b"), final_event()]);
    assert_eq!(recs[2].kind(), RecordKind::StreamFinal);
    let mut opener = StreamOpener::new(seq);
    for r in &recs {
        opener.open(c.channel(), r).unwrap();
    }
    opener.finish().unwrap();
    assert!(matches!(
        opener.open(c.channel(), &recs[2]),
        Err(Error::StreamFinished)
    ));
}

#[test]
fn dropped_final_event_is_detected() {
    let (_, mut c, seq, recs) = stream(&[console("a"), final_event()]);
    let mut opener = StreamOpener::new(seq);
    opener.open(c.channel(), &recs[0]).unwrap();
    let err = opener.finish().unwrap_err();
    assert!(matches!(err, Error::StreamTruncated));
}

#[test]
fn a_non_final_event_cannot_be_passed_off_as_final() {
    let (_, mut c, seq, recs) = stream(&[console("a"), console("b"), final_event()]);
    let mut opener = StreamOpener::new(seq);
    let mut fake_end = recs[0].clone();
    fake_end.kind = RecordKind::StreamFinal as i32;
    assert!(matches!(
        opener.open(c.channel(), &fake_end),
        Err(Error::RecordAuth)
    ));
    assert!(!opener.is_finished());
}

#[test]
fn dropped_or_reordered_events_are_detected() {
    let (_, mut c, seq, recs) = stream(&[console("a"), console("b"), final_event()]);
    let mut opener = StreamOpener::new(seq);
    opener.open(c.channel(), &recs[0]).unwrap();
    // Event 1 dropped: event 2 arrives where 1 is expected.
    assert!(matches!(
        opener.open(c.channel(), &recs[2]),
        Err(Error::StreamOrder {
            expected: 1,
            got: 2
        })
    ));
    // Relabelled to look like event 1: the index is in the associated data.
    let mut relabelled = recs[2].clone();
    relabelled.event_index = 1;
    assert!(matches!(
        opener.open(c.channel(), &relabelled),
        Err(Error::RecordAuth)
    ));
    // Event 0 replayed in place of event 1.
    let mut replayed = recs[0].clone();
    replayed.event_index = 1;
    assert!(matches!(
        opener.open(c.channel(), &replayed),
        Err(Error::RecordAuth)
    ));
    opener.open(c.channel(), &recs[1]).unwrap();
    opener.open(c.channel(), &recs[2]).unwrap();
    opener.finish().unwrap();
}

#[test]
fn events_cannot_be_spliced_between_streams() {
    let (mut s, mut c, seq, recs) = stream(&[final_event()]);
    let req2 = c
        .channel()
        .seal_request(RecordKind::StreamRequest, b"job2")
        .unwrap();
    s.channel()
        .open_request(&req2, RecordKind::StreamRequest)
        .unwrap();
    let mut other = StreamOpener::new(req2.seq);
    assert!(matches!(
        other.open(c.channel(), &recs[0]),
        Err(Error::RecordAuth)
    ));
    let mut right = StreamOpener::new(seq);
    right.open(c.channel(), &recs[0]).unwrap();
}

#[test]
fn stream_content_must_match_its_kind() {
    let (mut s, mut c) = pair(Suite::X25519Ed25519Aes256gcmSha256);
    let req = c
        .channel()
        .seal_request(RecordKind::StreamRequest, b"")
        .unwrap();
    s.channel()
        .open_request(&req, RecordKind::StreamRequest)
        .unwrap();
    // A (buggy) broker marks a console event as the final one.
    let rec = s
        .channel()
        .seal_reply(
            req.seq,
            RecordKind::StreamFinal,
            0,
            &console("x").encode_to_vec(),
        )
        .unwrap();
    let mut opener = StreamOpener::new(req.seq);
    assert!(matches!(
        opener.open(c.channel(), &rec),
        Err(Error::StreamKindMismatch)
    ));
    assert!(opener.finish().is_err());
    // The sealer refuses to go on after the final event, and refuses empty events.
    let mut sealer = StreamSealer::new(req.seq);
    sealer.seal(s.channel(), &final_event()).unwrap();
    assert!(matches!(
        sealer.seal(s.channel(), &console("late")),
        Err(Error::StreamFinished)
    ));
    let mut sealer = StreamSealer::new(req.seq);
    assert!(
        sealer
            .seal(s.channel(), &v1::StreamEvent { event: None })
            .is_err()
    );
}

// ---- key epochs --------------------------------------------------------------------------

#[test]
fn rekey_on_request_moves_both_directions() {
    let (mut s, mut c) = pair(Suite::X25519Ed25519Aes256gcmSha256);
    let in_flight = exec(&mut c, b"sealed before the rekey");
    let rekey = c.channel().seal_rekey_request().unwrap();
    assert_eq!(rekey.epoch, 1);
    let opened = s.open_request(&rekey, RecordKind::RekeyRequest).unwrap();
    assert_eq!(s.channel().recv_epoch(), 1);
    let reply = s.channel().seal_rekey_result(opened.seq).unwrap();
    assert_eq!(reply.epoch, 1);
    c.channel()
        .open_reply(rekey.seq, RecordKind::RekeyResult, &reply)
        .unwrap();
    assert_eq!(c.channel().recv_epoch(), 1);
    // The request sealed under epoch 0 is still accepted during the grace period.
    assert_eq!(
        open(&mut s, &in_flight).unwrap(),
        b"sealed before the rekey"
    );
    // And new records use epoch 1.
    assert_eq!(exec(&mut c, b"y").epoch, 1);
}

#[test]
fn previous_epoch_expires_after_the_grace_period() {
    let (mut client, mut server, _) = twin_servers();
    let t0 = Instant::now();
    let old = client
        .seal_request(RecordKind::ExecuteRequest, b"old")
        .unwrap();
    let old2 = client
        .seal_request(RecordKind::ExecuteRequest, b"old2")
        .unwrap();
    client.rotate_send_key().unwrap();
    let new = client
        .seal_request(RecordKind::ExecuteRequest, b"new")
        .unwrap();
    server
        .open_request_at(t0, &new, RecordKind::ExecuteRequest)
        .unwrap();
    let grace = RekeyPolicy::default().grace;
    server
        .open_request_at(
            t0 + grace - Duration::from_millis(1),
            &old,
            RecordKind::ExecuteRequest,
        )
        .unwrap();
    let err = server
        .open_request_at(t0 + grace, &old2, RecordKind::ExecuteRequest)
        .unwrap_err();
    assert!(matches!(err, Error::StaleEpoch(0)));
    assert_eq!(err.code(), tonic::Code::Aborted);
}

#[test]
fn automatic_rekey_after_max_records_and_max_age() {
    let policy = RekeyPolicy {
        max_records: 3,
        max_bytes: u64::MAX,
        max_age: Duration::from_secs(60),
        grace: Duration::from_secs(5),
    };
    let c = || zeroize::Zeroizing::new([1u8; 32]);
    let s = || zeroize::Zeroizing::new([2u8; 32]);
    let id = SessionId::from_bytes([1; 16]);
    let mut client_ch = ClientChannel::new(id, c(), s(), policy.clone());
    let mut server_ch = ServerChannel::new(id, c(), s(), policy.clone());
    let t0 = Instant::now();
    let epochs: Vec<u32> = (0..7)
        .map(|_| {
            let r = client_ch
                .seal_request_at(t0, RecordKind::ExecuteRequest, b"x")
                .unwrap();
            server_ch
                .open_request_at(t0, &r, RecordKind::ExecuteRequest)
                .unwrap();
            r.epoch
        })
        .collect();
    assert_eq!(epochs, [0, 0, 0, 1, 1, 1, 2]);
    // Age: the next record after max_age uses a new key even though few were sent.
    let late = t0 + Duration::from_secs(61);
    let r = client_ch
        .seal_request_at(late, RecordKind::ExecuteRequest, b"x")
        .unwrap();
    assert_eq!(r.epoch, 3);
    server_ch
        .open_request_at(late, &r, RecordKind::ExecuteRequest)
        .unwrap();
    // Byte budget.
    let mut bytes_policy = policy.clone();
    bytes_policy.max_records = u64::MAX;
    bytes_policy.max_bytes = 10;
    let mut ch = ClientChannel::new(id, c(), s(), bytes_policy);
    assert_eq!(
        ch.seal_request_at(t0, RecordKind::ExecuteRequest, &[0; 10])
            .unwrap()
            .epoch,
        0
    );
    assert_eq!(
        ch.seal_request_at(t0, RecordKind::ExecuteRequest, &[0; 1])
            .unwrap()
            .epoch,
        1
    );
}

#[test]
fn epochs_more_than_one_ahead_are_refused() {
    let (mut client, mut server, _) = twin_servers();
    client.rotate_send_key().unwrap();
    client.rotate_send_key().unwrap();
    let rec = client
        .seal_request(RecordKind::ExecuteRequest, b"x")
        .unwrap();
    assert!(matches!(
        server.open_request(&rec, RecordKind::ExecuteRequest),
        Err(Error::EpochAhead { current: 0, got: 2 })
    ));
}

#[test]
fn server_initiated_rotation_is_followed_by_the_client() {
    let (mut s, mut c) = pair(Suite::P256Ed25519Aes256gcmSha256);
    let a = exec(&mut c, b"a");
    let b = exec(&mut c, b"b");
    let ra = s.open_request(&a, RecordKind::ExecuteRequest).unwrap();
    let rb = s.open_request(&b, RecordKind::ExecuteRequest).unwrap();
    let reply_a = s
        .channel()
        .seal_reply(ra.seq, RecordKind::ExecuteResult, 0, b"A")
        .unwrap();
    s.channel().rotate_send_key().unwrap();
    let reply_b = s
        .channel()
        .seal_reply(rb.seq, RecordKind::ExecuteResult, 0, b"B")
        .unwrap();
    assert_eq!((reply_a.epoch, reply_b.epoch), (0, 1));
    // The newer reply arrives first; the older one still opens within the grace period.
    c.channel()
        .open_reply(b.seq, RecordKind::ExecuteResult, &reply_b)
        .unwrap();
    c.channel()
        .open_reply(a.seq, RecordKind::ExecuteResult, &reply_a)
        .unwrap();
}

// ---- broker ergonomics ---------------------------------------------------------------------

#[test]
fn concurrent_requests_through_a_mutex() {
    let (s, c) = pair(Suite::X25519Ed25519Aes256gcmSha256);
    let server = Arc::new(std::sync::Mutex::new(s));
    let client = Arc::new(std::sync::Mutex::new(c));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let server = server.clone();
            let client = client.clone();
            std::thread::spawn(move || {
                for i in 0..50u32 {
                    let body = [t, i].map(|x: u32| x.to_be_bytes()).concat();
                    let rec = exec(&mut client.lock().unwrap(), &body);
                    let req = server
                        .lock()
                        .unwrap()
                        .open_request(&rec, RecordKind::ExecuteRequest)
                        .unwrap();
                    assert_eq!(req.plaintext, body);
                    let reply = server
                        .lock()
                        .unwrap()
                        .channel()
                        .seal_reply(req.seq, RecordKind::ExecuteResult, 0, &body)
                        .unwrap();
                    let got = client
                        .lock()
                        .unwrap()
                        .channel()
                        .open_reply(rec.seq, RecordKind::ExecuteResult, &reply)
                        .unwrap();
                    assert_eq!(got, body);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn idle_session_fits_in_a_kibibyte() {
    // Inline size plus the boxed client-auth context a session holds until its first
    // request (the previous-epoch box exists only during a grace period).
    let inline = std::mem::size_of::<ServerSession>();
    let boxed = std::mem::size_of::<handshake::ClientAuthContext>();
    eprintln!("ServerSession {inline} bytes inline + {boxed} bytes boxed auth context");
    assert!(inline + boxed <= 1024, "{inline} + {boxed}");
}

#[test]
fn errors_map_to_the_documented_grpc_codes() {
    use tonic::Code;
    let fp = Fingerprint::from_bytes([0; 32]);
    assert_eq!(Error::UnknownSession.code(), Code::Unauthenticated);
    assert_eq!(
        Error::BadSignature(Party::Client).code(),
        Code::Unauthenticated
    );
    assert_eq!(Error::UnknownClientKey(fp).code(), Code::Unauthenticated);
    assert_eq!(Error::ClientAuthRequired.code(), Code::Unauthenticated);
    assert_eq!(Error::RecordAuth.code(), Code::Unauthenticated);
    assert_eq!(Error::Malformed("x").code(), Code::InvalidArgument);
    assert_eq!(Error::ZeroSharedSecret.code(), Code::InvalidArgument);
    assert_eq!(Error::Replay(1).code(), Code::Aborted);
    assert_eq!(
        Error::EpochAhead { current: 0, got: 2 }.code(),
        Code::Aborted
    );
    let status: tonic::Status = Error::RecordAuth.into();
    assert_eq!(status.code(), Code::Unauthenticated);
}
