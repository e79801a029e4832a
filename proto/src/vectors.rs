//! Known-answer test vectors in `proto/testdata/vectors-*.json`.
//!
//! `compute` runs the real state machines and channels with fixed randomness and
//! records every intermediate value. The test fails if the files differ from what the
//! code computes now, and separately re-derives each record from the file's own values
//! with bare AES-GCM, so the files are also checked for self-consistency: what another
//! implementation (the Python client) tests against. `ENCLAVE_WRITE_VECTORS=1` rewrites
//! them after a deliberate protocol change.

use std::path::PathBuf;
use std::sync::Arc;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use prost::Message;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::ecdh::EphemeralSecret;
use crate::ecdh::tests::X25519_LOW_ORDER;
use crate::error::Party;
use crate::handshake::{self, ClientConfig, ClientHandshake, Schedule, ServerConfig};
use crate::key_schedule;
use crate::keys::{IdentityKey, hex};
use crate::seal::{Direction, SessionId, record_ad, record_nonce};
use crate::v1::{self, RecordKind, SealedRecord, Suite};

fn h(bytes: &[u8]) -> Value {
    Value::String(hex::encode(bytes))
}

/// Deterministic "random" inputs: SHA-256 of a label, so anyone can see nothing was
/// chosen to make a vector pass.
fn input(label: &str) -> [u8; 32] {
    Sha256::digest(format!("enclave v1 test vector {label}").as_bytes()).into()
}

fn suite_name(suite: Suite) -> &'static str {
    match suite {
        Suite::X25519Ed25519Aes256gcmSha256 => "x25519",
        Suite::P256Ed25519Aes256gcmSha256 => "p256",
        Suite::Unspecified => "unspecified",
    }
}

fn path(suite: Suite) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(format!("vectors-{}.json", suite_name(suite)))
}

fn record_json(
    record: &SealedRecord,
    direction: Direction,
    request_seq: u64,
    plaintext: &[u8],
    iv: &[u8; 12],
    session_id: &SessionId,
) -> Value {
    let kind = record.kind();
    json!({
        "direction": match direction {
            Direction::ClientToBroker => "client_to_broker",
            Direction::BrokerToClient => "broker_to_client",
        },
        "epoch": record.epoch,
        "seq": record.seq,
        "kind": record.kind,
        "kind_name": kind.as_str_name(),
        "request_seq": request_seq,
        "event_index": record.event_index,
        "plaintext": h(plaintext),
        "ad": h(&record_ad(session_id, direction, record.epoch, record.seq, kind, request_seq, record.event_index)),
        "nonce": h(&record_nonce(iv, record.seq)),
        "ciphertext": h(&record.ciphertext),
    })
}

/// Runs one full session with fixed inputs and returns the vector document.
pub(crate) fn compute(suite: Suite) -> Value {
    let client_eph = input(&format!("{} client ephemeral", suite_name(suite)));
    let server_eph = input(&format!("{} server ephemeral", suite_name(suite)));
    let server_seed = input("server identity");
    let client_seed = input("client identity");
    let session_id = SessionId::from_bytes(input("session id")[..16].try_into().unwrap());

    let server_key = Arc::new(IdentityKey::from_seed(&server_seed));
    let client_key = IdentityKey::from_seed(&client_seed);
    let mut server_config = ServerConfig::new(server_key.clone());
    server_config.allowed_clients = Some(vec![client_key.fingerprint()]);
    let mut client_config = ClientConfig::new(server_key.fingerprint());
    client_config.suite = suite;

    // --- the state machines ---
    let (client_hs, client_hello) =
        ClientHandshake::start_with(&client_config, &client_eph).unwrap();
    let (mut server, server_hello) =
        handshake::accept_with(&server_config, &client_hello, &server_eph, session_id).unwrap();
    let mut client = client_hs.finish(&server_hello).unwrap();
    let client_auth = client.authenticate(&client_key).unwrap();
    server
        .verify_client_auth(&server_config, &client_auth)
        .unwrap();

    // --- the same values, step by step ---
    let shared = EphemeralSecret::from_bytes(suite, &client_eph)
        .unwrap()
        .diffie_hellman(&server_hello.server_share)
        .unwrap();
    let ch = handshake::encode_client_hello(suite, &client_hello.client_share);
    let sh = handshake::encode_server_hello(
        suite,
        &session_id,
        &server_hello.server_share,
        &server_key.public().to_bytes(),
        true,
    );
    let mut schedule = Schedule::new(&shared, &ch, &sh);
    let server_signing_input = schedule.server_signing_input();
    assert_eq!(
        server_key.sign(&server_signing_input).to_vec(),
        server_hello.signature
    );
    let s_finished_key = schedule.finished_key(Party::Server);
    let c_finished_key = schedule.finished_key(Party::Client);
    let h_sv = schedule.push_server_signature(&server_hello.signature);
    assert_eq!(
        key_schedule::hmac_sha256(&s_finished_key, &h_sv).to_vec(),
        server_hello.finished
    );
    let h_sf = schedule.push_server_finished(&server_hello.finished);
    let (c_ap0, s_ap0) = schedule.traffic_secrets(&h_sf);
    let handshake_secret = *schedule.handshake_secret().clone();
    let h_sh = schedule.h_sh;
    let auth_context = schedule.into_client_auth();
    let client_identity = client_key.public().to_bytes();
    let (_, h_ca) = auth_context.hash_with_identity(&client_identity);
    let client_signing_input = auth_context.signing_input(&client_identity);
    assert_eq!(
        client_key.sign(&client_signing_input).to_vec(),
        client_auth.signature
    );
    let h_cv = auth_context.h_cv(&client_identity, &client_auth.signature);
    assert_eq!(
        auth_context
            .finished(&client_identity, &client_auth.signature)
            .to_vec(),
        client_auth.finished
    );

    let mut epochs = Vec::new();
    for (direction, secret0) in [("client_to_broker", &c_ap0), ("broker_to_client", &s_ap0)] {
        let secret1 = key_schedule::next_traffic_secret(secret0);
        for (epoch, secret) in [(0, secret0), (1, &secret1)] {
            let (key, iv) = key_schedule::traffic_key_iv(secret);
            epochs.push(json!({
                "direction": direction, "epoch": epoch,
                "secret": h(secret.as_ref()), "key": h(key.as_ref()), "iv": h(&iv),
            }));
        }
    }
    let iv = |direction: &str, epoch: u32| -> [u8; 12] {
        let e = epochs
            .iter()
            .find(|e| e["direction"] == direction && e["epoch"] == epoch)
            .unwrap();
        hex::decode(e["iv"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap()
    };

    // --- records: one unary call, a stream whose client answers a tool call, a rekey,
    // a close. `tick` keeps the order in which they were sent. ---
    let tick = std::cell::Cell::new(0u32);
    let next = || {
        let t = tick.get();
        tick.set(t + 1);
        t
    };
    let mut records = Vec::new();
    let mut request = |client: &mut crate::handshake::ClientSession,
                       server: &mut crate::handshake::ServerSession,
                       kind: RecordKind,
                       body: Vec<u8>,
                       rekey: bool| {
        let record = if rekey {
            client.channel().seal_rekey_request().unwrap()
        } else {
            client.channel().seal_request(kind, &body).unwrap()
        };
        let opened = server.open_request(&record, kind).unwrap();
        assert_eq!(opened.plaintext, body);
        records.push((
            next(),
            record_json(
                &record,
                Direction::ClientToBroker,
                0,
                &body,
                &iv("client_to_broker", record.epoch),
                &session_id,
            ),
        ));
        record.seq
    };
    let mut replies = Vec::new();
    let mut reply = |client: &mut crate::handshake::ClientSession,
                     record: SealedRecord,
                     request_seq: u64,
                     body: Vec<u8>| {
        let (_, opened) = client
            .channel()
            .open_reply_at(
                std::time::Instant::now(),
                request_seq,
                &[record.kind()],
                record.event_index,
                &record,
            )
            .unwrap();
        assert_eq!(opened, body);
        replies.push((next(), record, request_seq, body));
    };

    let job = |code: &str| v1::ExecuteRequest {
        job: Some(v1::Job {
            code: code.into(),
            level: v1::SecurityLevel::Strict as i32,
            limits: None,
            input_json: String::new(),
        }),
        client_tools: vec![],
    };
    let exec = job("return 1 + 1").encode_to_vec();
    let r0 = request(
        &mut client,
        &mut server,
        RecordKind::ExecuteRequest,
        exec,
        false,
    );
    let result = v1::ExecuteResult {
        outcome: Some(v1::execute_result::Outcome::Final(v1::FinalEvent {
            outcome: Some(v1::final_event::Outcome::ResultJson("2".into())),
            stats: None,
        })),
        console: vec![],
    }
    .encode_to_vec();
    let rec = server
        .channel()
        .seal_reply(r0, RecordKind::ExecuteResult, 0, &result)
        .unwrap();
    reply(&mut client, rec, r0, result);

    // The stream declares a client tool (§10.6); the client answers its call with a
    // TOOL_RESULT record, which the broker acknowledges (the unary SubmitToolResult).
    let stream = v1::ExecuteRequest {
        client_tools: vec![v1::ToolInfo {
            name: "lookup".into(),
            description: "Looks a word up.".into(),
            input_schema_json: r#"{"type":"object"}"#.into(),
        }],
        ..job("console.log('hi'); return await callTool('lookup', {q: 'x'}) + 35")
    }
    .encode_to_vec();
    let r1 = request(
        &mut client,
        &mut server,
        RecordKind::StreamRequest,
        stream,
        false,
    );
    let mut sealer = crate::seal::StreamSealer::new(r1);
    for event in [
        v1::stream_event::Event::Console(v1::ConsoleEvent {
            level: v1::ConsoleLevel::Log as i32,
            text: "hi".into(),
        }),
        v1::stream_event::Event::ToolCall(v1::ToolCall {
            call_id: 1,
            name: "lookup".into(),
            args_json: r#"{"q":"x"}"#.into(),
            client_answers: true,
        }),
    ] {
        let event = v1::StreamEvent { event: Some(event) };
        let rec = sealer.seal(server.channel(), &event).unwrap();
        reply(&mut client, rec, r1, event.encode_to_vec());
    }
    let answer = v1::SubmitToolResult {
        stream_seq: r1,
        result: Some(v1::ToolResult {
            call_id: 1,
            outcome: Some(v1::tool_result::Outcome::ResultJson("7".into())),
        }),
    }
    .encode_to_vec();
    let r_tool = request(
        &mut client,
        &mut server,
        RecordKind::ToolResult,
        answer,
        false,
    );
    let rec = server
        .channel()
        .seal_reply(r_tool, RecordKind::ToolResultAck, 0, &[])
        .unwrap();
    reply(&mut client, rec, r_tool, vec![]);
    for event in [
        v1::stream_event::Event::ToolResult(v1::ToolResultEvent {
            call_id: 1,
            is_error: false,
            name: "lookup".into(),
        }),
        v1::stream_event::Event::Final(v1::FinalEvent {
            outcome: Some(v1::final_event::Outcome::ResultJson("42".into())),
            stats: None,
        }),
    ] {
        let event = v1::StreamEvent { event: Some(event) };
        let rec = sealer.seal(server.channel(), &event).unwrap();
        reply(&mut client, rec, r1, event.encode_to_vec());
    }

    let r2 = request(
        &mut client,
        &mut server,
        RecordKind::RekeyRequest,
        vec![],
        true,
    );
    let rec = server.channel().seal_rekey_result(r2).unwrap();
    reply(&mut client, rec, r2, vec![]);
    let r3 = request(
        &mut client,
        &mut server,
        RecordKind::CloseRequest,
        vec![],
        false,
    );
    let rec = server
        .channel()
        .seal_reply(r3, RecordKind::CloseResult, 0, &[])
        .unwrap();
    reply(&mut client, rec, r3, vec![]);

    // In the order they were sent.
    let mut ordered: Vec<(u32, Value)> = records;
    for (t, rec, rs, body) in replies {
        let json = record_json(
            &rec,
            Direction::BrokerToClient,
            rs,
            &body,
            &iv("broker_to_client", rec.epoch),
            &session_id,
        );
        ordered.push((t, json));
    }
    ordered.sort_by_key(|(t, _)| *t);
    let ordered: Vec<Value> = ordered.into_iter().map(|(_, v)| v).collect();

    let invalid_shares: Vec<Value> = match suite {
        Suite::X25519Ed25519Aes256gcmSha256 => X25519_LOW_ORDER
            .iter()
            .map(|p| Value::String((*p).into()))
            .chain([Value::String("09".repeat(31))])
            .collect(),
        _ => {
            let good = &server_hello.server_share;
            let mut off_curve = good.clone();
            off_curve[64] ^= 1;
            let mut compressed = vec![0x02 | (good[64] & 1)];
            compressed.extend_from_slice(&good[1..33]);
            let mut zero = vec![0u8; 65];
            zero[0] = 4;
            vec![
                h(&off_curve),
                h(&compressed),
                h(&[0u8]),
                h(&zero),
                h(&good[..64]),
            ]
        }
    };

    json!({
        "description": "enclave protocol v1 known-answer vectors (docs/PROTOCOL.md). All byte strings are lowercase hex. Inputs are SHA-256 of fixed labels. The session authenticates the client.",
        "protocol_version": 1,
        "suite": suite as i32,
        "suite_name": suite.as_str_name(),
        "inputs": {
            "client_ephemeral_secret": h(&client_eph),
            "server_ephemeral_secret": h(&server_eph),
            "server_identity_seed": h(&server_seed),
            "client_identity_seed": h(&client_seed),
            "session_id": h(session_id.as_bytes()),
            "client_auth_required": true,
        },
        "handshake": {
            "client_share": h(&client_hello.client_share),
            "server_share": h(&server_hello.server_share),
            "server_identity": h(&server_hello.server_identity),
            "server_fingerprint": server_key.fingerprint().to_string(),
            "client_identity": h(&client_identity),
            "client_fingerprint": client_key.fingerprint().to_string(),
            "shared_secret": h(shared.as_ref()),
            "client_hello_encoding": h(&ch),
            "server_hello_encoding": h(&sh),
            "h_sh": h(&h_sh),
            "handshake_secret": h(&handshake_secret),
            "server_finished_key": h(s_finished_key.as_ref()),
            "client_finished_key": h(c_finished_key.as_ref()),
            "server_signing_input": h(&server_signing_input),
            "server_signature": h(&server_hello.signature),
            "h_sv": h(&h_sv),
            "server_finished": h(&server_hello.finished),
            "h_sf": h(&h_sf),
            "client_traffic_secret_0": h(c_ap0.as_ref()),
            "server_traffic_secret_0": h(s_ap0.as_ref()),
            "h_ca": h(&h_ca),
            "client_signing_input": h(&client_signing_input),
            "client_signature": h(&client_auth.signature),
            "h_cv": h(&h_cv),
            "client_finished": h(&client_auth.finished),
            "client_hello_proto": h(&v1::HandshakeRequest {
                step: Some(v1::handshake_request::Step::ClientHello(client_hello.clone())),
            }.encode_to_vec()),
        },
        "epochs": epochs,
        "records": ordered,
        "invalid_peer_shares": invalid_shares,
    })
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

/// Re-derives keys from secrets and every record from its key, nonce and AD, using
/// only the file's values and the primitives (no channel code).
fn check_self_consistent(doc: &Value) {
    let sid: [u8; 16] = unhex(&doc["inputs"]["session_id"]).try_into().unwrap();
    let session_id = SessionId::from_bytes(sid);
    let hs = &doc["handshake"];
    let sha = |parts: &[&[u8]]| -> Vec<u8> {
        let mut t = Sha256::new();
        for p in parts {
            t.update(p);
        }
        t.finalize().to_vec()
    };
    let ch = unhex(&hs["client_hello_encoding"]);
    let sh = unhex(&hs["server_hello_encoding"]);
    let server_sig = unhex(&hs["server_signature"]);
    let server_fin = unhex(&hs["server_finished"]);
    let client_id = unhex(&hs["client_identity"]);
    let client_sig = unhex(&hs["client_signature"]);
    let secret = |name: &str| -> zeroize::Zeroizing<[u8; 32]> {
        let b: [u8; 32] = unhex(&hs[name]).try_into().unwrap();
        b.into()
    };
    let shared: [u8; 32] = unhex(&hs["shared_secret"]).try_into().unwrap();
    assert_eq!(
        h(key_schedule::handshake_secret(&shared).as_ref()),
        hs["handshake_secret"]
    );
    let hs_secret = secret("handshake_secret");
    let h_sh = sha(&[&ch, &sh]);
    assert_eq!(h(&h_sh), hs["h_sh"]);
    for (label, name) in [
        ("s finished", "server_finished_key"),
        ("c finished", "client_finished_key"),
    ] {
        assert_eq!(
            h(key_schedule::expand_secret(&hs_secret, label, &h_sh).as_ref()),
            hs[name]
        );
    }
    let server_input = [handshake::SERVER_SIGNATURE_CONTEXT, &h_sh].concat();
    assert_eq!(h(&server_input), hs["server_signing_input"]);
    let server_identity =
        crate::keys::PublicIdentity::from_slice(&unhex(&hs["server_identity"])).unwrap();
    assert!(server_identity.verify(&server_input, &server_sig));
    assert_eq!(
        server_identity.fingerprint().to_string(),
        hs["server_fingerprint"]
    );
    let h_sv = sha(&[&ch, &sh, &[3], &server_sig]);
    assert_eq!(h(&h_sv), hs["h_sv"]);
    assert_eq!(
        h(&key_schedule::hmac_sha256(
            &secret("server_finished_key"),
            &h_sv
        )),
        hs["server_finished"]
    );
    let h_sf = sha(&[&ch, &sh, &[3], &server_sig, &[4], &server_fin]);
    assert_eq!(h(&h_sf), hs["h_sf"]);
    for (label, name) in [
        ("c ap traffic", "client_traffic_secret_0"),
        ("s ap traffic", "server_traffic_secret_0"),
    ] {
        assert_eq!(
            h(key_schedule::expand_secret(&hs_secret, label, &h_sf).as_ref()),
            hs[name]
        );
    }
    let h_ca = sha(&[
        &ch,
        &sh,
        &[3],
        &server_sig,
        &[4],
        &server_fin,
        &[5],
        &client_id,
    ]);
    assert_eq!(h(&h_ca), hs["h_ca"]);
    let client_input = [handshake::CLIENT_SIGNATURE_CONTEXT, &h_ca].concat();
    assert_eq!(h(&client_input), hs["client_signing_input"]);
    let client_identity = crate::keys::PublicIdentity::from_slice(&client_id).unwrap();
    assert!(client_identity.verify(&client_input, &client_sig));
    assert_eq!(
        client_identity.fingerprint().to_string(),
        hs["client_fingerprint"]
    );
    let h_cv = sha(&[
        &ch,
        &sh,
        &[3],
        &server_sig,
        &[4],
        &server_fin,
        &[5],
        &client_id,
        &[6],
        &client_sig,
    ]);
    assert_eq!(h(&h_cv), hs["h_cv"]);
    assert_eq!(
        h(&key_schedule::hmac_sha256(
            &secret("client_finished_key"),
            &h_cv
        )),
        hs["client_finished"]
    );
    let epochs = doc["epochs"].as_array().unwrap();
    for e in epochs {
        let secret: [u8; 32] = unhex(&e["secret"]).try_into().unwrap();
        let (key, iv) = key_schedule::traffic_key_iv(&secret);
        assert_eq!(h(key.as_ref()), e["key"]);
        assert_eq!(h(&iv), e["iv"]);
        if e["epoch"] == 0 {
            let first = if e["direction"] == "client_to_broker" {
                "client_traffic_secret_0"
            } else {
                "server_traffic_secret_0"
            };
            assert_eq!(e["secret"], hs[first]);
            let next = key_schedule::next_traffic_secret(&secret);
            let e1 = epochs
                .iter()
                .find(|x| x["direction"] == e["direction"] && x["epoch"] == 1)
                .unwrap();
            assert_eq!(h(next.as_ref()), e1["secret"]);
        }
    }
    for r in doc["records"].as_array().unwrap() {
        let e = epochs
            .iter()
            .find(|x| x["direction"] == r["direction"] && x["epoch"] == r["epoch"])
            .unwrap();
        let key: [u8; 32] = unhex(&e["key"]).try_into().unwrap();
        let iv: [u8; 12] = unhex(&e["iv"]).try_into().unwrap();
        let direction = if r["direction"] == "client_to_broker" {
            Direction::ClientToBroker
        } else {
            Direction::BrokerToClient
        };
        let kind = RecordKind::try_from(r["kind"].as_i64().unwrap() as i32).unwrap();
        let seq = r["seq"].as_u64().unwrap();
        let ad = record_ad(
            &session_id,
            direction,
            r["epoch"].as_u64().unwrap() as u32,
            seq,
            kind,
            r["request_seq"].as_u64().unwrap(),
            r["event_index"].as_u64().unwrap() as u32,
        );
        assert_eq!(h(&ad), r["ad"]);
        let nonce = record_nonce(&iv, seq);
        assert_eq!(h(&nonce), r["nonce"]);
        let mut buf = unhex(&r["plaintext"]);
        let tag = Aes256Gcm::new(&key.into())
            .encrypt_inout_detached(&Nonce::from(nonce), &ad, buf.as_mut_slice().into())
            .unwrap();
        buf.extend_from_slice(&tag);
        assert_eq!(
            h(&buf),
            r["ciphertext"],
            "record seq {seq} {}",
            r["direction"]
        );
    }
}

#[test]
fn vectors_match_the_implementation_and_are_self_consistent() {
    for suite in [
        Suite::X25519Ed25519Aes256gcmSha256,
        Suite::P256Ed25519Aes256gcmSha256,
    ] {
        let computed = compute(suite);
        let path = path(suite);
        if std::env::var_os("ENCLAVE_WRITE_VECTORS").is_some() {
            let text = serde_json::to_string_pretty(&computed).unwrap() + "\n";
            std::fs::write(&path, text).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (ENCLAVE_WRITE_VECTORS=1 creates it)",
                path.display()
            )
        });
        let stored: Value = serde_json::from_str(&text).unwrap();
        assert!(
            stored == computed,
            "{} differs from what the code computes; if the protocol changed on purpose, \
             rerun with ENCLAVE_WRITE_VECTORS=1 and update docs/PROTOCOL.md",
            path.display()
        );
        check_self_consistent(&stored);
        // The invalid shares really are refused, by both roles.
        for share in stored["invalid_peer_shares"].as_array().unwrap() {
            let share = unhex(share);
            let secret = EphemeralSecret::generate(suite).unwrap();
            assert!(
                secret.diffie_hellman(&share).is_err(),
                "{}",
                hex::encode(&share)
            );
        }
    }
}
