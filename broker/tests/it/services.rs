//! The integrator's tools: webhook and gRPC tool services, schemas and `listTools()`.
//! The services are real servers on loopback ports: the webhook the minimal HTTP server
//! of `support`, the gRPC one an `enclave.v1.ToolService` served by tonic.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use enclave_broker::Tools;
use enclave_broker::config::Config;
use enclave_broker::secrets::HANDLE_PREFIX;
use enclave_proto::v1::tool_call_response::Outcome;
use enclave_proto::v1::tool_service_server::{ToolService, ToolServiceServer};
use enclave_proto::v1::{
    ToolCallRequest, ToolCallResponse, ToolInfo as WireSpec, ToolServiceListRequest,
    ToolServiceListResponse,
};
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response as GrpcResponse, Status};

use crate::support::*;

const KEY: &str = "0123456789abcdef0123456789abcdef";

/// Tools from `toml`, whose relative paths resolve in `dir`.
fn tools_in(dir: &std::path::Path, toml: &str) -> Result<Tools, String> {
    let config = Config::parse(toml, dir).map_err(|e| e.to_string())?;
    let mut tools = Tools::from_config(&config.tools).map_err(|e| e.to_string())?;
    tools
        .add_services(&config.tool_services)
        .map_err(|e| e.to_string())?;
    Ok(tools)
}

fn tools(toml: &str) -> Result<Tools, String> {
    tools_in(std::path::Path::new("."), toml)
}

/// A webhook service `search` with one tool, `search:web {q: string}`.
fn webhook_config(addr: &str, extra: &str) -> String {
    format!(
        r#"
[tool_services.search]
webhook = "http://{addr}/hook"
{extra}

[tool_services.search.tools."search:web"]
description = "Searches the web."
input_schema = {{ type = "object", properties = {{ q = {{ type = "string" }} }}, required = ["q"], additionalProperties = false }}
"#
    )
}

fn body_of(request: &Request_) -> Value {
    serde_json::from_slice(&request.body).unwrap()
}
type Request_ = crate::support::Request;

#[tokio::test]
async fn a_webhook_call_round_trips_with_a_verifiable_signature() {
    let dir = temp_dir("webhook-signature");
    std::fs::write(dir.join("hook.key"), format!("{KEY}\n")).unwrap();
    let server = HttpServer::start(|r| {
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        Response::json(json!({"result": {"hits": [body["args"]["q"]], "tool": body["tool"]}}))
    })
    .await;
    let config = webhook_config(&server.host(), "hmac_key_file = \"hook.key\"");
    let broker = broker(tools_in(&dir, &config).unwrap()).await;
    let before_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let run = run_code(
        &broker,
        "const a = await callTool('search:web', {q: 'rust'}); const b = await callTool('search:web', {q: 'wasm'}); return [a, b];",
    )
    .await;
    assert_eq!(
        run.result(),
        json!([{"hits": ["rust"], "tool": "search:web"}, {"hits": ["wasm"], "tool": "search:web"}])
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let first = body_of(&requests[0]);
    assert_eq!(first["tool"], "search:web");
    assert_eq!(first["args"], json!({"q": "rust"}));
    let job_id = first["jobId"].as_str().unwrap();
    assert_eq!(job_id.len(), 32, "{job_id}");
    assert_eq!(body_of(&requests[1])["jobId"], job_id, "one id per job");
    let deadline = first["deadlineUnixMs"].as_u64().unwrap();
    assert!(
        deadline > before_ms && deadline < before_ms + 60_000,
        "{deadline}"
    );
    for request in &requests {
        assert_eq!(request.method, "POST");
        assert_eq!(request.headers["content-type"], "application/json");
        // The service's check, as README.md describes it.
        let signature = &request.headers["x-enclave-signature"];
        let (t, v1) = signature
            .strip_prefix("t=")
            .and_then(|rest| rest.split_once(",v1="))
            .unwrap_or_else(|| panic!("{signature}"));
        let mut mac =
            <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(KEY.as_bytes()).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(&request.body);
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(v1, expected);
        let t: u64 = t.parse().unwrap();
        assert!(t.abs_diff(before_ms / 1000) < 60);
    }
    // Another job, another id.
    run_code(&broker, "return await callTool('search:web', {q: 'x'});").await;
    assert_ne!(body_of(&server.requests()[2])["jobId"], job_id);
}

#[tokio::test]
async fn a_webhook_without_a_key_sends_no_signature() {
    let server = HttpServer::start(|_| Response::json(json!({"result": 1}))).await;
    let broker = broker(tools(&webhook_config(&server.host(), "")).unwrap()).await;
    assert_eq!(
        run_code(&broker, "return await callTool('search:web', {q: 'x'});")
            .await
            .result(),
        json!(1)
    );
    assert!(
        !server.requests()[0]
            .headers
            .contains_key("x-enclave-signature")
    );
}

#[tokio::test]
async fn errors_reach_the_script_as_catchable_errors_without_addresses() {
    let server = HttpServer::start(|r| {
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        match body["args"]["q"].as_str().unwrap() {
            "error" => Response::json(json!({"error": "the index is rebuilding"})),
            "500" => Response::text(500, "Traceback (most recent call last): at 10.1.2.3"),
            "junk" => Response::text(200, "<html>"),
            _ => Response::json(json!({"result": "ok"})),
        }
    })
    .await;
    let dead = dead_port();
    let config = format!(
        "{}\n{}",
        webhook_config(&server.host(), ""),
        r#"
[tool_services.down]
webhook = "http://DEAD/"
[tool_services.down.tools."down:x"]
description = "Never answers."
"#
        .replace("DEAD", &dead.to_string())
    );
    let broker = broker(tools(&config).unwrap()).await;
    let run = run_code(
        &broker,
        r#"
        const out = [];
        for (const [tool, q] of [['search:web', 'error'], ['search:web', '500'], ['search:web', 'junk'], ['down:x', 'x']]) {
          try { await callTool(tool, {q}); out.push('no error'); }
          catch (e) { out.push(e instanceof Error ? e.message : 'not an Error'); }
        }
        out.push(await callTool('search:web', {q: 'fine'}));
        return out;
        "#,
    )
    .await;
    assert_eq!(
        run.result(),
        json!([
            "tool search:web failed: the index is rebuilding",
            "tool search:web failed: tool service `search` answered HTTP 500",
            "tool search:web failed: tool service `search` answered something other than {\"result\": ...} or {\"error\": \"...\"}",
            "tool down:x failed: tool service `down` is unreachable",
            "ok",
        ])
    );
    let text = run.result().to_string();
    assert!(
        !text.contains("127.0.0.1") && !text.contains("10.1.2.3") && !text.contains("Traceback"),
        "{text}"
    );
    // The broker goes on serving.
    assert_eq!(
        run_code(&broker, "return await callTool('echo', 1);")
            .await
            .result(),
        json!(1)
    );
}

#[tokio::test]
async fn arguments_that_fail_the_schema_never_reach_the_service() {
    let server = HttpServer::start(|_| Response::json(json!({"result": "called"}))).await;
    let broker = broker(tools(&webhook_config(&server.host(), "")).unwrap()).await;
    let run = run_code(
        &broker,
        r#"
        const out = [];
        for (const args of [{q: 7}, {}, {q: 'x', extra: 1}, null]) {
          try { await callTool('search:web', args); out.push('no error'); }
          catch (e) { out.push(e.message); }
        }
        try { await callTool('secrets:get', {key: 1}); } catch (e) { out.push(e.message); }
        return out;
        "#,
    )
    .await;
    let messages: Vec<String> = serde_json::from_value(run.result()).unwrap();
    let prefix = "tool search:web failed: arguments do not match the tool's schema";
    assert_eq!(
        messages[0],
        format!("{prefix} at /q: 7 is not of type \"string\"")
    );
    assert!(
        messages[1].starts_with(prefix) && messages[1].contains("\"q\" is a required property"),
        "{}",
        messages[1]
    );
    assert!(
        messages[2].starts_with(prefix) && messages[2].contains("extra"),
        "{}",
        messages[2]
    );
    assert_eq!(
        messages[3],
        format!("{prefix}: null is not of type \"object\"")
    );
    // secrets:get is not configured here: unknown, before any schema.
    assert!(
        messages[4].contains("unknown tool `secrets:get`"),
        "{}",
        messages[4]
    );
    assert!(server.requests().is_empty(), "{:?}", server.requests());
}

#[tokio::test]
async fn a_slow_service_ends_only_that_call_inside_the_jobs_time() {
    let server = HttpServer::start(|r| {
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        Response {
            delay: Duration::from_millis(if body["args"]["q"] == "slow" {
                30_000
            } else {
                0
            }),
            ..Response::json(json!({"result": body["args"]["q"]}))
        }
    })
    .await;
    let broker = broker(tools(&webhook_config(&server.host(), "timeout_ms = 300")).unwrap()).await;
    let started = Instant::now();
    let run = run(
        &broker,
        job_with_timeout(
            r#"
            const slow = callTool('search:web', {q: 'slow'}).then(() => 'answered', e => e.message);
            const fast = await callTool('search:web', {q: 'fast'});
            return [await slow, fast];
            "#,
            10_000,
        ),
    )
    .await;
    assert_eq!(
        run.result(),
        json!(["tool search:web failed: no answer within 300 ms", "fast"])
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_oversized_answer_is_refused() {
    let server = HttpServer::start(|_| Response::json(json!({"result": "x".repeat(10_000)}))).await;
    let broker =
        broker(tools(&webhook_config(&server.host(), "max_result_bytes = 1000")).unwrap()).await;
    let run = run_code(
        &broker,
        "try { await callTool('search:web', {q: 'x'}); return 'no error'; } catch (e) { return e.message; }",
    )
    .await;
    assert_eq!(
        run.result(),
        json!(
            "tool search:web failed: tool service `search` answered more than its max_result_bytes (1000 bytes)"
        )
    );
}

#[tokio::test]
async fn a_service_gets_the_values_of_its_secrets_only() {
    let server = HttpServer::start(|r| {
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        Response::json(json!({"result": body["args"]}))
    })
    .await;
    let dir = temp_dir("service-secrets");
    std::fs::write(
        dir.join("secrets.toml"),
        "db_password = 'pa\"ss-word-1234'\nother_key = 'other-key-5678'\n",
    )
    .unwrap();
    let secrets = r#"
[tools."secrets:get"]
file = "secrets.toml"
[tools."secrets:get".secrets.db_password]
hosts = ["db.internal"]
inject = { header = "X-Db" }
[tools."secrets:get".secrets.other_key]
hosts = ["db.internal"]
inject = { header = "X-Db" }
[tools."http:fetch"]
allow_hosts = ["db.internal"]
allow_private_ips = true
"#;
    let config = format!(
        "{secrets}\n{}",
        webhook_config(&server.host(), "secrets = [\"db_password\"]")
            .replace(", additionalProperties = false", "")
    );
    let broker = broker(tools_in(&dir, &config).unwrap()).await;
    let run = run_code(
        &broker,
        r#"
        const pw = await callTool('secrets:get', {key: 'db_password'});
        const other = await callTool('secrets:get', {key: 'other_key'});
        return await callTool('search:web', {q: 'x', pw, other});
        "#,
    )
    .await;
    let sent = body_of(&server.requests()[0]);
    assert_eq!(
        sent["args"]["pw"], "pa\"ss-word-1234",
        "its own secret, as a value"
    );
    assert!(
        sent["args"]["other"]
            .as_str()
            .unwrap()
            .starts_with(HANDLE_PREFIX),
        "another secret stays a handle: {sent}"
    );
    // What the service echoed is scrubbed on the way back.
    let result = run.result();
    assert!(
        result["pw"].as_str().unwrap().starts_with(HANDLE_PREFIX),
        "{result}"
    );
    assert!(!result.to_string().contains("ss-word"), "{result}");
}

#[test]
fn configs_that_would_let_a_service_take_other_names_are_refused() {
    let hook = |name: &str, answers: &str, tool: &str| {
        format!(
            "[tool_services.{name}]\nwebhook = \"http://127.0.0.1:9/\"\nanswers = [{answers}]\n[tool_services.{name}.tools.\"{tool}\"]\ndescription = \"d\"\n"
        )
    };
    for (config, expected) in [
        (
            hook("x", "\"echo\"", "echo"),
            "takes the name of the tool `echo`",
        ),
        (
            hook("x", "\"ec*\"", "echo"),
            "takes the name of the tool `echo`",
        ),
        (
            format!(
                "{}{}",
                hook("a", "\"db:*\"", "db:q"),
                hook("b", "\"db:x\"", "db:x")
            ),
            "overlaps tool_services.a",
        ),
        (hook("x", "\"x:*\"", "y:q"), "outside the names it answers"),
        (hook("x", "\"tools:*\"", "tools:q"), "tools:list"),
        (
            "[tool_services.x]\nwebhook = \"http://127.0.0.1:9/\"\n".to_owned(),
            "needs its tools declared",
        ),
        (
            "[tool_services.x]\ngrpc = \"http://127.0.0.1:9\"\nwebhook = \"http://127.0.0.1:9/\"\n"
                .to_owned(),
            "exactly one",
        ),
        (
            "[tool_services.x]\ngrpc = \"http://127.0.0.1:9\"\nhmac_key_env = \"K\"\n".to_owned(),
            "hmac_key_env",
        ),
    ] {
        let error = tools(&config)
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{config}"));
        assert!(error.contains(expected), "{error}\n{config}");
    }
    let error = tools(
        "[tool_services.x]\nwebhook = \"http://127.0.0.1:9/\"\nsecrets = [\"nope\"]\n[tool_services.x.tools.\"x:q\"]\ndescription = \"d\"\n",
    )
    .err()
    .unwrap();
    assert!(error.contains("`nope` is not a readable secret"), "{error}");
    let error = tools(
        "[tool_services.x]\nwebhook = \"http://127.0.0.1:9/\"\n[tool_services.x.tools.\"x:q\"]\ndescription = \"d\"\ninput_schema = { type = \"nonsense\" }\n",
    )
    .err()
    .unwrap();
    assert!(
        error.contains("input schema is not a usable JSON Schema"),
        "{error}"
    );
}

// ---- gRPC tool services ---------------------------------------------------------------

/// An `enclave.v1.ToolService`: lists `listed`, answers `db:sleep {ms}` after `ms`
/// milliseconds with its arguments, `db:fail` with an error, anything else with its
/// request. Counts the calls in flight.
#[derive(Clone)]
struct Db {
    listed: Vec<WireSpec>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    calls: Arc<Mutex<Vec<ToolCallRequest>>>,
}

#[tonic::async_trait]
impl ToolService for Db {
    async fn list(
        &self,
        _: Request<ToolServiceListRequest>,
    ) -> Result<GrpcResponse<ToolServiceListResponse>, Status> {
        Ok(GrpcResponse::new(ToolServiceListResponse {
            tools: self.listed.clone(),
        }))
    }

    async fn call(
        &self,
        request: Request<ToolCallRequest>,
    ) -> Result<GrpcResponse<ToolCallResponse>, Status> {
        let grpc_timeout = request.metadata().get("grpc-timeout").is_some();
        let call = request.into_inner();
        self.calls.lock().unwrap().push(call.clone());
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let args: Value = serde_json::from_str(&call.args_json).unwrap();
        let outcome = match call.name.as_str() {
            "db:sleep" => {
                tokio::time::sleep(Duration::from_millis(args["ms"].as_u64().unwrap())).await;
                Outcome::ResultJson(args.to_string())
            }
            "db:fail" => Outcome::Error("relation \"users\" does not exist".into()),
            _ => Outcome::ResultJson(
                json!({"name": call.name, "args": args, "deadline": grpc_timeout}).to_string(),
            ),
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(GrpcResponse::new(ToolCallResponse {
            outcome: Some(outcome),
        }))
    }
}

fn spec(name: &str, schema: &str) -> WireSpec {
    WireSpec {
        name: name.into(),
        description: format!("{name} does things"),
        input_schema_json: schema.into(),
    }
}

async fn start_db(listed: Vec<WireSpec>) -> (String, Db) {
    let db = Db {
        listed,
        in_flight: Arc::default(),
        max_in_flight: Arc::default(),
        calls: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = ToolServiceServer::new(db.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), db)
}

/// Waits until the broker has listed `name`.
async fn listed(tools: &Tools, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tools.catalogue().iter().any(|(n, _)| n == name) {
        assert!(Instant::now() < deadline, "{name} never listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn db_listing() -> Vec<WireSpec> {
    vec![
        spec(
            "db:sleep",
            r#"{"type":"object","properties":{"ms":{"type":"integer","minimum":0}},"required":["ms"]}"#,
        ),
        spec("db:fail", ""),
        spec("db:query", r#"{"type":"object"}"#),
        // Outside `db:*`: ignored, so a service cannot take over a built-in.
        spec("echo", ""),
        spec("http:fetch", ""),
        // A schema that does not compile: that tool is ignored, the others listed.
        spec("db:broken", r#"{"type": 12}"#),
    ]
}

#[tokio::test]
async fn a_grpc_service_lists_its_tools_and_answers_concurrent_calls_out_of_order() {
    let (url, db) = start_db(db_listing()).await;
    let broker = broker(
        tools(&format!(
            "[tool_services.db]\ngrpc = \"{url}\"\nanswers = [\"db:*\"]\n"
        ))
        .unwrap(),
    )
    .await;
    listed(broker.tools(), "db:query").await;
    let names: Vec<String> = broker
        .tools()
        .catalogue()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["db:fail", "db:query", "db:sleep", "echo"]);
    let run = run_code(
        &broker,
        r#"
        const results = await Promise.all([
          callTool('db:sleep', {ms: 400}),
          callTool('db:sleep', {ms: 10}),
          callTool('db:query', {sql: 'select 1'}),
        ]);
        let failed;
        try { await callTool('db:fail', {}); } catch (e) { failed = e.message; }
        const echoed = await callTool('echo', 'built-in');
        const tools = await listTools();
        return {results, failed, echoed, tools: tools.map(t => t.name), schema: tools.find(t => t.name === 'db:sleep').inputSchema};
        "#,
    )
    .await;
    let result = run.result();
    assert_eq!(result["results"][0], json!({"ms": 400}));
    assert_eq!(result["results"][1], json!({"ms": 10}));
    assert_eq!(result["results"][2]["args"], json!({"sql": "select 1"}));
    assert_eq!(
        result["results"][2]["deadline"],
        json!(true),
        "the call carries a gRPC deadline"
    );
    assert_eq!(
        result["failed"],
        "tool db:fail failed: relation \"users\" does not exist"
    );
    assert_eq!(result["echoed"], "built-in", "echo stays the broker's");
    assert_eq!(
        result["tools"],
        json!(["db:fail", "db:query", "db:sleep", "echo"])
    );
    assert_eq!(result["schema"]["required"], json!(["ms"]));
    // The short call came back first: its result event precedes the long one's.
    let finished: Vec<u64> = run
        .events
        .iter()
        .filter_map(|e| match e {
            enclave_broker::JobEvent::ToolResult { call_id, .. } => Some(*call_id),
            _ => None,
        })
        .collect();
    let started: Vec<u64> = run.tool_calls().iter().map(|c| c.call_id).collect();
    let position = |id| finished.iter().position(|f| *f == id).unwrap();
    assert!(
        position(started[1]) < position(started[0]),
        "{finished:?} {started:?}"
    );
    assert_eq!(db.max_in_flight.load(Ordering::SeqCst), 3);
    let calls = db.calls.lock().unwrap();
    assert!(
        calls
            .iter()
            .all(|c| c.job_id == calls[0].job_id && c.job_id.len() == 32)
    );
    assert!(calls.iter().all(|c| c.deadline_unix_ms > 0));
}

#[tokio::test]
async fn a_grpc_service_is_held_to_its_concurrency_cap() {
    let (url, db) = start_db(db_listing()).await;
    let broker = broker(
        tools(&format!(
            "[tool_services.db]\ngrpc = \"{url}\"\nmax_concurrency = 2\n"
        ))
        .unwrap(),
    )
    .await;
    listed(broker.tools(), "db:sleep").await;
    let run = run_code(
        &broker,
        "return (await Promise.all([1, 2, 3, 4, 5, 6].map(() => callTool('db:sleep', {ms: 100})))).length;",
    )
    .await;
    assert_eq!(run.result(), json!(6));
    assert_eq!(db.max_in_flight.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_grpc_service_that_is_down_fails_its_calls_clearly_and_nothing_else() {
    let dead = dead_port();
    let broker =
        broker(tools(&format!("[tool_services.db]\ngrpc = \"http://{dead}\"\n")).unwrap()).await;
    let run = run_code(
        &broker,
        "let e; try { await callTool('db:query', {}); } catch (err) { e = err.message; } return [e, await callTool('echo', 2)];",
    )
    .await;
    assert_eq!(
        run.result(),
        json!([
            "tool db:query failed: tool_services.db has not listed its tools yet (it is unreachable or starting)",
            2
        ])
    );
    assert!(!run.result().to_string().contains(&dead.port().to_string()));
}
