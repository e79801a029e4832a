//! Secrets: scripts get handles, allowed hosts get values, nothing else ever does.

use std::path::PathBuf;

use enclave_broker::config::Config;
use enclave_broker::secrets::HANDLE_PREFIX;
use enclave_broker::{Broker, Tools};
use serde_json::json;

use crate::support::*;

/// Characters that URL-encoding, JSON and header handling each treat specially.
const VALUE: &str = "sk-live-Abc/123&x=y+z";
const VALUE_URL: &str = "sk%2Dlive%2DAbc%2F123%26x%3Dy%2Bz";
const UNLISTED: &str = "never-readable-9f8e7d";

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("enclave-broker-it-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Tools from a real config file: a secrets file next to it, an env secret, and
/// `http:fetch` allowed to reach `hosts`.
fn tools(name: &str, hosts: &[&HttpServer]) -> Tools {
    let dir = temp_dir(name);
    std::fs::write(
        dir.join("secrets.toml"),
        format!("api_key = \"{VALUE}\"\nunlisted = \"{UNLISTED}\"\n"),
    )
    .unwrap();
    let allow: Vec<String> = hosts.iter().map(|h| format!("\"{}\"", h.host())).collect();
    let config = format!(
        r#"
        [tools."secrets:get"]
        file = "secrets.toml"
        env = ["CARGO_PKG_NAME"]
        names = ["api_key", "cargo_pkg_name"]
        [tools."http:fetch"]
        allow_hosts = [{}]
        "#,
        allow.join(", ")
    );
    std::fs::write(dir.join("broker.toml"), config).unwrap();
    let config = Config::load(&dir.join("broker.toml")).unwrap();
    Tools::from_config(&config.tools).unwrap()
}

async fn secret_broker(name: &str, hosts: &[&HttpServer]) -> Broker {
    broker(tools(name, hosts)).await
}

/// Defines `mirror(x)`: `x` as JSON, reversed. The script returns what it saw in a form
/// the broker's output scrubbing cannot recognise, so a test sees what the script saw.
const MIRROR: &str = "const mirror = x => JSON.stringify(x).split('').reverse().join('');";

/// The script never saw the value: `mirrored` is what `mirror` returned.
fn assert_script_never_saw(mirrored: &serde_json::Value) {
    let seen: String = mirrored.as_str().unwrap().chars().rev().collect();
    assert!(seen.len() > 20, "{seen}");
    for form in [VALUE, VALUE_URL, UNLISTED] {
        assert!(!seen.contains(form), "the script saw `{form}`: {seen}");
    }
}

/// Nothing the caller saw contains the value, raw or URL-encoded.
fn assert_no_value(run: &Run) {
    let everything = format!("{run:?}");
    for form in [VALUE, VALUE_URL, UNLISTED] {
        assert!(
            !everything.contains(form),
            "`{form}` leaked into: {everything}"
        );
    }
}

#[tokio::test]
async fn the_script_holds_a_handle_and_the_allowed_host_gets_the_value() {
    let server = HttpServer::echo().await;
    let broker = secret_broker("handle", &[&server]).await;
    let code = format!(
        r#"
        const key = await callTool('secrets:get', {{key: 'api_key'}});
        console.log('got', key);
        const echoed = await callTool('echo', {{key}});
        const r = await callTool('http:post', {{
            url: `http://{host}/submit?token=${{key}}&x=1`,
            headers: {{Authorization: 'Bearer ' + key, 'X-Api-Key': key}},
            body: {{token: key, list: ['k:' + key]}},
        }});
        console.log(JSON.stringify(r));
        {MIRROR}
        return {{key, echoed, r, mirrored: mirror([echoed, r])}};
        "#,
        host = server.host()
    );
    let run = run_code(&broker, &code).await;
    let result = run.result();
    let key = result["key"].as_str().unwrap().to_string();
    assert!(key.starts_with(HANDLE_PREFIX), "{key}");
    assert_script_never_saw(&result["mirrored"]);

    // The allowed host received the real value everywhere the script put the handle.
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let sent = &requests[0];
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.headers["authorization"], format!("Bearer {VALUE}"));
    assert_eq!(sent.headers["x-api-key"], VALUE);
    assert_eq!(sent.target, format!("/submit?token={VALUE_URL}&x=1"));
    let body: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(
        body,
        json!({"token": VALUE, "list": [format!("k:{VALUE}")]})
    );
    assert_eq!(sent.headers["content-type"], "application/json");

    // What came back was scrubbed: the echo shows the handle, not the value.
    assert_eq!(
        result["echoed"],
        json!({"key": key}),
        "echo does not reveal"
    );
    let r = &result["r"];
    assert_eq!(r["status"], 200);
    assert_eq!(
        r["body"]["headers"]["authorization"],
        format!("Bearer {key}")
    );
    assert_eq!(r["body"]["headers"]["x-api-key"], key.as_str());
    assert_eq!(r["body"]["target"], format!("/submit?token={key}&x=1"));
    let echoed_body: serde_json::Value =
        serde_json::from_str(r["body"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(echoed_body["token"], key.as_str());

    // Events: the handle in the tool call's arguments and the console, never the value.
    assert!(run.tool_calls()[2].args_json.contains(&key));
    assert!(run.console()[0].text.contains(&key));
    assert_eq!(run.tool_results().len(), 3);
    assert!(run.tool_results().iter().all(|(_, error)| error.is_none()));
    assert_no_value(&run);
}

#[tokio::test]
async fn only_listed_names_are_readable_and_env_secrets_work() {
    let broker = secret_broker("listed", &[]).await;
    let run = run_code(
        &broker,
        r#"
        const out = [];
        for (const key of ['unlisted', 'nope', 'cargo_pkg_name']) {
            try { out.push(await callTool('secrets:get', {key})); } catch (e) { out.push(e.message); }
        }
        try { await callTool('secrets:get', {name: 'api_key'}); } catch (e) { out.push(e.message); }
        return out;
        "#,
    )
    .await;
    let result = run.result();
    assert_eq!(
        result[0],
        "tool secrets:get failed: no readable secret named `unlisted`"
    );
    assert_eq!(
        result[1],
        "tool secrets:get failed: no readable secret named `nope`"
    );
    assert!(
        result[2].as_str().unwrap().starts_with(HANDLE_PREFIX),
        "{result}"
    );
    assert!(
        result[3].as_str().unwrap().contains("unknown field `name`"),
        "{result}"
    );
    assert_no_value(&run);
}

#[tokio::test]
async fn a_value_an_api_returns_unasked_is_scrubbed_too() {
    let server = HttpServer::start(|_| {
        Response::json(json!({"leak": VALUE, "nested": [format!("x {VALUE} y")]}))
    })
    .await;
    let broker = secret_broker("unasked", &[&server]).await;
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

#[tokio::test]
async fn a_handle_cannot_choose_the_host() {
    let server = HttpServer::echo().await;
    let broker = secret_broker("host", &[&server]).await;
    let run = run_code(
        &broker,
        r#"
        const key = await callTool('secrets:get', {key: 'api_key'});
        const out = [];
        for (const url of [`http://${key}/`, `http://x.${key}.example/`, `http://${key}.example/`]) {
            try { await callTool('http:get', {url}); out.push('sent'); } catch (e) { out.push(e.message); }
        }
        return out;
        "#,
    )
    .await;
    for message in run.result().as_array().unwrap() {
        let message = message.as_str().unwrap();
        assert!(message.starts_with("tool http:get failed: "), "{message}");
        assert_ne!(message, "sent");
    }
    assert!(server.requests().is_empty());
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
        _ => Response::json(json!({"target": r.target, "key": r.headers.get("x-api-key")})),
    })
    .await;
    let broker = secret_broker("redirect", &[&origin, &other]).await;
    let code = format!(
        r#"
        const key = await callTool('secrets:get', {{key: 'api_key'}});
        const headers = {{'X-Api-Key': key, Authorization: 'Bearer ' + key, 'X-Plain': 'visible'}};
        const same = await callTool('http:get', {{url: 'http://{o}/same', headers}});
        const cross = await callTool('http:get', {{url: 'http://{o}/cross', headers}});
        let posted;
        try {{ await callTool('http:post', {{url: 'http://{o}/cross-307', body: {{key}}}}); posted = 'sent'; }}
        catch (e) {{ posted = e.message; }}
        return {{same: same.body, cross: cross.body.headers, posted}};
        "#,
        o = origin.host()
    );
    let run = run_code(&broker, &code).await;
    let result = run.result();
    // Same origin: the secret header follows the redirect.
    assert_eq!(result["same"]["target"], "/final");
    assert!(
        result["same"]["key"]
            .as_str()
            .unwrap()
            .starts_with(HANDLE_PREFIX),
        "{result}"
    );
    // Another origin: it does not; plain headers do.
    let landed = other.requests();
    assert_eq!(landed.len(), 1, "{landed:?}");
    assert_eq!(
        landed[0].headers.get("x-plain").map(String::as_str),
        Some("visible")
    );
    assert!(
        !landed[0].headers.contains_key("x-api-key"),
        "{:?}",
        landed[0]
    );
    assert!(
        !landed[0].headers.contains_key("authorization"),
        "{:?}",
        landed[0]
    );
    assert_eq!(result["cross"]["x-plain"], "visible");
    // A body carrying a secret is not re-sent to another origin.
    assert!(
        result["posted"]
            .as_str()
            .unwrap()
            .contains("the request body carries a secret"),
        "{result}"
    );
    assert_no_value(&run);
}

/// A tool that hands back whatever it is told, value included.
struct Leaky;

impl enclave_broker::Tool for Leaky {
    fn call<'a>(
        &'a self,
        _cx: &'a enclave_broker::ToolContext<'a>,
        args: serde_json::Value,
    ) -> enclave_broker::tools::ToolFuture<'a> {
        Box::pin(async move {
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

#[tokio::test]
async fn values_are_scrubbed_from_any_tool_and_from_the_job_output() {
    let mut tools = Tools::from_config(&Default::default()).unwrap();
    tools.set_secrets(enclave_broker::SecretStore::from_values([(
        "api_key", VALUE,
    )]));
    tools.register(
        "leaky",
        std::sync::Arc::new(Leaky),
        std::time::Duration::from_secs(5),
    );
    let broker = broker(tools).await;
    let mut job = job(&format!(
        r#"
        {MIRROR}
        const ok = await callTool('leaky', {{}});
        let failed;
        try {{ await callTool('leaky', {{fail: true}}); }} catch (e) {{ failed = e.message; }}
        console.log('input', input.v);
        return {{ok, failed, input: input.v, mirrored: mirror([ok, failed])}};
        "#
    ));
    // Defence in depth: even a value that entered with the job does not leave it.
    job.input_json = json!({"v": VALUE}).to_string();
    let run = run(&broker, job).await;
    let result = run.result();
    let handle = result["ok"]["token"].as_str().unwrap();
    assert!(handle.starts_with(HANDLE_PREFIX), "{result}");
    assert_eq!(result["ok"]["url"], format!("/x?k={handle}"));
    assert_eq!(
        result["failed"],
        format!("tool leaky failed: upstream said {handle}")
    );
    assert_eq!(result["input"], handle);
    assert_eq!(run.console()[0].text, format!("input {handle}"));
    assert_script_never_saw(&result["mirrored"]);
    assert_no_value(&run);
}
