//! The HTTP API's request bodies (docs/HTTP.md), through the broker's real router: the
//! protocol v1 endpoints' JSON and the legacy API's. Whatever the body and headers, the
//! answer is one the document lists (never a 5xx, never a panic), and every error is the
//! documented JSON: `{"code","message"}` for v1, `{"error"}` for the legacy API.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use enclave_broker::config::{ExecutorsConfig, JobsConfig};
use enclave_broker::http::{HttpApi, HttpOptions};
use enclave_broker::service::BrokerService;
use enclave_broker::session::{SessionLimits, SessionStore};
use enclave_broker::{Broker, RemotePool, Tools};
use enclave_proto::{IdentityKey, ServerConfig};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const ROUTES: &[&str] = &[
    "/v1/handshake",
    "/v1/execute",
    "/v1/execute/stream",
    "/v1/session/close",
    "/v1/session/rekey",
    "/handshake",
    "/execute",
    "/execute/stream",
];

/// A valid P-256 SPKI, so that a legacy session exists for `X-Session-Id`.
const CLIENT_SPKI: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEZWvikYWVaLeyWlFRNoTPCV37dxqULpuv/RMR3ktmOJOPhuz2h5QFLaXv4KXbu36m73x0UQIvWU7vebnWX+nbyA==";

struct Harness {
    runtime: tokio::runtime::Runtime,
    router: Router,
    legacy_session: String,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let router = runtime.block_on(async {
            // Executors that are never reached: no fuzz input can open a sealed record or
            // a legacy ciphertext, so no job runs, and the embedded sandbox is not needed.
            let executors = ExecutorsConfig {
                endpoints: vec!["http://127.0.0.1:9".into()],
                ..Default::default()
            };
            let backend = Arc::new(RemotePool::new(executors).await);
            let broker = Broker::new(Tools::new(), backend, JobsConfig::default());
            // A small table, so that sessions made by fuzz inputs stay bounded and the
            // "table full" answers are reached too.
            let sessions = Arc::new(SessionStore::new(SessionLimits {
                max_sessions: 64,
                max_unused: 64,
                ..Default::default()
            }));
            let identity = Arc::new(IdentityKey::from_seed(&[0x5e; 32]));
            let service =
                BrokerService::new(Arc::new(broker), sessions, ServerConfig::new(identity));
            HttpApi::new(service, HttpOptions { legacy_api: true }).router()
        });
        let hello = format!(r#"{{"type":"ClientHello","publicKey":"{CLIENT_SPKI}"}}"#);
        let (status, body) = runtime.block_on(send(&router, "/handshake", None, &[], hello.into()));
        assert_eq!(status, StatusCode::OK);
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let legacy_session = answer["sessionId"].as_str().unwrap().to_string();
        Harness {
            runtime,
            router,
            legacy_session,
        }
    })
}

async fn send(
    router: &Router,
    path: &str,
    content_type: Option<&str>,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    let mut request = Request::post(path);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, body.to_vec())
}

fuzz_target!(|data: &[u8]| {
    let [route, flags, rest @ ..] = data else {
        return;
    };
    let harness = harness();
    let path = ROUTES[*route as usize % ROUTES.len()];
    let legacy = !path.starts_with("/v1/");
    let content_type = (flags & 1 == 0).then_some("application/json");
    let session = match (flags >> 1) & 3 {
        0 => None,
        1 => Some(harness.legacy_session.as_str()),
        2 => Some("00000000-0000-4000-8000-000000000000"),
        _ => Some("not a uuid"),
    };
    let headers: Vec<(&str, &str)> = session.map(|s| ("x-session-id", s)).into_iter().collect();
    let (status, body) = harness.runtime.block_on(send(
        &harness.router,
        path,
        content_type,
        &headers,
        rest.to_vec(),
    ));
    assert!(
        !status.is_server_error(),
        "{path}: {status} {}",
        String::from_utf8_lossy(&body)
    );
    if status.is_success() {
        return;
    }
    let error: serde_json::Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{path}: {status} with a body that is not JSON ({e})"));
    if legacy {
        assert!(error["error"].is_string(), "{path}: {status} {error}");
    } else {
        assert!(
            error["code"].is_string() && error["message"].is_string(),
            "{path}: {status} {error}"
        );
    }
});
