//! Answers to client-provided tools (PROTOCOL.md §10.6) that do not belong where they are
//! sent: another stream, another session, another kind. Raw records over the real
//! broker's `ExecuteWithTools` and `SubmitToolResult`.

use enclave_proto::StreamOpener;
use enclave_proto::v1::{
    ExecuteRequest, RecordKind, SealedRecord, SubmitToolResult, Suite, ToolInfo, ToolResult,
    stream_event::Event, tool_result,
};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::support::*;

const SUITE: Suite = Suite::X25519Ed25519Aes256gcmSha256;

/// A job that calls the client's tool `t` and returns its answer.
fn request(raw: &mut Raw) -> SealedRecord {
    let body = ExecuteRequest {
        job: Some(job("return await callTool('t', {})")),
        client_tools: vec![ToolInfo {
            name: "t".into(),
            description: "The client's.".into(),
            input_schema_json: String::new(),
        }],
    };
    raw.session
        .channel()
        .seal_request(RecordKind::StreamRequest, &body.encode_to_vec())
        .unwrap()
}

fn answer(raw: &mut Raw, stream_seq: u64, call_id: u64, json: &str) -> SealedRecord {
    let body = SubmitToolResult {
        stream_seq,
        result: Some(ToolResult {
            call_id,
            outcome: Some(tool_result::Outcome::ResultJson(json.into())),
        }),
    };
    raw.session
        .channel()
        .seal_request(RecordKind::ToolResult, &body.encode_to_vec())
        .unwrap()
}

/// Starts the job over `ExecuteWithTools` and waits for its call of `t`: the records
/// going in, the records coming out, the opener, the stream's seq and the call's id.
async fn started(
    raw: &mut Raw,
) -> (
    mpsc::Sender<SealedRecord>,
    tonic::Streaming<SealedRecord>,
    StreamOpener,
    u64,
    u64,
) {
    let (tx, rx) = mpsc::channel(4);
    let first = request(raw);
    let seq = first.seq;
    tx.send(first).await.unwrap();
    let mut out = raw
        .rpc
        .execute_with_tools(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut opener = StreamOpener::new(seq);
    loop {
        let record = out.message().await.unwrap().expect("a record");
        let event = opener.open(raw.session.channel(), &record).unwrap();
        if let Some(Event::ToolCall(call)) = event.event {
            assert!(call.client_answers);
            return (tx, out, opener, seq, call.call_id);
        }
    }
}

/// The rest of the stream: the job's value, or the status that ended the call.
async fn outcome(
    raw: &mut Raw,
    out: &mut tonic::Streaming<SealedRecord>,
    opener: &mut StreamOpener,
) -> Result<String, tonic::Status> {
    while let Some(record) = out.message().await? {
        let event = opener.open(raw.session.channel(), &record).unwrap();
        if let Some(Event::Final(f)) = event.event {
            return Ok(format!("{:?}", f.outcome));
        }
    }
    panic!("the stream ended without a final event or a status")
}

#[tokio::test]
async fn an_answer_on_its_own_stream_resolves_the_call() {
    let broker = Broker::start(&[]);
    let mut raw = Raw::connect(&broker, SUITE).await;
    let (tx, mut out, mut opener, seq, call_id) = started(&mut raw).await;
    tx.send(answer(&mut raw, seq, call_id, "\"mine\""))
        .await
        .unwrap();
    let outcome = outcome(&mut raw, &mut out, &mut opener).await.unwrap();
    assert!(outcome.contains(r#"ResultJson("\"mine\"")"#), "{outcome}");
}

#[tokio::test]
async fn an_answer_for_another_stream_ends_the_call() {
    let broker = Broker::start(&[]);
    let mut raw = Raw::connect(&broker, SUITE).await;
    let (tx, mut out, mut opener, seq, call_id) = started(&mut raw).await;
    tx.send(answer(&mut raw, seq + 100, call_id, "1"))
        .await
        .unwrap();
    let status = outcome(&mut raw, &mut out, &mut opener).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("stream_seq"), "{status:?}");
}

#[tokio::test]
async fn an_answer_sealed_by_another_session_ends_the_call() {
    let broker = Broker::start(&[]);
    let mut raw = Raw::connect(&broker, SUITE).await;
    let mut other = Raw::connect(&broker, SUITE).await;
    let (tx, mut out, mut opener, seq, call_id) = started(&mut raw).await;
    tx.send(answer(&mut other, seq, call_id, "1"))
        .await
        .unwrap();
    let status = outcome(&mut raw, &mut out, &mut opener).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("another session"), "{status:?}");
}

#[tokio::test]
async fn a_record_of_another_kind_ends_the_call() {
    let broker = Broker::start(&[]);
    let mut raw = Raw::connect(&broker, SUITE).await;
    let (tx, mut out, mut opener, _, _) = started(&mut raw).await;
    let wrong = raw.seal(RecordKind::StreamRequest, job("return 1"));
    tx.send(wrong).await.unwrap();
    let status = outcome(&mut raw, &mut out, &mut opener).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
}

/// Another client that learned the stream's seq and call id (they are not secret) still
/// cannot answer: answers are routed within their own session only.
#[tokio::test]
async fn another_session_cannot_answer_through_submit_tool_result() {
    let broker = Broker::start(&[]);
    let mut raw = Raw::connect(&broker, SUITE).await;
    let mut other = Raw::connect(&broker, SUITE).await;
    let (tx, mut out, mut opener, seq, call_id) = started(&mut raw).await;
    let forged = answer(&mut other, seq, call_id, "\"forged\"");
    let status = other.rpc.submit_tool_result(forged).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    // The owner's own answer, through the unary call this time, still lands.
    let own = answer(&mut raw, seq, call_id, "\"mine\"");
    let ack_seq = own.seq;
    let ack = raw.rpc.submit_tool_result(own).await.unwrap().into_inner();
    raw.session
        .channel()
        .open_reply(ack_seq, RecordKind::ToolResultAck, &ack)
        .unwrap();
    drop(tx);
    let outcome = outcome(&mut raw, &mut out, &mut opener).await.unwrap();
    assert!(outcome.contains(r#"ResultJson("\"mine\"")"#), "{outcome}");
}
