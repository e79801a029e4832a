//! Protocol v1 over HTTP: the JSON endpoints give what gRPC gives, with the documented
//! statuses.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use enclave_proto::v1::broker_client::BrokerClient;
use enclave_proto::v1::{
    CloseSessionRequest, CloseSessionResponse, ConsoleLevel, Job, ListToolsRequest,
    ListToolsResponse, RecordKind, SealedRecord, SecurityLevel, Suite, ToolInfo, final_event,
    stream_event::Event, tool_result,
};
use enclave_proto::{ClientConfig, ClientHandshake};
use prost::Message;
use serde_json::{Value, json};

use crate::support::*;

const SUITES: [Suite; 2] = [
    Suite::X25519Ed25519Aes256gcmSha256,
    Suite::P256Ed25519Aes256gcmSha256,
];

#[tokio::test]
async fn handshake_execute_stream_rekey_and_close_with_both_curves() {
    let broker = Broker::start(&[]);
    for suite in SUITES {
        let mut client = V1::connect(&broker, suite).await;
        let result = client
            .execute("console.log('hi', 1); return await callTool('echo', {n: 1})")
            .await
            .unwrap();
        assert_eq!(value(&result), json!({"n": 1}), "{suite:?}");
        assert_eq!(result.console.len(), 1);
        assert_eq!(result.console[0].text, "hi 1");

        let events = client
            .stream("console.log('a'); const r = await callTool('echo', {n: 2}); console.warn('b'); return r")
            .await
            .unwrap();
        let events: Vec<Event> = events.into_iter().map(|e| e.event.unwrap()).collect();
        assert!(
            matches!(&events[0], Event::Console(c) if c.text == "a"),
            "{events:?}"
        );
        assert!(
            matches!(&events[1], Event::ToolCall(c) if c.name == "echo" && c.args_json == r#"{"n":2}"#)
        );
        assert!(matches!(&events[2], Event::ToolResult(r) if r.name == "echo" && !r.is_error));
        assert!(
            matches!(&events[3], Event::Console(c) if c.text == "b" && c.level() == ConsoleLevel::Warn)
        );
        assert!(matches!(&events[4], Event::Final(_)));
        assert_eq!(events.len(), 5);

        // Rekey moves both directions to epoch 1; requests go on working.
        let record = client.session.channel().seal_rekey_request().unwrap();
        let seq = record.seq;
        let reply: SealedRecord = call(&broker.url("/v1/session/rekey"), &record)
            .await
            .unwrap();
        client
            .session
            .channel()
            .open_reply(seq, RecordKind::RekeyResult, &reply)
            .unwrap();
        assert_eq!(reply.epoch, 1);
        assert_eq!(value(&client.execute("return 2").await.unwrap()), json!(2));

        // ListTools: the tools, sealed like every answer.
        let record = client
            .session
            .channel()
            .seal_request(
                RecordKind::ListToolsRequest,
                &ListToolsRequest {}.encode_to_vec(),
            )
            .unwrap();
        let seq = record.seq;
        let reply: SealedRecord = call(&broker.url("/v1/tools"), &record).await.unwrap();
        let plain = client
            .session
            .channel()
            .open_reply(seq, RecordKind::ListToolsResult, &reply)
            .unwrap();
        let tools = ListToolsResponse::decode(plain.as_slice()).unwrap().tools;
        assert_eq!(tools.len(), 1, "{tools:?}");
        assert_eq!(tools[0].name, "echo");
        assert_eq!(tools[0].input_schema_json, "{}");
        // A request of another kind on that path is refused, as over gRPC.
        let wrong = client.seal(RecordKind::ExecuteRequest, job("return 1"));
        let err = call::<_, SealedRecord>(&broker.url("/v1/tools"), &wrong)
            .await
            .unwrap_err();
        assert_eq!(
            (err.status, err.code()),
            (400, "INVALID_ARGUMENT"),
            "{err:?}"
        );

        // Close, after which the session is unknown.
        let record = client
            .session
            .channel()
            .seal_request(
                RecordKind::CloseRequest,
                &CloseSessionRequest {}.encode_to_vec(),
            )
            .unwrap();
        let seq = record.seq;
        let reply: SealedRecord = call(&broker.url("/v1/session/close"), &record)
            .await
            .unwrap();
        let plain = client
            .session
            .channel()
            .open_reply(seq, RecordKind::CloseResult, &reply)
            .unwrap();
        CloseSessionResponse::decode(plain.as_slice()).unwrap();
        let err = client.execute("return 3").await.unwrap_err();
        assert_eq!(
            (err.status, err.code()),
            (401, "UNAUTHENTICATED"),
            "{err:?}"
        );
    }
}

/// The wire is the proto3 JSON mapping: a client in another language writes it by hand.
#[tokio::test]
async fn the_wire_is_the_proto3_json_mapping() {
    let broker = Broker::start(&[]);
    let config = ClientConfig {
        suite: Suite::P256Ed25519Aes256gcmSha256,
        ..ClientConfig::new(broker.fingerprint)
    };
    let (handshake, hello) = ClientHandshake::start(&config).unwrap();
    // Written by hand, not by the generated serde code.
    let request = json!({"clientHello": {
        "version": 1,
        "suite": "SUITE_P256_ED25519_AES256GCM_SHA256",
        "clientShare": B64.encode(&hello.client_share),
    }});
    let (status, body) = post(&broker.url("/v1/handshake"), &request.to_string(), &[]).await;
    assert_eq!(status, 200);
    let answer = json_of(&body);
    let server_hello = &answer["serverHello"];
    assert_eq!(server_hello["version"], 1);
    assert_eq!(server_hello["suite"], "SUITE_P256_ED25519_AES256GCM_SHA256");
    assert_eq!(
        B64.decode(server_hello["sessionId"].as_str().unwrap())
            .unwrap()
            .len(),
        16
    );
    assert_eq!(
        B64.decode(server_hello["serverShare"].as_str().unwrap())
            .unwrap()
            .len(),
        65
    );
    assert_eq!(
        B64.decode(server_hello["signature"].as_str().unwrap())
            .unwrap()
            .len(),
        64
    );
    let server_hello = serde_json::from_value(server_hello.clone()).unwrap();
    let mut session = handshake.finish(&server_hello).unwrap();

    // Records: enum names, base64 bytes, 64-bit integers as strings, defaults omitted.
    let mut replies = Vec::new();
    for code in ["return 1", "return 2"] {
        let body = enclave_proto::v1::ExecuteRequest {
            job: Some(job(code)),
            ..Default::default()
        }
        .encode_to_vec();
        let record = session
            .channel()
            .seal_request(RecordKind::ExecuteRequest, &body)
            .unwrap();
        let request = json!({
            "sessionId": B64.encode(&record.session_id),
            "seq": record.seq.to_string(),
            "kind": "RECORD_KIND_EXECUTE_REQUEST",
            "ciphertext": B64.encode(&record.ciphertext),
        });
        let (status, body) = post(&broker.url("/v1/execute"), &request.to_string(), &[]).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let reply = json_of(&body);
        assert_eq!(reply["kind"], "RECORD_KIND_EXECUTE_RESULT");
        let sealed: SealedRecord = serde_json::from_value(reply.clone()).unwrap();
        session
            .channel()
            .open_reply(record.seq, RecordKind::ExecuteResult, &sealed)
            .unwrap();
        replies.push(reply);
    }
    assert_eq!(
        replies[0].get("seq"),
        None,
        "seq 0 is the default and omitted"
    );
    assert_eq!(replies[1]["seq"], "1");
}

#[tokio::test]
async fn failures_get_the_documented_statuses_and_bodies() {
    let broker = Broker::start(&[]);
    let mut client = V1::connect(&broker, Suite::X25519Ed25519Aes256gcmSha256).await;
    let execute = broker.url("/v1/execute");
    let expect = |(status, body): (u16, Vec<u8>), want_status: u16, want_code: &str| {
        let body = json_of(&body);
        assert_eq!(
            (status, body["code"].as_str().unwrap()),
            (want_status, want_code),
            "{body}"
        );
        assert!(!body["message"].as_str().unwrap().is_empty());
        body
    };

    // Unknown session.
    let mut record = client.seal(RecordKind::ExecuteRequest, job("return 1"));
    record.session_id = vec![7; 16];
    expect(
        post(&execute, &serde_json::to_string(&record).unwrap(), &[]).await,
        401,
        "UNAUTHENTICATED",
    );

    // Replay: the first copy runs, the second is refused.
    let record = client.seal(RecordKind::ExecuteRequest, job("return 1"));
    let body = serde_json::to_string(&record).unwrap();
    assert_eq!(post(&execute, &body, &[]).await.0, 200);
    let refused = expect(post(&execute, &body, &[]).await, 409, "ABORTED");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("already received"),
        "{refused}"
    );

    // Tampered ciphertext: refused, and the genuine record still goes through after.
    let record = client.seal(RecordKind::ExecuteRequest, job("return 5"));
    let mut tampered = record.clone();
    tampered.ciphertext[0] ^= 1;
    expect(
        post(&execute, &serde_json::to_string(&tampered).unwrap(), &[]).await,
        401,
        "UNAUTHENTICATED",
    );
    assert_eq!(value(&client.send(record).await.unwrap()), json!(5));

    // A record of the wrong kind for the endpoint.
    let record = client.seal(RecordKind::ExecuteRequest, job("return 1"));
    let stream = broker.url("/v1/execute/stream");
    expect(
        post(&stream, &serde_json::to_string(&record).unwrap(), &[]).await,
        400,
        "INVALID_ARGUMENT",
    );

    // Not the JSON of the message.
    expect(
        post(&execute, "{not json", &[]).await,
        400,
        "INVALID_ARGUMENT",
    );
    expect(
        post(&execute, r#"{"seq":"minus one"}"#, &[]).await,
        400,
        "INVALID_ARGUMENT",
    );
    expect(
        post(&execute, r#"{"kind":"RECORD_KIND_NONSENSE"}"#, &[]).await,
        400,
        "INVALID_ARGUMENT",
    );

    // Handshake input the protocol refuses.
    let hello = json!({"clientHello": {"version": 2, "suite": "SUITE_X25519_ED25519_AES256GCM_SHA256", "clientShare": B64.encode([9u8; 32])}});
    expect(
        post(&broker.url("/v1/handshake"), &hello.to_string(), &[]).await,
        400,
        "INVALID_ARGUMENT",
    );
    let low_order = json!({"clientHello": {"version": 1, "suite": "SUITE_X25519_ED25519_AES256GCM_SHA256", "clientShare": B64.encode([0u8; 32])}});
    expect(
        post(&broker.url("/v1/handshake"), &low_order.to_string(), &[]).await,
        400,
        "INVALID_ARGUMENT",
    );
    expect(
        post(&broker.url("/v1/handshake"), "{}", &[]).await,
        400,
        "INVALID_ARGUMENT",
    );

    // Routing.
    expect(
        post(&broker.url("/v1/nothing"), "{}", &[]).await,
        404,
        "NOT_FOUND",
    );
    let get = http().get(&execute).send().await.unwrap();
    assert_eq!(get.status().as_u16(), 405);
}

/// One service behind both transports: a session opened over HTTP is used over gRPC,
/// and the replay window is the same one.
#[tokio::test]
async fn http_and_grpc_share_sessions() {
    let broker = Broker::start(&[]);
    let mut client = V1::connect(&broker, Suite::P256Ed25519Aes256gcmSha256).await;
    let mut rpc = BrokerClient::connect(format!("http://{}", broker.grpc_addr))
        .await
        .unwrap();
    let record = client.seal(RecordKind::ExecuteRequest, job("return 'over gRPC'"));
    let reply = rpc.execute(record.clone()).await.unwrap().into_inner();
    let plain = client
        .session
        .channel()
        .open_reply(record.seq, RecordKind::ExecuteResult, &reply)
        .unwrap();
    let result = enclave_proto::v1::ExecuteResult::decode(plain.as_slice()).unwrap();
    assert_eq!(value(&result), json!("over gRPC"));
    let (status, body) = post(
        &broker.url("/v1/execute"),
        &serde_json::to_string(&record).unwrap(),
        &[],
    )
    .await;
    assert_eq!((status, &json_of(&body)["code"]), (409, &json!("ABORTED")));
    assert_eq!(value(&client.execute("return 1").await.unwrap()), json!(1));
}

#[tokio::test]
async fn client_authentication_over_json() {
    let key = enclave_proto::keys::keygen(&temp_path("client.key")).unwrap();
    let fingerprint = key.fingerprint().to_string();
    let broker = Broker::start(&["--allow-client", &fingerprint]);
    let mut anonymous = V1::connect(&broker, Suite::X25519Ed25519Aes256gcmSha256).await;
    let err = anonymous.execute("return 1").await.unwrap_err();
    assert_eq!((err.status, err.code()), (401, "UNAUTHENTICATED"));
    let mut known = V1::connect_as(&broker, Suite::P256Ed25519Aes256gcmSha256, Some(&key))
        .await
        .unwrap();
    assert_eq!(
        value(&known.execute("return 'hello'").await.unwrap()),
        json!("hello")
    );
}

#[tokio::test]
async fn info_and_the_playground() {
    let broker = Broker::start(&[]);
    let info = http().get(broker.url("/v1/info")).send().await.unwrap();
    assert_eq!(info.headers()["content-type"], "application/json");
    let info: Value = json_of(&info.bytes().await.unwrap());
    assert_eq!(info["version"], 1);
    assert_eq!(info["fingerprint"], broker.fingerprint.to_string());
    assert_eq!(
        info["suites"],
        json!([
            "SUITE_X25519_ED25519_AES256GCM_SHA256",
            "SUITE_P256_ED25519_AES256GCM_SHA256"
        ])
    );
    assert_eq!(info["legacyApi"], false);

    let page = http().get(broker.url("/")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'self'")
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    let page = page.text().await.unwrap();
    assert!(
        page.contains(&broker.fingerprint.to_string()),
        "the page carries the broker's pin"
    );
    assert!(!page.contains("{{FINGERPRINT}}"));

    let script = http().get(broker.url("/app.js")).send().await.unwrap();
    assert_eq!(script.status().as_u16(), 200);
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(script.headers()["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn a_long_stream_arrives_complete_and_in_order() {
    let broker = Broker::start(&[]);
    let mut client = V1::connect(&broker, Suite::X25519Ed25519Aes256gcmSha256).await;
    let events = client
        .stream("for (let i = 0; i < 2000; i++) console.log('line ' + i); return 'done'")
        .await
        .unwrap();
    assert_eq!(events.len(), 2001);
    for (i, event) in events[..2000].iter().enumerate() {
        assert!(matches!(&event.event, Some(Event::Console(c)) if c.text == format!("line {i}")));
    }
}

/// A client that drops its stream mid-job stops the job: with one job allowed per
/// session, the session can run another one at once, long before the first job's
/// 30-second time limit.
#[tokio::test]
async fn a_client_that_goes_away_cancels_its_stream() {
    let broker = Broker::start(&["--max-jobs-per-session", "1"]);
    let mut client = V1::connect(&broker, Suite::X25519Ed25519Aes256gcmSha256).await;
    let spin = Job {
        code: "while (true) {}".into(),
        level: SecurityLevel::Standard as i32,
        ..Default::default()
    };
    let record = client.seal(RecordKind::StreamRequest, spin);
    let http = http();
    let response = http
        .post(broker.url("/v1/execute/stream"))
        .body(serde_json::to_string(&record).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let busy = client.execute("return 1").await.unwrap_err();
    assert_eq!(
        (busy.status, busy.code()),
        (429, "RESOURCE_EXHAUSTED"),
        "{busy:?}"
    );

    drop(response);
    drop(http);
    let gone = Instant::now();
    loop {
        match client.execute("return 1").await {
            Ok(result) => {
                assert_eq!(value(&result), json!(1));
                break;
            }
            Err(e) if e.status == 429 && gone.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!(
                "the abandoned job still holds the session's slot after {:?}: {e:?}",
                gone.elapsed()
            ),
        }
    }
}

/// A `traceparent` header does for an HTTP job what it does in gRPC metadata: the job's
/// log line names the client's trace.
#[tokio::test]
async fn a_traceparent_header_names_the_jobs_trace() {
    let broker = Broker::start(&[]);
    let mut client = V1::connect(&broker, Suite::X25519Ed25519Aes256gcmSha256).await;
    let trace = "5b8efff798038103d269b633813fc60c";
    for path in ["/v1/execute", "/v1/execute/stream"] {
        let kind = if path.ends_with("stream") {
            RecordKind::StreamRequest
        } else {
            RecordKind::ExecuteRequest
        };
        let record = client.seal(kind, job("return 1"));
        let (status, _) = post(
            &broker.url(path),
            &serde_json::to_string(&record).unwrap(),
            &[("traceparent", &format!("00-{trace}-eee19b7ec3c1b174-01"))],
        )
        .await;
        assert_eq!(status, 200, "{path}");
    }
    broker.jobs_finished(2).await;
    let log = broker.log();
    let named = log
        .lines()
        .filter(|l| l.contains("job finished") && l.contains(&format!("trace_id={trace}")))
        .count();
    assert_eq!(named, 2, "{log}");
}

/// Client-provided tools the way a browser uses them: the stream over one request, each
/// answer a `POST /v1/tool-result` of its own while the stream is open.
#[tokio::test]
async fn client_tools_over_http() {
    let broker = Broker::start(&[]);
    let mut client = V1::connect(&broker, Suite::X25519Ed25519Aes256gcmSha256).await;
    let tools = vec![ToolInfo {
        name: "page:title".into(),
        description: "The title of the page the user is on.".into(),
        input_schema_json: r#"{"type":"object","properties":{"upper":{"type":"boolean"}}}"#.into(),
    }];
    let (events, seq) = client
        .stream_with_tools(
            job(
                r#"
                const [a, b] = await Promise.all([callTool('page:title', {}), callTool('page:title', {upper: true})]);
                let bad; try { await callTool('page:title', {upper: 'yes'}); } catch (e) { bad = e.message; }
                return {a, b, bad, listed: (await listTools()).map(t => t.name)};
                "#,
            ),
            tools,
            |call| {
                let args: Value = serde_json::from_str(&call.args_json).unwrap();
                let title = if args["upper"] == json!(true) { "\"HOME\"" } else { "\"Home\"" };
                tool_result::Outcome::ResultJson(title.into())
            },
        )
        .await;
    let Some(Event::Final(final_event)) = &events.last().unwrap().event else {
        panic!("{events:?}")
    };
    let Some(final_event::Outcome::ResultJson(result)) = &final_event.outcome else {
        panic!("{final_event:?}")
    };
    let result: Value = serde_json::from_str(result).unwrap();
    assert_eq!(result["a"], "Home");
    assert_eq!(result["b"], "HOME");
    assert!(
        result["bad"]
            .as_str()
            .unwrap()
            .contains("arguments do not match the tool's schema at /upper"),
        "{result}"
    );
    assert_eq!(result["listed"], json!(["echo", "page:title"]));
    // Only the calls that passed the schema were the client's to answer.
    let marked = events
        .iter()
        .filter(|e| matches!(&e.event, Some(Event::ToolCall(c)) if c.client_answers))
        .count();
    assert_eq!(marked, 2);
    // The job is over: an answer for it has nowhere to go.
    let err = client
        .submit_tool_result(seq, 1, tool_result::Outcome::ResultJson("1".into()))
        .await
        .unwrap_err();
    assert_eq!((err.status, err.code()), (404, "NOT_FOUND"), "{err:?}");
}
