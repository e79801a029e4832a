//! Secrets reach the HTTP service the script calls, and nothing else: not the
//! executor, not an event, not the result, not the broker's log.

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use enclave_proto::v1::{Suite, stream_event};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

const SECRET: &str = "s3cr3t-value-6f1d2c";

/// A one-route HTTP server that records the Authorization header it receives and
/// echoes it back in its JSON body.
async fn http_server() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let auth = request
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("authorization: ")
                            .or_else(|| l.strip_prefix("Authorization: "))
                    })
                    .unwrap_or("")
                    .to_string();
                record.lock().unwrap().push(auth.clone());
                let body = serde_json::json!({"you_sent": auth}).to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (port, seen)
}

#[tokio::test]
async fn a_secret_is_used_but_never_seen() {
    let (port, seen) = http_server().await;
    let config = temp_path("broker.toml");
    std::fs::write(
        &config,
        format!(
            "[tools.\"secrets:get\"]\nenv = [\"API_KEY\"]\n\n[tools.\"secrets:get\".secrets.api_key]\nhosts = [\"127.0.0.1:{port}\"]\ninject = {{ header = \"Authorization\", format = \"Bearer {{}}\" }}\n\n[tools.\"http:fetch\"]\nallow_hosts = [\"127.0.0.1:{port}\"]\nallow_private_ips = true\n"
        ),
    )
    .unwrap();
    let broker = Broker::start_with_env(
        &["--config", config.to_str().unwrap()],
        &[("API_KEY", SECRET)],
    );
    let mut raw = Raw::connect(&broker, Suite::X25519Ed25519Aes256gcmSha256).await;
    // The client knows the value; a script that held it (here: in its code) still
    // cannot get it out, raw or base64-encoded, through any event or the log.
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("user:{SECRET}"));
    let code = format!(
        "const key = await callTool('secrets:get', {{key: 'api_key'}});
         console.log('the key is', key);
         const res = await callTool('http:post', {{url: 'http://127.0.0.1:{port}/data', headers: {{Authorization: 'Bearer ' + key}}, body: {{x: 1}}}});
         console.log('response', res.body);
         await callTool('echo', {{leak: '{SECRET}', b64: '{b64}'}});
         try {{ await callTool('{SECRET}', {{}}); }} catch (e) {{ console.log(e.message); }}
         console.log('{b64}');
         return {{key, res}};"
    );
    let (events, _) = raw.stream(&code).await.unwrap();

    // The service really received the secret.
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [format!("Bearer {SECRET}")]
    );
    // The script ran to its end...
    let last = events.last().unwrap();
    assert!(
        matches!(last.event, Some(stream_event::Event::Final(_))),
        "{last:?}"
    );
    // ...and nothing the client received contains the value, in any form.
    let core = &b64[8..b64.len() - 4];
    for event in &events {
        let bytes = event.encode_to_vec();
        let text = format!("{event:?}");
        for form in [SECRET, core] {
            assert!(!text.contains(form), "`{form}` leaked in {text}");
            assert!(
                !bytes.windows(form.len()).any(|w| w == form.as_bytes()),
                "`{form}` leaked in {text}"
            );
        }
    }
    // The tool call shows the handle the script had, not the value.
    let tool_calls: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(stream_event::Event::ToolCall(c)) => Some(c.args_json.clone()),
            _ => None,
        })
        .collect();
    assert!(
        tool_calls
            .iter()
            .any(|a| a.contains("Bearer enclave-secret:")),
        "{tool_calls:?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(&e.event, Some(stream_event::Event::ToolCall(c)) if c.name.starts_with("enclave-secret:")))
            .count(),
        1,
        "the value as a tool name became its handle"
    );
    // Nor does the broker's log, at debug level, up to the job's last line.
    let log = broker.log_with("job finished").await;
    assert!(log.contains("tool call"), "{log}");
    assert!(
        !log.contains(SECRET) && !log.contains(core),
        "secret in the broker log"
    );
}
