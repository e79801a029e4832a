//! `http:fetch`: the allow-list, the response cap, the deadline, and request shaping.

use std::time::{Duration, Instant};

use enclave_broker::Tools;
use enclave_broker::config::{HttpFetchConfig, ToolsConfig};
use serde_json::json;

use crate::support::*;

/// `http:fetch` allowed to reach these servers (on 127.0.0.1, hence the opt-in).
fn http_tools(allow: &[&HttpServer], max_response_bytes: u64, timeout_ms: u64) -> Tools {
    let hosts: Vec<String> = allow.iter().map(|s| s.host()).collect();
    tools_for(&hosts, true, max_response_bytes, timeout_ms)
}

fn tools_for(
    hosts: &[String],
    allow_private_ips: bool,
    max_response_bytes: u64,
    timeout_ms: u64,
) -> Tools {
    let config = ToolsConfig {
        http_fetch: Some(HttpFetchConfig {
            enabled: true,
            allow_hosts: hosts.to_vec(),
            allow_private_ips,
            timeout_ms,
            max_response_bytes,
            max_redirects: 2,
        }),
        ..ToolsConfig::default()
    };
    Tools::from_config(&config).unwrap()
}

/// Runs `call` (a `callTool` expression) and returns the error message, or "ok".
fn catching(call: &str) -> String {
    format!("try {{ await {call}; return 'ok'; }} catch (e) {{ return e.message; }}")
}

async fn message(broker: &enclave_broker::Broker, call: &str) -> String {
    run_code(broker, &catching(call))
        .await
        .result()
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn only_allowed_hosts_are_reached() {
    let allowed = HttpServer::echo().await;
    let refused = HttpServer::echo().await;
    let broker = broker(http_tools(&[&allowed], 1 << 20, 5_000)).await;
    let msg = message(
        &broker,
        &format!(
            "callTool('http:get', {{url: 'http://{}/x'}})",
            refused.host()
        ),
    )
    .await;
    assert!(
        msg.contains(&format!(
            "host `{}` is not in the allow-list",
            refused.host()
        )),
        "{msg}"
    );
    // Same IP, other port; other spelling of an allowed host; other schemes.
    for url in [
        format!("http://localhost:{}/", allowed.addr.port()),
        format!("https://{}/", allowed.host()),
        "file:///etc/passwd".to_string(),
        format!("ftp://{}/", allowed.host()),
    ] {
        let msg = message(&broker, &format!("callTool('http:get', {{url: '{url}'}})")).await;
        assert_ne!(msg, "ok", "{url}");
    }
    assert!(refused.requests().is_empty());
    // The allowed one works, and a redirect to a refused host is not followed.
    let ok = message(
        &broker,
        &format!(
            "callTool('http:get', {{url: 'http://{}/'}})",
            allowed.host()
        ),
    )
    .await;
    assert_eq!(ok, "ok");
    let target = format!("http://{}/stolen", refused.host());
    let bouncer = HttpServer::start(move |_| Response::redirect(&target)).await;
    let broker = crate::support::broker(http_tools(&[&bouncer], 1 << 20, 5_000)).await;
    let msg = message(
        &broker,
        &format!(
            "callTool('http:get', {{url: 'http://{}/'}})",
            bouncer.host()
        ),
    )
    .await;
    assert!(
        msg.contains("redirect refused") && msg.contains("not in the allow-list"),
        "{msg}"
    );
    assert!(refused.requests().is_empty());
}

#[tokio::test]
async fn responses_over_the_cap_are_refused() {
    let server = HttpServer::start(|r| {
        let size = r.target.trim_start_matches("/").parse().unwrap_or(0);
        let mut response = Response::text(200, &"a".repeat(size));
        response.chunked_by_close = r.headers.contains_key("x-no-length");
        response
    })
    .await;
    let broker = broker(http_tools(&[&server], 1000, 5_000)).await;
    let h = server.host();
    let run = run_code(
        &broker,
        &format!("return (await callTool('http:get', {{url: 'http://{h}/1000'}})).body.length"),
    )
    .await;
    assert_eq!(run.result(), json!(1000));
    // Announced by Content-Length, and found while reading a body of unknown length.
    for headers in ["{}", "{'X-No-Length': '1'}"] {
        let msg = message(
            &broker,
            &format!("callTool('http:get', {{url: 'http://{h}/1001', headers: {headers}}})"),
        )
        .await;
        assert_eq!(
            msg, "tool http:get failed: the response body is larger than the 1000-byte limit",
            "{headers}"
        );
    }
}

#[tokio::test]
async fn a_slow_host_is_cut_off_at_the_tool_deadline() {
    let server = HttpServer::start(|_| Response {
        delay: Duration::from_secs(5),
        ..Response::text(200, "late")
    })
    .await;
    let broker = broker(http_tools(&[&server], 1 << 20, 300)).await;
    let started = Instant::now();
    let msg = message(
        &broker,
        &format!(
            "callTool('http:fetch', {{url: 'http://{}/'}})",
            server.host()
        ),
    )
    .await;
    assert_eq!(msg, "tool http:fetch failed: no answer within 300 ms");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn requests_and_responses_have_the_documented_shape() {
    let server = HttpServer::start(|r| match r.target.as_str() {
        "/text" => Response::text(404, "not here"),
        "/bad-json" => Response { headers: vec![("content-type".into(), "application/json".into())], ..Response::text(200, "{oops") },
        _ => Response::json(json!({"method": r.method, "body": String::from_utf8_lossy(&r.body), "ct": r.headers.get("content-type")})),
    })
    .await;
    let broker = broker(http_tools(&[&server], 1 << 20, 5_000)).await;
    let h = server.host();
    let code = format!(
        r#"
        const get = await callTool('http:fetch', {{url: 'http://{h}/json'}});
        const put = await callTool('http:fetch', {{url: 'http://{h}/json', method: 'put', body: 'raw text'}});
        const post = await callTool('http:post', {{url: 'http://{h}/json', body: [1, {{a: 2}}]}});
        const text = await callTool('http:get', {{url: 'http://{h}/text'}});
        const bad = await callTool('http:get', {{url: 'http://{h}/bad-json'}});
        return {{get: get.body, put: put.body, post: post.body, text: [text.status, text.body, text.headers['content-type']], bad: bad.body}};
        "#
    );
    let result = run_code(&broker, &code).await.result();
    assert_eq!(
        result["get"],
        json!({"method": "GET", "body": "", "ct": null})
    );
    assert_eq!(
        result["put"],
        json!({"method": "PUT", "body": "raw text", "ct": null})
    );
    assert_eq!(
        result["post"],
        json!({"method": "POST", "body": "[1,{\"a\":2}]", "ct": "application/json"})
    );
    assert_eq!(result["text"], json!([404, "not here", "text/plain"]));
    assert_eq!(result["bad"], json!("{oops"));
}

#[tokio::test]
async fn malformed_requests_are_refused_before_sending() {
    let server = HttpServer::echo().await;
    let broker = broker(http_tools(&[&server], 1 << 20, 5_000)).await;
    let h = server.host();
    for (call, expected) in [
        (
            format!("callTool('http:get', {{url: 'http://{h}/', method: 'POST'}})"),
            "only sends GET",
        ),
        (
            format!("callTool('http:fetch', {{url: 'http://{h}/', method: 'TRACE'}})"),
            "is not one of",
        ),
        (
            format!("callTool('http:fetch', {{url: 'http://{h}/', body: 'x'}})"),
            "cannot have a body",
        ),
        (
            format!(
                "callTool('http:post', {{url: 'http://{h}/', headers: {{Host: 'evil.example'}}}})"
            ),
            "`host` is set by the broker",
        ),
        (
            format!(
                "callTool('http:post', {{url: 'http://{h}/', headers: {{'Transfer-Encoding': 'chunked'}}}})"
            ),
            "set by the broker",
        ),
        (
            format!(
                "callTool('http:post', {{url: 'http://{h}/', headers: {{'X-A': 'a\\r\\nX-B: b'}}}})"
            ),
            "not allowed in HTTP",
        ),
        (
            format!("callTool('http:post', {{url: 'http://{h}/', headers: {{'X-A': 1}}}})"),
            "arguments do not match the tool's schema at /headers/X-A: 1 is not of type \"string\"",
        ),
        (
            "callTool('http:post', {url: '/relative'})".to_string(),
            "not an absolute URL",
        ),
        (
            format!("callTool('http:post', {{url: 'http://{h}/', verb: 'GET'}})"),
            "arguments do not match the tool's schema: Additional properties are not allowed ('verb' was unexpected)",
        ),
    ] {
        let msg = message(&broker, &call).await;
        assert!(msg.contains(expected), "{call}: {msg}");
    }
    assert!(server.requests().is_empty(), "{:?}", server.requests());
}

#[tokio::test]
async fn http_is_off_unless_configured() {
    let broker = broker(Tools::from_config(&ToolsConfig::default()).unwrap()).await;
    let msg = message(
        &broker,
        "callTool('http:get', {url: 'http://127.0.0.1:1/'})",
    )
    .await;
    assert!(msg.contains("unknown tool `http:get`"), "{msg}");
}

#[tokio::test]
async fn private_addresses_are_refused_without_the_opt_in() {
    let server = HttpServer::echo().await;
    let port = server.addr.port();
    // Built in code, so not refused at start-up as a config file would be: the check
    // when sending is what this tests.
    let hosts: Vec<String> = [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
        "169.254.169.254".to_string(),
        "10.0.0.1:8080".to_string(),
    ]
    .into();
    let broker = broker(tools_for(&hosts, false, 1 << 20, 5_000)).await;
    let refused = |what: &str, addr: &str, kind: &str| {
        format!(
            "tool http:get failed: {what} {addr}, a {kind} address; http:fetch reaches only public addresses unless the broker's config sets `allow_private_ips = true`"
        )
    };
    for (url, expected) in [
        (
            format!("http://127.0.0.1:{port}/"),
            refused("the URL names", "127.0.0.1", "loopback"),
        ),
        // Another spelling of the same address (the URL parser normalises it).
        (
            format!("http://2130706433:{port}/"),
            refused("the URL names", "127.0.0.1", "loopback"),
        ),
        (
            format!("http://[::1]:{port}/"),
            refused("the URL names", "::1", "loopback"),
        ),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/"),
            refused("the URL names", "::ffff:127.0.0.1", "loopback"),
        ),
        (
            "http://169.254.169.254/latest/meta-data/".to_string(),
            refused(
                "the URL names",
                "169.254.169.254",
                "link-local (cloud metadata services answer there)",
            ),
        ),
        (
            "http://10.0.0.1:8080/".to_string(),
            refused("the URL names", "10.0.0.1", "private"),
        ),
    ] {
        let msg = message(&broker, &format!("callTool('http:get', {{url: '{url}'}})")).await;
        assert_eq!(msg, expected, "{url}");
    }
    // A name that resolves to loopback: refused by the resolver, before connecting.
    let msg = message(
        &broker,
        &format!("callTool('http:get', {{url: 'http://localhost:{port}/'}})"),
    )
    .await;
    let resolved =
        ["127.0.0.1", "::1"].map(|addr| refused("`localhost` resolves to", addr, "loopback"));
    assert!(resolved.contains(&msg), "{msg}");
    assert!(server.requests().is_empty(), "{:?}", server.requests());

    // With the opt-in, the same names reach the server.
    let broker = crate::support::broker(tools_for(&hosts, true, 1 << 20, 5_000)).await;
    for host in ["127.0.0.1", "localhost"] {
        let msg = message(
            &broker,
            &format!("callTool('http:get', {{url: 'http://{host}:{port}/'}})"),
        )
        .await;
        assert_eq!(msg, "ok", "{host}");
    }
    assert_eq!(server.requests().len(), 2);
}
