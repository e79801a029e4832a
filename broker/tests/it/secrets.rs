//! Secrets: scripts get handles, each secret's value goes only where its binding says,
//! and nothing that leaves the broker carries a value in any common encoding.

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use enclave_broker::config::Config;
use enclave_broker::secrets::HANDLE_PREFIX;
use enclave_broker::tools::{ToolJob, ToolSpec};
use enclave_broker::{Broker, Tools};
use serde_json::json;

use crate::support::*;

/// `api_key`: only as `Authorization: Bearer {}`. Characters that URL-encoding, JSON and
/// header handling each treat specially.
const VALUE: &str = "sk-live-Abc/123&x=y+z";
const VALUE_URL: &str = "sk%2Dlive%2DAbc%2F123%26x%3Dy%2Bz";
/// `query_key`: only as the query parameter `key`.
const QUERY_VALUE: &str = "qk-Zyx/987&a=b+c";
const QUERY_VALUE_URL: &str = "qk%2DZyx%2F987%26a%3Db%2Bc";
/// `free_key`: anywhere but the user info (the opt-in).
const FREE_VALUE: &str = "fk-free/42&m=n+o";
const FREE_VALUE_URL: &str = "fk%2Dfree%2F42%26m%3Dn%2Bo";
const UNLISTED: &str = "never-readable-9f8e7d";
const ALL_VALUES: [&str; 4] = [VALUE, QUERY_VALUE, FREE_VALUE, UNLISTED];

/// Tools from a real config file: a secrets file next to it and an env secret; the
/// three bound secrets bound to `bound` (a host never contacted when `None`), `http:fetch`
/// allowed to reach `bound` and `others`, private addresses allowed (the servers are on
/// 127.0.0.1).
fn tools(name: &str, bound: Option<&HttpServer>, others: &[&HttpServer]) -> Tools {
    let dir = temp_dir(name);
    std::fs::write(
        dir.join("secrets.toml"),
        format!(
            "api_key = \"{VALUE}\"\nquery_key = \"{QUERY_VALUE}\"\nfree_key = \"{FREE_VALUE}\"\nunlisted = \"{UNLISTED}\"\n"
        ),
    )
    .unwrap();
    let bound = bound.map_or("api.example.com".to_string(), |s| s.host());
    let mut allow = vec![format!("\"{bound}\"")];
    allow.extend(others.iter().map(|h| format!("\"{}\"", h.host())));
    let config = format!(
        r#"
        [tools."secrets:get"]
        file = "secrets.toml"
        env = ["CARGO_PKG_NAME"]
        names = ["cargo_pkg_name"]

        [tools."secrets:get".secrets.api_key]
        hosts = ["{bound}"]
        inject = {{ header = "Authorization", format = "Bearer {{}}" }}

        [tools."secrets:get".secrets.query_key]
        hosts = ["{bound}"]
        inject = {{ query = "key" }}

        [tools."secrets:get".secrets.free_key]
        hosts = ["{bound}"]
        inject = "anywhere"

        [tools."http:fetch"]
        allow_hosts = [{}]
        allow_private_ips = true
        "#,
        allow.join(", ")
    );
    std::fs::write(dir.join("broker.toml"), config).unwrap();
    let config = Config::load(&dir.join("broker.toml")).unwrap();
    Tools::from_config(&config.tools).unwrap()
}

async fn secret_broker(name: &str, bound: Option<&HttpServer>, others: &[&HttpServer]) -> Broker {
    broker(tools(name, bound, others)).await
}

/// Defines `mirror(x)`: `x` as JSON, reversed. The script returns what it saw in a form
/// the broker's output scrubbing cannot recognise, so a test sees what the script saw.
const MIRROR: &str = "const mirror = x => JSON.stringify(x).split('').reverse().join('');";

/// What the script saw, from what `mirror` returned.
fn unmirror(mirrored: &serde_json::Value) -> String {
    mirrored.as_str().unwrap().chars().rev().collect()
}

/// The forms of `value` that every check looks for: as it is, percent-encoded, and in
/// base64 and base64url (the middle of the encoding, which does not depend on what
/// surrounds the value).
fn forms(value: &str) -> Vec<String> {
    let mut forms = vec![
        value.to_string(),
        percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC)
            .to_string(),
        serde_json::to_string(value).unwrap().replace('/', "\\/"),
    ];
    for engine in [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::URL_SAFE,
    ] {
        let encoded = engine.encode(value);
        forms.push(encoded[..encoded.len() - 4].to_string());
    }
    forms
}

/// The script never saw a value: `mirrored` is what `mirror` returned.
fn assert_script_never_saw(mirrored: &serde_json::Value) {
    let seen = unmirror(mirrored);
    assert!(seen.len() > 20, "{seen}");
    for form in ALL_VALUES.iter().flat_map(|v| forms(v)) {
        assert!(!seen.contains(&form), "the script saw `{form}`: {seen}");
    }
}

/// Nothing the caller saw contains a value, in any of the forms.
fn assert_no_value(run: &Run) {
    let everything = format!("{run:?}");
    for form in ALL_VALUES.iter().flat_map(|v| forms(v)) {
        assert!(
            !everything.contains(&form),
            "`{form}` leaked into: {everything}"
        );
    }
}

/// The script's messages with `key`'s handle written as `{key}`.
fn messages(run: &Run, key: &str) -> Vec<String> {
    let result = run.result();
    let handle = result[key].as_str().unwrap().to_string();
    assert!(handle.starts_with(HANDLE_PREFIX), "{result}");
    result["out"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().replace(&handle, "{key}"))
        .collect()
}

/// Each of `calls` (callTool expressions using `key`), caught: "sent" or the error.
fn each_caught(secret: &str, calls: &[String]) -> String {
    let calls: Vec<String> = calls
        .iter()
        .map(|c| {
            format!("try {{ await {c}; out.push('sent'); }} catch (e) {{ out.push(e.message); }}")
        })
        .collect();
    format!(
        "const key = await callTool('secrets:get', {{key: '{secret}'}}); const out = [];\n{}\nreturn {{key, out}};",
        calls.join("\n")
    )
}

#[tokio::test]
async fn a_header_bound_secret_reaches_its_host_as_that_header_only() {
    let server = HttpServer::echo().await;
    let broker = secret_broker("header", Some(&server), &[]).await;
    let code = format!(
        r#"
        const key = await callTool('secrets:get', {{key: 'api_key'}});
        console.log('got', key);
        const echoed = await callTool('echo', {{key}});
        // As the format with the handle in it, and as the handle alone.
        const r1 = await callTool('http:post', {{
            url: 'http://{host}/submit?x=1',
            headers: {{Authorization: 'Bearer ' + key, 'X-Plain': 'visible'}},
            body: {{a: 1}},
        }});
        const r2 = await callTool('http:get', {{url: 'http://{host}/two', headers: {{authorization: key}}}});
        console.log(JSON.stringify(r1));
        {MIRROR}
        return {{key, echoed, r1, r2, mirrored: mirror([echoed, r1, r2])}};
        "#,
        host = server.host()
    );
    let run = run_code(&broker, &code).await;
    let result = run.result();
    let key = result["key"].as_str().unwrap().to_string();
    assert!(key.starts_with(HANDLE_PREFIX), "{key}");
    assert_script_never_saw(&result["mirrored"]);

    // The host received the value, in its header, formatted, both times.
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    for sent in &requests {
        assert_eq!(sent.headers["authorization"], format!("Bearer {VALUE}"));
    }
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].target, "/submit?x=1");
    assert_eq!(requests[0].headers["x-plain"], "visible");
    assert_eq!(requests[0].body, b"{\"a\":1}");

    // What came back was scrubbed: the echo shows the handle, not the value.
    assert_eq!(
        result["echoed"],
        json!({"key": key}),
        "echo does not reveal"
    );
    for r in [&result["r1"], &result["r2"]] {
        assert_eq!(r["status"], 200);
        assert_eq!(
            r["body"]["headers"]["authorization"],
            format!("Bearer {key}")
        );
    }

    // Events: the handle in the tool call's arguments and the console, never the value.
    assert!(run.tool_calls()[2].args_json.contains(&key));
    assert!(run.console()[0].text.contains(&key));
    assert_eq!(run.tool_results().len(), 4);
    assert!(run.tool_results().iter().all(|(_, error)| error.is_none()));
    assert_no_value(&run);
}

#[tokio::test]
async fn a_bound_secret_goes_nowhere_else() {
    let server = HttpServer::echo().await;
    let other = HttpServer::echo().await;
    let broker = secret_broker("nowhere", Some(&server), &[&other]).await;
    let (h, o) = (server.host(), other.host());
    let post = |url: &str, rest: &str| format!("callTool('http:post', {{url: `{url}`{rest}}})");
    let calls = [
        post(&format!("http://{h}/"), ", headers: {'X-Api-Key': key}"),
        post(
            &format!("http://{h}/"),
            ", headers: {Authorization: 'Token ' + key}",
        ),
        post(
            &format!("http://{h}/"),
            ", headers: {Authorization: 'Bearer ' + key + ' '}",
        ),
        post(&format!("http://{h}/?token=${{key}}"), ""),
        post(&format!("http://{h}/?key=${{key}}"), ""),
        post(&format!("http://{h}/p/${{key}}"), ""),
        post(&format!("http://{h}/#${{key}}"), ""),
        post(&format!("http://{h}/"), ", body: {token: key}"),
        post(&format!("http://{h}/"), ", body: 'token=' + key"),
        post(&format!("http://{h}/"), ", body: {[key]: 1}"),
        post(&format!("http://${{key}}@{h}/"), ""),
        post(&format!("http://user:${{key}}@{h}/"), ""),
        post(
            &format!("http://{o}/"),
            ", headers: {Authorization: 'Bearer ' + key}",
        ),
    ];
    let run = run_code(&broker, &each_caught("api_key", &calls)).await;
    let bound = format!("as the header `Authorization: Bearer {{}}` to `{h}`");
    let refused = |place: &str| {
        format!(
            "tool http:post failed: secret `api_key` may only be sent {bound}; here it is {place}"
        )
    };
    let userinfo = "tool http:post failed: secret `api_key` may not go in the URL's user info: it would be sent base64-encoded in an `Authorization: Basic` header, which no binding covers";
    assert_eq!(
        messages(&run, "key"),
        [
            refused("in the header `x-api-key: {key}`"),
            refused("in the header `authorization: Token {key}`"),
            refused("in the header `authorization: Bearer {key} `"),
            refused("in the query parameter `token`"),
            refused("in the query parameter `key`"),
            refused("in the URL"),
            refused("in the URL"),
            refused("in the body"),
            refused("in the body"),
            "tool http:post failed: secret `api_key` may not be a key of the body, only a value"
                .to_string(),
            userinfo.to_string(),
            userinfo.to_string(),
            format!(
                "tool http:post failed: secret `api_key` may only be sent {bound}, not to `{o}`"
            ),
        ]
    );
    assert!(server.requests().is_empty(), "{:?}", server.requests());
    assert!(other.requests().is_empty(), "{:?}", other.requests());
    assert_no_value(&run);
}

#[tokio::test]
async fn a_query_bound_secret_goes_only_in_its_parameter() {
    let server = HttpServer::echo().await;
    let broker = secret_broker("query", Some(&server), &[]).await;
    let h = server.host();
    let calls = [
        format!("callTool('http:get', {{url: `http://{h}/v1?a=1&key=${{key}}&b=2`}})"),
        format!("callTool('http:get', {{url: `http://{h}/v1?key=x${{key}}`}})"),
        format!("callTool('http:get', {{url: `http://{h}/v1?other=${{key}}`}})"),
        format!("callTool('http:get', {{url: `http://{h}/v1`, headers: {{Authorization: key}}}})"),
    ];
    let run = run_code(&broker, &each_caught("query_key", &calls)).await;
    let refused = |place: &str| {
        format!(
            "tool http:get failed: secret `query_key` may only be sent as the query parameter `key` to `{h}`; here it is {place}"
        )
    };
    assert_eq!(
        messages(&run, "key"),
        [
            "sent".to_string(),
            refused("in the URL"),
            refused("in the query parameter `other`"),
            refused("in the header `authorization: {key}`"),
        ]
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(
        requests[0].target,
        format!("/v1?a=1&key={QUERY_VALUE_URL}&b=2")
    );
    assert_no_value(&run);
}

#[tokio::test]
async fn free_placement_is_an_opt_in_that_goes_anywhere_but_the_user_info() {
    let server = HttpServer::echo().await;
    let other = HttpServer::echo().await;
    let broker = secret_broker("free", Some(&server), &[&other]).await;
    let code = format!(
        r#"
        const key = await callTool('secrets:get', {{key: 'free_key'}});
        const r = await callTool('http:post', {{
            url: `http://{host}/submit/${{key}}?token=${{key}}&x=1`,
            headers: {{Authorization: 'Bearer ' + key, 'X-Api-Key': key}},
            body: {{token: key, list: ['k:' + key]}},
        }});
        const out = [];
        for (const url of [`http://${{key}}@{host}/`, `http://u:${{key}}@{host}/`, `http://{other}/?t=${{key}}`]) {{
            try {{ await callTool('http:get', {{url}}); out.push('sent'); }} catch (e) {{ out.push(e.message); }}
        }}
        {MIRROR}
        return {{key, r, out, mirrored: mirror(r)}};
        "#,
        host = server.host(),
        other = other.host(),
    );
    let run = run_code(&broker, &code).await;
    let result = run.result();
    let key = result["key"].as_str().unwrap();
    assert_script_never_saw(&result["mirrored"]);

    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let sent = &requests[0];
    assert_eq!(
        sent.headers["authorization"],
        format!("Bearer {FREE_VALUE}")
    );
    assert_eq!(sent.headers["x-api-key"], FREE_VALUE);
    assert_eq!(
        sent.target,
        format!("/submit/{FREE_VALUE_URL}?token={FREE_VALUE_URL}&x=1")
    );
    let body: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(
        body,
        json!({"token": FREE_VALUE, "list": [format!("k:{FREE_VALUE}")]})
    );
    assert_eq!(sent.headers["content-type"], "application/json");

    let r = &result["r"];
    assert_eq!(r["body"]["headers"]["x-api-key"], key);
    assert_eq!(
        r["body"]["target"],
        format!("/submit/{key}?token={key}&x=1")
    );
    assert_eq!(
        messages(&run, "key"),
        [
            "tool http:get failed: secret `free_key` may not go in the URL's user info: it would be sent base64-encoded in an `Authorization: Basic` header, which no binding covers".to_string(),
            "tool http:get failed: secret `free_key` may not go in the URL's user info: it would be sent base64-encoded in an `Authorization: Basic` header, which no binding covers".to_string(),
            format!(
                "tool http:get failed: secret `free_key` may only be sent anywhere in the request but the user info to `{}`, not to `{}`",
                server.host(),
                other.host()
            ),
        ]
    );
    assert!(other.requests().is_empty());
    assert_no_value(&run);
}

#[tokio::test]
async fn only_listed_names_are_readable_and_unbound_ones_go_nowhere() {
    let server = HttpServer::echo().await;
    let broker = secret_broker("listed", None, &[&server]).await;
    let code = format!(
        r#"
        const out = [];
        for (const key of ['unlisted', 'nope', 'cargo_pkg_name']) {{
            try {{ out.push(await callTool('secrets:get', {{key}})); }} catch (e) {{ out.push(e.message); }}
        }}
        try {{ await callTool('secrets:get', {{name: 'api_key'}}); }} catch (e) {{ out.push(e.message); }}
        try {{
            await callTool('http:get', {{url: 'http://{}/', headers: {{Authorization: out[2]}}}});
            out.push('sent');
        }} catch (e) {{ out.push(e.message); }}
        return out;
        "#,
        server.host()
    );
    let run = run_code(&broker, &code).await;
    let result = run.result();
    assert_eq!(
        result[0],
        "tool secrets:get failed: no readable secret named `unlisted`"
    );
    assert_eq!(
        result[1],
        "tool secrets:get failed: no readable secret named `nope`"
    );
    // `names` (the shape from before bindings): readable, but bound nowhere.
    assert!(
        result[2].as_str().unwrap().starts_with(HANDLE_PREFIX),
        "{result}"
    );
    assert!(
        result[3]
            .as_str()
            .unwrap()
            .contains("Additional properties are not allowed ('name' was unexpected)"),
        "{result}"
    );
    assert_eq!(
        result[4],
        "tool http:get failed: secret `cargo_pkg_name` is not bound to any host, so http:fetch sends it nowhere (the broker's config binds it in [tools.\"secrets:get\".secrets.cargo_pkg_name])"
    );
    assert!(server.requests().is_empty());
    assert_no_value(&run);
}

#[tokio::test]
async fn a_value_an_api_returns_unasked_is_scrubbed_too() {
    let server = HttpServer::start(|_| {
        Response::json(json!({"leak": VALUE, "nested": [format!("x {VALUE} y")]}))
    })
    .await;
    let broker = secret_broker("unasked", None, &[&server]).await;
    let code = format!(
        "{MIRROR} const r = await callTool('http:get', {{url: 'http://{}/'}}); console.log(r.body.leak); return {{...r.body, mirrored: mirror(r)}};",
        server.host()
    );
    let run = run_code(&broker, &code).await;
    let result = run.result();
    let handle = result["leak"].as_str().unwrap();
    assert!(handle.starts_with(HANDLE_PREFIX), "{result}");
    assert_eq!(result["nested"][0], format!("x {handle} y"));
    assert_script_never_saw(&result["mirrored"]);
    assert_no_value(&run);
}

/// An echoing service that answers with the bearer token it received in the encodings
/// services commonly use, one per line, in a text body (which the broker does not
/// parse, so every encoding reaches the scrubbing as the service wrote it).
fn encodings(token: &str) -> Vec<(&'static str, String)> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let percent = |keep: &dyn Fn(u8) -> bool, upper: bool| -> String {
        token
            .bytes()
            .map(|b| match (keep(b), upper) {
                (true, _) => char::from(b).to_string(),
                (false, true) => format!("%{b:02X}"),
                (false, false) => format!("%{b:02x}"),
            })
            .collect()
    };
    let json = serde_json::to_string(token).unwrap();
    vec![
        ("as it is", token.to_string()),
        ("JSON with escaped slashes", json.replace('/', "\\/")),
        (
            "JSON, every character \\u-escaped",
            token
                .encode_utf16()
                .map(|u| format!("\\u{u:04x}"))
                .collect(),
        ),
        ("JSON, & as \\u0026", json.replace('&', "\\u0026")),
        ("base64", STANDARD.encode(token)),
        (
            "base64 after `user:`",
            STANDARD.encode(format!("user:{token}")),
        ),
        ("base64 after `ab`", STANDARD.encode(format!("ab{token}"))),
        ("base64url", URL_SAFE_NO_PAD.encode(format!("x{token}"))),
        (
            "base64url after `xy`",
            URL_SAFE_NO_PAD.encode(format!("xy{token}")),
        ),
        (
            "percent-encoded, upper-case hex",
            percent(&|b| b.is_ascii_alphanumeric(), true),
        ),
        (
            "percent-encoded, lower-case hex",
            percent(&|b| b.is_ascii_alphanumeric(), false),
        ),
        (
            "percent-encoded as encodeURIComponent does",
            percent(
                &|b| b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b),
                true,
            ),
        ),
        (
            "percent-encoded inside JSON",
            format!(
                "{{\"url\":\"\\/cb?t={}\"}}",
                percent(&|b| b.is_ascii_alphanumeric() || b == b'-', true)
            ),
        ),
    ]
}

#[tokio::test]
async fn echoed_values_are_scrubbed_in_every_common_encoding() {
    let server = HttpServer::start(|r| {
        let token = r.headers["authorization"].trim_start_matches("Bearer ");
        let lines: Vec<String> = encodings(token).into_iter().map(|(_, e)| e).collect();
        Response::text(200, &lines.join("\n"))
    })
    .await;
    let broker = secret_broker("encodings", Some(&server), &[]).await;
    let code = format!(
        r#"
        const key = await callTool('secrets:get', {{key: 'api_key'}});
        const r = await callTool('http:get', {{url: 'http://{}/', headers: {{Authorization: key}}}});
        {MIRROR}
        return {{key, mirrored: mirror(r.body)}};
        "#,
        server.host()
    );
    let run = run_code(&broker, &code).await;
    let result = run.result();
    let key = result["key"].as_str().unwrap();
    let seen: String = serde_json::from_str(&unmirror(&result["mirrored"])).unwrap();
    let lines: Vec<&str> = seen.lines().collect();
    let expected = encodings(VALUE);
    assert_eq!(lines.len(), expected.len(), "{seen}");
    for ((name, encoded), line) in expected.iter().zip(&lines) {
        assert!(
            line.contains(key),
            "{name}: not replaced by the handle: {line}"
        );
        assert!(
            !line.contains(encoded.as_str()),
            "{name}: the script saw {line}"
        );
    }
    assert_script_never_saw(&result["mirrored"]);
    assert_no_value(&run);
}

#[tokio::test]
async fn redirects_keep_secrets_on_their_origin() {
    let other = HttpServer::echo().await;
    let landing = format!("http://{}/landing", other.host());
    let origin = HttpServer::start(move |r| match r.target.as_str() {
        "/same" => Response::redirect("/final"),
        "/cross" => Response::redirect(&landing),
        "/cross-307" => Response {
            status: 307,
            ..Response::redirect(&landing)
        },
        // Echoes the query into the next hop's URL.
        t if t.starts_with("/bounce?") => {
            Response::redirect(&format!("{landing}?{}", t.trim_start_matches("/bounce?")))
        }
        _ => Response::json(json!({"target": r.target, "auth": r.headers.get("authorization")})),
    })
    .await;
    let broker = secret_broker("redirect", Some(&origin), &[&other]).await;
    let code = format!(
        r#"
        const key = await callTool('secrets:get', {{key: 'api_key'}});
        const free = await callTool('secrets:get', {{key: 'free_key'}});
        const query = await callTool('secrets:get', {{key: 'query_key'}});
        const headers = {{Authorization: key, 'X-Free': free, 'X-Plain': 'visible'}};
        const same = await callTool('http:get', {{url: 'http://{o}/same', headers}});
        const cross = await callTool('http:get', {{url: 'http://{o}/cross', headers}});
        const out = [];
        for (const call of [
            () => callTool('http:post', {{url: 'http://{o}/cross-307', body: {{free}}}}),
            () => callTool('http:get', {{url: `http://{o}/bounce?key=${{query}}`}}),
        ]) {{
            try {{ await call(); out.push('sent'); }} catch (e) {{ out.push(e.message); }}
        }}
        return {{key, same: same.body, cross: cross.body.headers, out}};
        "#,
        o = origin.host()
    );
    let run = run_code(&broker, &code).await;
    let result = run.result();
    let key = result["key"].as_str().unwrap();
    // Same origin: the secret header follows the redirect.
    assert_eq!(result["same"]["target"], "/final");
    assert_eq!(result["same"]["auth"], format!("Bearer {key}"));
    // Another origin: it does not; plain headers do.
    let landed = other.requests();
    assert_eq!(landed.len(), 1, "{landed:?}");
    assert_eq!(
        landed[0].headers.get("x-plain").map(String::as_str),
        Some("visible")
    );
    for name in ["authorization", "x-free"] {
        assert!(!landed[0].headers.contains_key(name), "{:?}", landed[0]);
    }
    assert_eq!(result["cross"]["x-plain"], "visible");
    assert_eq!(
        result["out"],
        json!([
            format!(
                "tool http:post failed: redirect to `{}` refused: the request body carries a secret",
                other.host()
            ),
            format!(
                "tool http:get failed: redirect to `{}` refused: its URL carries the value of secret `query_key`, which may only be sent as the query parameter `key` to `{}`",
                other.host(),
                origin.host()
            ),
        ])
    );
    assert_eq!(other.requests().len(), 1, "the refused hops were not sent");
    assert_no_value(&run);
}

/// Answers with 6 bytes of the request body from `?skip=N` on: an echo that is
/// truncated, so that no one reflection contains the whole value.
async fn window_server() -> HttpServer {
    HttpServer::start(|r| {
        let skip: usize = r
            .target
            .split("skip=")
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let window = r
            .body
            .get(skip..(skip + 6).min(r.body.len()))
            .unwrap_or_default();
        Response::text(200, &String::from_utf8_lossy(window))
    })
    .await
}

/// Joins the windows of `secret`'s value the window server echoes.
fn piecewise(secret: &str, host: &str) -> String {
    format!(
        r#"
        const key = await callTool('secrets:get', {{key: '{secret}'}});
        let joined = '';
        try {{
            for (let skip = 0; skip < 64; skip += 6) {{
                const r = await callTool('http:post', {{url: 'http://{host}/?skip=' + skip, body: key}});
                joined += r.body;
            }}
        }} catch (e) {{ return {{error: e.message}}; }}
        {MIRROR}
        return {{mirrored: mirror(joined)}};
        "#
    )
}

#[tokio::test]
async fn binding_stops_a_piecewise_echo() {
    let server = window_server().await;
    let broker = secret_broker("window", Some(&server), &[]).await;
    let run = run_code(&broker, &piecewise("api_key", &server.host())).await;
    assert!(
        run.result()["error"]
            .as_str()
            .unwrap()
            .ends_with("here it is in the body"),
        "{:?}",
        run.result()
    );
    assert!(server.requests().is_empty());
}

/// What README says scrubbing cannot catch: a secret that opted into free placement,
/// sent to a host that echoes part of what it receives, can be recovered piece by piece.
#[tokio::test]
async fn free_placement_cannot_stop_a_piecewise_echo() {
    let server = window_server().await;
    let broker = secret_broker("window-free", Some(&server), &[]).await;
    let run = run_code(&broker, &piecewise("free_key", &server.host())).await;
    let joined: String = serde_json::from_str(&unmirror(&run.result()["mirrored"])).unwrap();
    assert_eq!(joined, FREE_VALUE);
    // The joined value, returned as it is, is still scrubbed on the way out.
    let plain = piecewise("free_key", &server.host()).replace("mirror(joined)", "joined");
    let run = run_code(&broker, &plain).await;
    assert!(
        run.result()["mirrored"]
            .as_str()
            .unwrap()
            .starts_with(HANDLE_PREFIX)
    );
    assert_no_value(&run);
}

/// A tool that hands back whatever it is told, value included, and records the
/// arguments it was called with.
struct Leaky {
    seen: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl enclave_broker::Tool for Leaky {
    fn call<'a>(
        &'a self,
        _cx: &'a enclave_broker::ToolContext<'a>,
        args: serde_json::Value,
    ) -> enclave_broker::tools::ToolFuture<'a> {
        Box::pin(async move {
            self.seen.lock().unwrap().push(args.clone());
            if args["fail"] == true {
                Err(enclave_broker::ToolError::failed(format!(
                    "upstream said {VALUE}"
                )))
            } else {
                Ok(json!({"token": VALUE, "url": format!("/x?k={VALUE_URL}")}))
            }
        })
    }
}

/// The job's input: a value the script should never have, raw and encoded.
fn leaked_input() -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("user:{VALUE}"));
    json!({
        "v": VALUE,
        "b64": b64,
        "json": serde_json::to_string(VALUE).unwrap().replace('/', "\\/"),
        "pct": VALUE_URL,
    })
    .to_string()
}

#[tokio::test]
async fn values_are_scrubbed_from_every_channel() {
    let server = HttpServer::echo().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut tools = tools("channels", Some(&server), &[]);
    tools
        .register(
            "leaky",
            Arc::new(Leaky { seen: seen.clone() }),
            ToolSpec::any("a test tool"),
            std::time::Duration::from_secs(5),
        )
        .unwrap();
    let broker = broker(tools).await;
    let code = format!(
        r#"
        {MIRROR}
        const forms = [input.v, input.b64, input.json, input.pct];
        console.log('input', ...forms);
        const ok = await callTool('leaky', {{forms}});
        let failed, unknown, sent;
        try {{ await callTool('leaky', {{fail: true}}); }} catch (e) {{ failed = e.message; }}
        // The value as a tool's name, and sent out as the header it is bound to.
        try {{ await callTool(input.v, {{}}); }} catch (e) {{ unknown = e.message; }}
        try {{
            await callTool('http:post', {{url: 'http://{host}/', body: input.v}});
            sent = 'sent';
        }} catch (e) {{ sent = e.message; }}
        const echo = await callTool('http:get', {{url: 'http://{host}/', headers: {{Authorization: 'Bearer ' + input.v}}}});
        return {{ok, failed, unknown, sent, forms, auth: echo.body.headers.authorization, mirrored: mirror([ok, failed])}};
        "#,
        host = server.host()
    );
    let mut job = job(&code);
    // Defence in depth: even a value that entered with the job does not leave it.
    job.input_json = leaked_input();
    let run = run(&broker, job).await;
    let result = run.result();
    let handle = result["ok"]["token"].as_str().unwrap();
    assert!(handle.starts_with(HANDLE_PREFIX), "{result}");
    assert_eq!(result["ok"]["url"], format!("/x?k={handle}"));
    assert_eq!(
        result["failed"],
        format!("tool leaky failed: upstream said {handle}")
    );
    // The result: every form of the value became the handle.
    for (i, form) in result["forms"].as_array().unwrap().iter().enumerate() {
        assert!(form.as_str().unwrap().contains(handle), "form {i}: {form}");
    }
    // Tool calls: the tool, the `tool_call` event and its name carry the handle only.
    let received = seen.lock().unwrap().clone();
    assert!(received[0].to_string().contains(handle), "{received:?}");
    let calls = run.tool_calls();
    assert!(calls[0].args_json.contains(handle), "{:?}", calls[0]);
    assert_eq!(calls[2].name, handle);
    assert_eq!(
        result["unknown"]
            .as_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap(),
        format!("tool {handle} failed: unknown tool `{handle}`")
    );
    assert_eq!(run.tool_results()[2].0, handle);
    // Requests to services: the value became its handle, which then goes only where
    // it is bound: not in a body, but as its header.
    assert_eq!(
        result["sent"],
        format!(
            "tool http:post failed: secret `api_key` may only be sent as the header `Authorization: Bearer {{}}` to `{}`; here it is in the body",
            server.host()
        )
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(
        requests[0].headers["authorization"],
        format!("Bearer {VALUE}")
    );
    assert_eq!(result["auth"], format!("Bearer {handle}"));
    // The console, in every form.
    let console = &run.console()[0].text;
    assert_eq!(console.matches(handle).count(), 4, "{console}");
    assert_script_never_saw(&result["mirrored"]);
    assert_no_value(&run);

    // A thrown error: name, message and stack.
    let mut job = self::job(
        "const e = new Error(input.b64 + ' ' + input.json); e.name = input.v; e.stack = input.pct; throw e;",
    );
    job.input_json = leaked_input();
    let run = self::run(&broker, job).await;
    let error = run.error();
    assert_eq!(error.name, handle_of(&error.name));
    assert!(
        error.message.matches(HANDLE_PREFIX).count() == 2,
        "{error:?}"
    );
    assert!(error.stack.starts_with(HANDLE_PREFIX), "{error:?}");
    assert_no_value(&run);
}

/// `text` if it is a handle.
fn handle_of(text: &str) -> String {
    assert!(
        text.starts_with(HANDLE_PREFIX) && text.len() == HANDLE_PREFIX.len() + 24,
        "{text}"
    );
    text.to_string()
}

/// `Tools::call` scrubs a tool's arguments itself, whoever calls it: the tool (and the
/// service it talks to) sees the handle.
#[tokio::test]
async fn a_tools_arguments_are_scrubbed_before_it_runs() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut tools = tools("arguments", None, &[]);
    tools
        .register(
            "leaky",
            Arc::new(Leaky { seen: seen.clone() }),
            ToolSpec::any("a test tool"),
            std::time::Duration::from_secs(5),
        )
        .unwrap();
    let secrets = tools.job_secrets();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let args = json!({"v": VALUE, "b64": base64::engine::general_purpose::STANDARD.encode(VALUE)});
    let job = ToolJob {
        id: "job",
        secrets: &secrets,
        deadline,
        client_tools: &[],
    };
    let result = tools.call(&job, "leaky", &args.to_string()).await.unwrap();
    let handle = secrets.handle_for("api_key").unwrap();
    let received = seen.lock().unwrap()[0].clone();
    assert_eq!(received, json!({"v": handle, "b64": handle}));
    assert!(
        result.contains(&handle) && !result.contains(VALUE),
        "{result}"
    );
}
