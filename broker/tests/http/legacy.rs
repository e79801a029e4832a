//! The legacy API: the seed's wire format, plus the refusals this broker adds.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use enclave_proto::v1::Suite;
use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn execute_answers_an_enclave_vm_result() {
    let broker = Broker::start(&["--legacy-api"]);
    let client = Legacy::connect(&broker).await;
    let result = client
        .execute("console.log('hello', 1); const r = await callTool('echo', {n: 41}); return {n: r.n + 1}")
        .await
        .unwrap();
    assert_eq!(result["success"], true, "{result}");
    assert_eq!(result["value"], json!({"n": 42}));
    assert_eq!(result["error"], Value::Null);
    assert_eq!(result["stats"]["toolCallCount"], 1);
    assert!(result["stats"]["durationMs"].as_f64().unwrap() > 0.0);
    assert_eq!(
        result["console"],
        json!([{"level": "log", "text": "hello 1"}])
    );

    let thrown = client.execute("const a = 1;\nnull.x;").await.unwrap();
    assert_eq!(thrown["success"], false);
    assert_eq!(thrown["value"], Value::Null);
    assert_eq!(thrown["error"]["name"], "TypeError", "{thrown}");
    assert_eq!(thrown["error"]["code"], "SCRIPT_ERROR");
    assert_eq!(thrown["error"]["line"], 2);
    assert!(!thrown["error"]["message"].as_str().unwrap().is_empty());

    let syntax = client.execute("return (").await.unwrap();
    assert_eq!(syntax["error"]["code"], "SYNTAX_ERROR", "{syntax}");
}

#[tokio::test]
async fn stream_events_are_the_seeds() {
    let broker = Broker::start(&["--legacy-api"]);
    let client = Legacy::connect(&broker).await;
    let events = client
        .stream("console.log('one'); const r = await callTool('echo', {x: 'y'}); console.warn('two'); return r")
        .await
        .unwrap();
    assert_eq!(events.len(), 5, "{events:?}");
    assert_eq!(
        events[0],
        json!({"type": "stdout", "data": "one", "level": "log"})
    );
    assert_eq!(
        (&events[1]["type"], &events[1]["tool"], &events[1]["args"]),
        (&json!("tool_call"), &json!("echo"), &json!({"x": "y"}))
    );
    assert_eq!(
        (&events[2]["type"], &events[2]["tool"]),
        (&json!("tool_result"), &json!("echo"))
    );
    assert!(
        events[2].get("result").is_none(),
        "tool results are never shown to the caller"
    );
    assert_eq!(
        events[3],
        json!({"type": "stdout", "data": "two", "level": "warn"})
    );
    assert_eq!(events[4]["type"], "final");
    assert_eq!(events[4]["result"]["success"], true);
    assert_eq!(events[4]["result"]["value"], json!({"x": "y"}));
}

#[tokio::test]
async fn an_unknown_session_is_401() {
    let broker = Broker::start(&["--legacy-api"]);
    let client = Legacy::connect(&broker).await;
    let body = client.encrypt("return 1").to_string();
    for path in ["/execute", "/execute/stream"] {
        for id in [
            Some("6f1c2c0e-8a43-4c55-9f6c-3a1d2b4e5f60"),
            Some("not-a-uuid"),
            None,
        ] {
            let headers: Vec<(&str, &str)> =
                id.map(|id| ("x-session-id", id)).into_iter().collect();
            let (status, answer) = post(&broker.url(path), &body, &headers).await;
            assert_eq!(
                (status, json_of(&answer)),
                (401, json!({"error": "Invalid session"})),
                "{path} {id:?}"
            );
        }
    }
    // The real session still works with that very body.
    let (status, _) = client
        .send("/execute", &serde_json::from_str(&body).unwrap())
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_replayed_request_is_refused_and_does_not_run() {
    let broker = Broker::start(&["--legacy-api"]);
    let client = Legacy::connect(&broker).await;
    let request = client.encrypt("return 1");
    let (status, _) = client.send("/execute", &request).await;
    assert_eq!(status, 200);
    assert_eq!(broker.jobs_finished(1).await, 1);
    for path in ["/execute", "/execute/stream"] {
        let (status, body) = client.send(path, &request).await;
        let body = json_of(&body);
        assert_eq!(status, 409, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("Repeated IV"),
            "{body}"
        );
    }
    // A new IV is a new request.
    assert_eq!(client.execute("return 2").await.unwrap()["value"], 2);
    assert_eq!(
        broker.jobs_finished(2).await,
        2,
        "only the two genuine requests ran:\n{}",
        broker.log()
    );
}

#[tokio::test]
async fn tampered_requests_are_refused() {
    let broker = Broker::start(&["--legacy-api"]);
    let client = Legacy::connect(&broker).await;
    let request = client.encrypt("return 1");
    let mut ciphertext = B64.decode(request["ciphertext"].as_str().unwrap()).unwrap();
    ciphertext[0] ^= 1;
    let mut tampered = request.clone();
    tampered["ciphertext"] = json!(B64.encode(&ciphertext));
    let (status, body) = client.send("/execute", &tampered).await;
    assert_eq!(status, 400);
    assert!(
        json_of(&body)["error"]
            .as_str()
            .unwrap()
            .contains("Decryption failed")
    );

    let mut other_iv = request.clone();
    other_iv["iv"] = json!(B64.encode([1u8; 12]));
    assert_eq!(client.send("/execute/stream", &other_iv).await.0, 400);

    let mut short_iv = request.clone();
    short_iv["iv"] = json!(B64.encode([1u8; 8]));
    assert_eq!(client.send("/execute", &short_iv).await.0, 400);

    let mut plain = request.clone();
    plain["encrypted"] = json!(false);
    assert_eq!(client.send("/execute", &plain).await.0, 400);

    // Failed attempts burn nothing: the genuine request still runs.
    let (status, body) = client.send("/execute", &request).await;
    assert_eq!(status, 200);
    assert_eq!(client.decrypt(&json_of(&body))["value"], 1);
    assert_eq!(broker.jobs_finished(1).await, 1);
}

#[tokio::test]
async fn bad_client_keys_are_refused() {
    let broker = Broker::start(&["--legacy-api"]);
    let handshake = broker.url("/handshake");
    // A valid SPKI prefix for P-256 with a point that is not on the curve.
    let mut off_curve = hex("3059301306072a8648ce3d020106082a8648ce3d030107034200");
    off_curve.push(4);
    off_curve.extend_from_slice(&[1u8; 64]);
    for key in [
        B64.encode(&off_curve),
        B64.encode([0u8; 91]),
        "%%%".to_owned(),
        String::new(),
    ] {
        let (status, body) = post(
            &handshake,
            &json!({"type": "ClientHello", "publicKey": key}).to_string(),
            &[],
        )
        .await;
        assert_eq!(status, 400, "{key}: {}", String::from_utf8_lossy(&body));
        assert!(json_of(&body)["error"].is_string());
    }
    let (status, _) = post(&handshake, r#"{"type":"ServerHello","publicKey":""}"#, &[]).await;
    assert_eq!(status, 400);
    assert_eq!(post(&handshake, "nonsense", &[]).await.0, 400);
}

#[tokio::test]
async fn every_handshake_gets_a_fresh_server_key() {
    let broker = Broker::start(&["--legacy-api"]);
    let a = Legacy::connect(&broker).await;
    let b = Legacy::connect(&broker).await;
    assert_ne!(a.session_id, b.session_id);
    // Sessions are separate keys: one session's request is garbage to the other.
    let request = a.encrypt("return 1");
    assert_eq!(b.send("/execute", &request).await.0, 400);
    assert_eq!(a.execute("return 7").await.unwrap()["value"], 7);
}

#[tokio::test]
async fn the_legacy_api_is_off_unless_asked_for() {
    for args in [&[][..], &["--legacy-api=false"][..]] {
        let broker = Broker::start(args);
        for path in ["/handshake", "/execute", "/execute/stream"] {
            let (status, _) = post(&broker.url(path), "{}", &[]).await;
            assert_eq!(status, 404, "{args:?} {path}");
        }
        let info = json_of(
            &http()
                .get(broker.url("/v1/info"))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap(),
        );
        assert_eq!(info["legacyApi"], false);
        assert!(
            !broker.log().contains("legacy API is on"),
            "{}",
            broker.log()
        );
        // Protocol v1 is unaffected.
        let mut client = V1::connect(&broker, Suite::X25519Ed25519Aes256gcmSha256).await;
        assert_eq!(value(&client.execute("return 1").await.unwrap()), json!(1));
    }
    // Turned on, the broker says at start-up what it is turning on.
    let broker = Broker::start(&["--legacy-api"]);
    let log = broker.log();
    let warning = log
        .lines()
        .find(|l| l.contains("legacy API is on"))
        .unwrap_or_else(|| panic!("no start-up warning:\n{log}"));
    for weakness in [
        "no server authentication",
        "no key derivation",
        "no associated data",
        "no sequence numbers",
    ] {
        assert!(warning.contains(weakness), "{warning}");
    }
}

#[tokio::test]
async fn refused_requests_leave_no_iv_behind_and_all_sessions_share_one_iv_budget() {
    let broker = Broker::start(&[
        "--legacy-api",
        "--max-jobs-per-session",
        "1",
        "--max-legacy-ivs",
        "3",
    ]);
    let client = Legacy::connect(&broker).await;
    // A request refused for the job cap (the session's one slot is busy) ...
    let busy = client.encrypt("const t = Date.now(); while (Date.now() - t < 800) {} return 1");
    let running = {
        let (client_base, session) = (client.base.clone(), client.session_id.clone());
        tokio::spawn(async move {
            post(
                &format!("{client_base}/execute"),
                &busy.to_string(),
                &[("x-session-id", &session)],
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = client.encrypt("return 2");
    assert_eq!(client.send("/execute", &refused).await.0, 429);
    assert_eq!(running.await.unwrap().0, 200);
    // ... did not burn its IV: sent again, it runs.
    let (status, body) = client.send("/execute", &refused).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(client.decrypt(&json_of(&body))["value"], 2);
    // Two IVs remembered; one more across another session, then the broker is full.
    let other = Legacy::connect(&broker).await;
    assert_eq!(other.execute("return 3").await.unwrap()["value"], 3);
    let (status, body) = other.execute("return 4").await.unwrap_err();
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("legacy request IVs"),
        "{body}"
    );
}

/// As for protocol v1: a stream whose client goes away stops its job and frees the
/// session's only job slot well before the STRICT 5-second time limit.
#[tokio::test]
async fn a_legacy_client_that_goes_away_cancels_its_stream() {
    let broker = Broker::start(&["--legacy-api", "--max-jobs-per-session", "1"]);
    let client = Legacy::connect(&broker).await;
    let http = http();
    let response = http
        .post(broker.url("/execute/stream"))
        .header("x-session-id", &client.session_id)
        .body(client.encrypt("while (true) {}").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let (status, _) = client.execute("return 1").await.unwrap_err();
    assert_eq!(status, 429);
    drop(response);
    drop(http);
    let gone = Instant::now();
    loop {
        match client.execute("return 1").await {
            Ok(result) => {
                assert_eq!(result["value"], 1);
                break;
            }
            Err((429, _)) if gone.elapsed() < Duration::from_secs(3) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!(
                "the abandoned job still holds the slot after {:?}: {e:?}",
                gone.elapsed()
            ),
        }
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
