//! Every protocol attack is refused with a clear status, and the session survives
//! where it should.

use enclave_proto::v1::{
    ClientHello, HandshakeRequest, RecordKind, StreamEvent, Suite, handshake_request, stream_event,
};
use serde_json::json;
use tonic::Code;

use crate::support::*;

async fn still_works(raw: &mut Raw) {
    assert_eq!(
        value(&raw.execute("return 'ok'").await.unwrap()),
        json!("ok")
    );
}

#[tokio::test]
async fn a_job_runs_over_both_curves() {
    let broker = Broker::start(&[]);
    for suite in [
        Suite::X25519Ed25519Aes256gcmSha256,
        Suite::P256Ed25519Aes256gcmSha256,
    ] {
        let mut raw = Raw::connect(&broker, suite).await;
        let result = raw
            .execute("console.log('hi'); return await callTool('echo', {n: 41})")
            .await
            .unwrap();
        assert_eq!(value(&result), json!({"n": 41}));
        assert_eq!(result.console[0].text, "hi");
    }
}

#[tokio::test]
async fn stream_events_arrive_in_order_and_end_with_final() {
    let broker = Broker::start(&[]);
    let mut raw = Raw::connect(&broker, Suite::X25519Ed25519Aes256gcmSha256).await;
    let (events, records) = raw
        .stream("console.log('a'); const r = await callTool('echo', 1); console.log('b'); return r")
        .await
        .unwrap();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match &e.event {
            Some(stream_event::Event::Console(_)) => "console",
            Some(stream_event::Event::ToolCall(_)) => "tool_call",
            Some(stream_event::Event::ToolResult(_)) => "tool_result",
            Some(stream_event::Event::Final(_)) => "final",
            Some(stream_event::Event::Error(_)) => "error",
            None => "none",
        })
        .collect();
    assert_eq!(
        kinds,
        ["console", "tool_call", "tool_result", "console", "final"]
    );
    let indices: Vec<u32> = records.iter().map(|r| r.event_index).collect();
    assert_eq!(indices, [0, 1, 2, 3, 4]);
    assert_eq!(records.last().unwrap().kind(), RecordKind::StreamFinal);
}

#[tokio::test]
async fn a_tampered_byte_is_refused_and_the_session_survives() {
    let broker = Broker::start(&[]);
    let mut raw = Raw::connect(&broker, Suite::X25519Ed25519Aes256gcmSha256).await;
    for position in [0usize, 7, usize::MAX] {
        let mut record = raw.seal(RecordKind::ExecuteRequest, job("return 1"));
        let at = position.min(record.ciphertext.len() - 1);
        record.ciphertext[at] ^= 0x01;
        let err = raw.send(record).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        assert!(err.message().contains("authentication failed"), "{err:?}");
    }
    // Tampering with the header (bound by the nonce and associated data) fails the
    // same way: here a fresh, never-used sequence number.
    let mut record = raw.seal(RecordKind::ExecuteRequest, job("return 1"));
    record.seq += 10;
    assert_eq!(
        raw.send(record).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    // A request claiming a stream position is malformed.
    let mut record = raw.seal(RecordKind::ExecuteRequest, job("return 1"));
    record.event_index = 3;
    let err = raw.send(record).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    still_works(&mut raw).await;
}

#[tokio::test]
async fn a_replayed_record_is_refused() {
    let broker = Broker::start(&[]);
    let mut raw = Raw::connect(&broker, Suite::X25519Ed25519Aes256gcmSha256).await;
    let record = raw.seal(RecordKind::ExecuteRequest, job("return 'once'"));
    let copy = record.clone();
    assert_eq!(value(&raw.send(record).await.unwrap()), json!("once"));
    let err = raw.rpc.execute(copy).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert!(err.message().contains("already received"), "{err:?}");
    still_works(&mut raw).await;
}

#[tokio::test]
async fn out_of_order_within_the_window_works_beyond_it_is_refused() {
    let broker = Broker::start(&[]);
    let mut raw = Raw::connect(&broker, Suite::X25519Ed25519Aes256gcmSha256).await;
    let first = raw.seal(RecordKind::ExecuteRequest, job("return 1"));
    let second = raw.seal(RecordKind::ExecuteRequest, job("return 2"));
    // Concurrent requests arrive in any order.
    assert_eq!(value(&raw.send(second).await.unwrap()), json!(2));
    assert_eq!(value(&raw.send(first).await.unwrap()), json!(1));

    let old = raw.seal(RecordKind::ExecuteRequest, job("return 'old'"));
    let mut newest = None;
    for _ in 0..1100 {
        newest = Some(raw.seal(RecordKind::ExecuteRequest, job("return 'new'")));
    }
    assert_eq!(
        value(&raw.send(newest.unwrap()).await.unwrap()),
        json!("new")
    );
    let err = raw.rpc.execute(old).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert!(
        err.message().contains("older than the replay window"),
        "{err:?}"
    );
    still_works(&mut raw).await;
}

#[tokio::test]
async fn records_cannot_be_replayed_as_another_kind_or_into_another_session() {
    let broker = Broker::start(&[]);
    let mut a = Raw::connect(&broker, Suite::X25519Ed25519Aes256gcmSha256).await;
    let mut b = Raw::connect(&broker, Suite::X25519Ed25519Aes256gcmSha256).await;
    // A unary request sent as a stream request.
    let record = a.seal(RecordKind::ExecuteRequest, job("return 1"));
    let err = a.rpc.execute_stream(record).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // Session A's record spliced into session B.
    let mut record = a.seal(RecordKind::ExecuteRequest, job("return 1"));
    record.session_id = b.session.session_id().as_bytes().to_vec();
    let err = b.rpc.execute(record).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    still_works(&mut a).await;
    still_works(&mut b).await;
}

#[tokio::test]
async fn an_unknown_session_is_unauthenticated() {
    let broker = Broker::start(&[]);
    let mut raw = Raw::connect(&broker, Suite::X25519Ed25519Aes256gcmSha256).await;
    let mut record = raw.seal(RecordKind::ExecuteRequest, job("return 1"));
    record.session_id = vec![7; 16];
    let err = raw.rpc.execute(record.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("unknown or expired session"),
        "{err:?}"
    );
    record.session_id = vec![1, 2, 3];
    assert_eq!(
        raw.rpc.execute(record).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn a_truncated_stream_is_detected() {
    let broker = Broker::start(&[]);
    let mut raw = Raw::connect(&broker, Suite::X25519Ed25519Aes256gcmSha256).await;
    let record = raw.seal(RecordKind::StreamRequest, job("console.log('x'); return 1"));
    let seq = record.seq;
    let mut stream = raw.rpc.execute_stream(record).await.unwrap().into_inner();
    let mut records = Vec::new();
    while let Some(r) = stream.message().await.unwrap() {
        records.push(r);
    }
    // An attacker drops the final event: the client must notice.
    records.pop();
    let mut opener = enclave_proto::StreamOpener::new(seq);
    for r in &records {
        let _: StreamEvent = opener.open(raw.session.channel(), r).unwrap();
    }
    assert!(matches!(
        opener.finish(),
        Err(enclave_proto::Error::StreamTruncated)
    ));
}

#[tokio::test]
async fn bad_handshakes_are_refused() {
    let broker = Broker::start(&[]);
    let mut rpc = broker.rpc().await;
    let hello = |version, suite: Suite, share: Vec<u8>| HandshakeRequest {
        step: Some(handshake_request::Step::ClientHello(ClientHello {
            version,
            suite: suite as i32,
            client_share: share,
        })),
    };
    let cases = [
        (
            hello(2, Suite::X25519Ed25519Aes256gcmSha256, vec![9; 32]),
            "version",
        ),
        (hello(1, Suite::Unspecified, vec![9; 32]), "suite"),
        (
            hello(1, Suite::X25519Ed25519Aes256gcmSha256, vec![9; 31]),
            "share",
        ),
        // Low-order X25519 point: the shared secret would be all zeros.
        (
            hello(1, Suite::X25519Ed25519Aes256gcmSha256, vec![0; 32]),
            "zero",
        ),
        (
            hello(1, Suite::P256Ed25519Aes256gcmSha256, vec![4; 65]),
            "share",
        ),
        (HandshakeRequest { step: None }, "no step"),
    ];
    for (request, needle) in cases {
        let err = rpc.handshake(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{needle}: {err:?}");
        assert!(
            err.message().to_lowercase().contains(needle),
            "{needle}: {err:?}"
        );
    }
}

#[tokio::test]
async fn a_wrong_pin_refuses_to_connect() {
    let broker = Broker::start(&[]);
    let other = Broker::start(&[]);
    let mut rpc = broker.rpc().await;
    // Pinned to the other broker's key: the signature is fine, the identity is not.
    let config = enclave_proto::ClientConfig::new(other.fingerprint);
    let (handshake, hello) = enclave_proto::ClientHandshake::start(&config).unwrap();
    let response = rpc
        .handshake(HandshakeRequest {
            step: Some(handshake_request::Step::ClientHello(hello)),
        })
        .await
        .unwrap()
        .into_inner();
    let Some(enclave_proto::v1::handshake_response::Step::ServerHello(server_hello)) =
        response.step
    else {
        panic!()
    };
    let err = handshake
        .finish(&server_hello)
        .err()
        .expect("a wrong pin is refused");
    assert!(
        matches!(err, enclave_proto::Error::PinMismatch { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn rekey_moves_to_a_new_epoch_and_jobs_continue() {
    let broker = Broker::start(&[]);
    let mut raw = Raw::connect(&broker, Suite::P256Ed25519Aes256gcmSha256).await;
    still_works(&mut raw).await;
    let record = raw.session.channel().seal_rekey_request().unwrap();
    let seq = record.seq;
    let reply = raw.rpc.rekey(record).await.unwrap().into_inner();
    assert_eq!(reply.epoch, 1);
    raw.session
        .channel()
        .open_reply(seq, RecordKind::RekeyResult, &reply)
        .unwrap();
    still_works(&mut raw).await;
    assert_eq!(raw.session.channel().send_epoch(), 1);
}

#[tokio::test]
async fn an_execute_reply_too_large_to_seal_is_reported_inside_the_result() {
    let broker = Broker::start(&[]);
    let mut raw = Raw::connect(&broker, Suite::X25519Ed25519Aes256gcmSha256).await;
    // Within every per-job limit (console 10 MiB, result 8 MiB), over 16 MiB together.
    let code = "const line = 'x'.repeat(1 << 20); for (let i = 0; i < 9; i++) console.log(line); return 'y'.repeat(7.5 * (1 << 20))";
    let big = enclave_proto::v1::Job {
        level: enclave_proto::v1::SecurityLevel::Permissive as i32,
        ..job(code)
    };
    let record = raw.seal(RecordKind::ExecuteRequest, big);
    let result = raw
        .send(record)
        .await
        .expect("the call succeeds; the failure is sealed inside");
    match result.outcome {
        Some(enclave_proto::v1::execute_result::Outcome::Error(e)) => {
            assert_eq!(e.code(), enclave_proto::v1::ErrorCode::ResultTooLarge);
            assert!(e.message.contains("ExecuteStream"), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    still_works(&mut raw).await;
}

#[tokio::test]
async fn a_job_refused_before_it_ran_comes_back_sealed_as_invalid_job() {
    let broker = Broker::start(&[]);
    let mut raw = Raw::connect(&broker, Suite::X25519Ed25519Aes256gcmSha256).await;
    let limits = enclave_proto::v1::Limits {
        memory_bytes: Some(1 << 40),
        ..Default::default()
    };
    let record = raw.seal(
        RecordKind::ExecuteRequest,
        enclave_proto::v1::Job {
            limits: Some(limits),
            ..job("return 1")
        },
    );
    let result = raw
        .send(record)
        .await
        .expect("the refusal is sealed, not a transport error");
    match result.outcome {
        Some(enclave_proto::v1::execute_result::Outcome::Error(e)) => {
            assert_eq!(e.code(), enclave_proto::v1::ErrorCode::InvalidJob, "{e:?}");
            assert!(e.message.contains("memory_bytes"), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    still_works(&mut raw).await;
}

/// Passes bytes through unchanged, to send what no generated client would.
#[derive(Clone, Copy)]
struct RawCodec;
struct RawBytes;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;
    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }
    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl tonic::codec::Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let bytes = bytes::Buf::chunk(src).to_vec();
        bytes::Buf::advance(src, bytes.len());
        Ok(Some(bytes))
    }
}

#[tokio::test]
async fn malformed_and_oversized_requests_are_invalid_argument() {
    let broker = Broker::start(&[]);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", broker.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Field 1 as a length-delimited value that runs past the end: no message decodes.
    let garbage = vec![0x0a, 0x7f, 0x01];
    for method in [
        "Handshake",
        "Execute",
        "CloseSession",
        "Rekey",
        "ExecuteStream",
    ] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let path: tonic::codegen::http::uri::PathAndQuery =
            format!("/enclave.v1.Broker/{method}").parse().unwrap();
        let request = tonic::Request::new(garbage.clone());
        let err = if method == "ExecuteStream" {
            match grpc.server_streaming(request, path, RawCodec).await {
                Ok(response) => response.into_inner().message().await.unwrap_err(),
                Err(e) => e,
            }
        } else {
            grpc.unary(request, path, RawCodec).await.unwrap_err()
        };
        assert_eq!(err.code(), Code::InvalidArgument, "{method}: {err:?}");
        assert!(
            err.message().contains("malformed message"),
            "{method}: {err:?}"
        );
    }

    // A record claiming more than the 16 MiB a plaintext may be: refused as such before
    // decryption (not as a tag that fails), and the session goes on.
    let mut raw = Raw::connect(&broker, Suite::X25519Ed25519Aes256gcmSha256).await;
    let mut record = raw.seal(RecordKind::ExecuteRequest, job("return 1"));
    record.ciphertext.resize((16 << 20) + 17, 0);
    let err = raw.rpc.execute(record).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("exceeds the 16 MiB limit"),
        "{err:?}"
    );
    assert_eq!(value(&raw.execute("return 2").await.unwrap()), json!(2));
}
