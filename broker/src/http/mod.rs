//! The broker's HTTP/1.1 API (docs/HTTP.md), served next to gRPC on `--http-listen`.
//!
//! - Protocol v1 over HTTP ([`v1`]): the same handshake and sealed records as gRPC, the
//!   outer messages in the proto3 JSON mapping. Every endpoint calls the very
//!   [`BrokerRpc`](enclave_proto::v1::broker_server::Broker) method the gRPC service runs
//!   on the same [`BrokerService`], so both transports share sessions, limits and code;
//!   this module only translates JSON and statuses.
//! - The legacy API ([`legacy`]), wire-compatible with the seed's `EncryptedEnclaveClient`,
//!   for clients that cannot move yet; off unless `--legacy-api` turns it on.
//! - The playground: `GET /` and `GET /app.js`, a browser client of protocol v1, and
//!   `GET /client/<file>.js`, the modules of the `@enclave-vm/client` package (`js/client/`)
//!   that `app.js` imports: the one JavaScript implementation of protocol v1.
//!
//! Why axum: tonic 0.14 already builds on axum 0.8 and hyper 1, so the HTTP API adds no
//! second HTTP stack, and axum gives routing and body limits. Connections are served by
//! [`enclave_server::listener`], as gRPC's are, under the same policy.

pub mod legacy;
mod v1;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use enclave_proto::Fingerprint;
use enclave_proto::v1::Suite;
use enclave_server::listener::{self, Connections, HttpVersion, PeerAddr};
use tokio::net::TcpListener;

use crate::service::BrokerService;

/// The default `--http-listen` address: loopback only, like gRPC's default.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7780";

/// Largest request body. A sealed record carries at most a 16 MiB plaintext (gRPC's
/// message cap is 20 MiB); base64 makes that about 27 MiB of JSON.
pub const MAX_BODY_BYTES: usize = 32 << 20;

/// The playground page; `{{FINGERPRINT}}` becomes the broker's fingerprint when served,
/// so a page loaded from this broker pins this broker.
const INDEX_HTML: &str = include_str!("playground/index.html");
const APP_JS: &str = include_str!("playground/app.js");

/// `(name, source)` of each named file of `js/client/src/`, embedded at build time.
macro_rules! client_modules {
    ($($file:literal),* $(,)?) => {
        &[$(($file, include_str!(concat!("../../../js/client/src/", $file)))),*]
    };
}

/// The modules of `@enclave-vm/client` (`js/client/src/`), served as they are at
/// `/client/<file>` for the playground's `import … from './client/index.js'`. The test
/// below keeps this table equal to the directory.
const CLIENT_MODULES: &[(&str, &str)] = client_modules![
    "channel.js",
    "client.js",
    "constants.js",
    "crypto.js",
    "encoding.js",
    "errors.js",
    "events.js",
    "handshake.js",
    "http.js",
    "index.js",
    "keys.js",
    "messages.js",
    "protocol.js",
    "wire.js",
];

/// The page loads only its own script and talks only to its own origin; nothing inline.
/// `frame-ancestors 'none'` stops clickjacking, `base-uri 'none'` base-tag injection.
const PLAYGROUND_CSP: &str =
    "default-src 'self'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// `--http-listen`: an address, or `off` for no HTTP API at all.
pub use enclave_server::listener::ListenAddr as HttpListen;

/// What the HTTP API serves besides protocol v1.
#[derive(Clone, Debug, Default)]
pub struct HttpOptions {
    /// Serve the legacy API (`/handshake`, `/execute`, `/execute/stream`): off unless
    /// asked for, for its weaknesses (README.md).
    pub legacy_api: bool,
}

/// The HTTP API over one [`BrokerService`]. Cheap to clone.
#[derive(Clone)]
pub struct HttpApi {
    inner: Arc<Inner>,
}

struct Inner {
    service: BrokerService,
    fingerprint: Fingerprint,
    legacy: Option<Arc<legacy::LegacyApi>>,
}

impl HttpApi {
    pub fn new(service: BrokerService, options: HttpOptions) -> HttpApi {
        let fingerprint = service.handshake_config().identity.fingerprint();
        let legacy = options.legacy_api.then(|| {
            Arc::new(legacy::LegacyApi::new(
                service.broker().clone(),
                service.sessions().clone(),
            ))
        });
        HttpApi {
            inner: Arc::new(Inner {
                service,
                fingerprint,
                legacy,
            }),
        }
    }

    /// The legacy API's state, when it is enabled.
    pub fn legacy(&self) -> Option<&Arc<legacy::LegacyApi>> {
        self.inner.legacy.as_ref()
    }

    /// Every route, with the body limit and the headers every answer carries.
    pub fn router(&self) -> Router {
        let mut router = Router::new()
            .route("/", get(playground_index))
            .route("/app.js", get(playground_js))
            .route("/client/{file}", get(client_module))
            .route("/v1/info", get(info))
            .route("/v1/handshake", post(v1::handshake))
            .route("/v1/execute", post(v1::execute))
            .route("/v1/execute/stream", post(v1::execute_stream))
            .route("/v1/session/close", post(v1::close_session))
            .route("/v1/session/rekey", post(v1::rekey))
            .route("/v1/tools", post(v1::list_tools))
            .route("/v1/tool-result", post(v1::submit_tool_result))
            .with_state(self.clone());
        if let Some(legacy) = &self.inner.legacy {
            router = router.merge(legacy::router(legacy.clone()));
        }
        router
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .layer(axum::middleware::map_response(common_headers))
    }

    fn service(&self) -> &BrokerService {
        &self.inner.service
    }
}

/// Serves `api` on `listener` until `shutdown` resolves, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    api: HttpApi,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(
        listener,
        api,
        crate::server::default_connections(),
        None,
        shutdown,
    )
    .await
}

/// [`serve`] under `connections` (shared with the gRPC listener), over TLS when `tls`
/// is given (`--tls-cert` / `--tls-key`, see [`crate::tls`]).
pub async fn serve_with(
    listener: TcpListener,
    api: HttpApi,
    connections: Arc<Connections>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    api.service()
        .sessions()
        .spawn_sweeper(crate::session::DEFAULT_SWEEP_INTERVAL);
    listener::serve(
        listener,
        connections,
        HttpVersion::Http1,
        tls,
        api.router(),
        shutdown,
    )
    .await
}

/// The client's address as the connection gives it (for the per-source session cap).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(pub Option<PeerAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Peer, Infallible> {
        Ok(Peer(parts.extensions.get::<PeerAddr>().copied()))
    }
}

impl Peer {
    pub(crate) fn source(self) -> Option<crate::session::Source> {
        self.0.map(|p| crate::session::Source::of(p.0.ip()))
    }
}

/// The `tonic::Status` somewhere in an error's source chain: what the listener's request
/// body reports when a body is cut off (request memory budget, body timeout).
pub(crate) fn status_in(error: &(dyn std::error::Error + 'static)) -> Option<tonic::Status> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(status) = e.downcast_ref::<tonic::Status>() {
            return Some(status.clone());
        }
        current = e.source();
    }
    None
}

/// Headers on every answer: no MIME sniffing; API answers are per-session and must
/// never be cached by anything in between.
async fn common_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn playground_index(State(api): State<HttpApi>) -> Response {
    let page = INDEX_HTML.replace("{{FINGERPRINT}}", &api.inner.fingerprint.to_string());
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PLAYGROUND_CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    (headers, page).into_response()
}

async fn playground_js() -> Response {
    javascript(APP_JS)
}

/// `GET /client/<file>`: a module of `@enclave-vm/client`, or 404.
async fn client_module(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match CLIENT_MODULES.iter().find(|(name, _)| *name == file) {
        Some((_, source)) => javascript(source),
        None => not_found().await,
    }
}

/// A script of the playground: revalidated on each load, so a new broker's page never
/// runs an old one's modules.
fn javascript(source: &'static str) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    (headers, source).into_response()
}

/// `GET /v1/info`: what a client needs before its handshake (the fingerprint is for
/// display and trust-on-first-use tooling; a client should pin it out of band).
async fn info(State(api): State<HttpApi>) -> Response {
    let suites = [
        Suite::X25519Ed25519Aes256gcmSha256,
        Suite::P256Ed25519Aes256gcmSha256,
    ]
    .map(|s| s.as_str_name());
    let body = serde_json::json!({
        "version": enclave_proto::PROTOCOL_VERSION,
        "fingerprint": api.inner.fingerprint.to_string(),
        "suites": suites,
        "legacyApi": api.inner.legacy.is_some(),
    });
    json_response(StatusCode::OK, body.to_string())
}

async fn not_found() -> Response {
    ApiError::new(tonic::Code::NotFound, "no such endpoint (see docs/HTTP.md)").into_response()
}

fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A protocol v1 failure as HTTP: the status follows the gRPC code the same failure
/// gets over gRPC (docs/HTTP.md), the body is `{"code":"…","message":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: tonic::Code,
    pub message: String,
    /// A status outside the table: only 413 for a body over [`MAX_BODY_BYTES`], which no
    /// gRPC code describes.
    http: Option<StatusCode>,
}

impl ApiError {
    pub fn new(code: tonic::Code, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            http: None,
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> ApiError {
        ApiError::new(tonic::Code::InvalidArgument, message)
    }

    /// A request body the server could not read: over the size limit (413, as
    /// `INVALID_ARGUMENT`), refused by the listener (the request memory budget: 429
    /// `RESOURCE_EXHAUSTED`; too slow: 504 `DEADLINE_EXCEEDED`), or broken off (400).
    pub fn unreadable_body(rejection: &axum::extract::rejection::BytesRejection) -> ApiError {
        if let Some(status) = status_in(rejection) {
            return ApiError::from(status);
        }
        let mut error = ApiError::invalid_argument(rejection.body_text());
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            error.http = Some(StatusCode::PAYLOAD_TOO_LARGE);
        }
        error
    }

    /// The HTTP status of docs/HTTP.md's table.
    pub fn status(&self) -> StatusCode {
        self.http.unwrap_or_else(|| http_status(self.code))
    }

    /// The JSON object of the body (also the `error` of a stream's last line).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "code": code_name(self.code), "message": self.message })
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> ApiError {
        ApiError::new(status.code(), status.message())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.status(), self.to_json().to_string())
    }
}

/// docs/HTTP.md: INVALID_ARGUMENT 400, UNAUTHENTICATED 401, PERMISSION_DENIED 403,
/// NOT_FOUND 404, FAILED_PRECONDITION 412, ABORTED 409, RESOURCE_EXHAUSTED 429,
/// UNAVAILABLE 503, DEADLINE_EXCEEDED 504, everything else 500.
pub fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code;
    match code {
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The canonical gRPC code name (`UNAUTHENTICATED`), as grpc-gateway and the proto3 JSON
/// mapping of `google.rpc.Code` spell it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_documented_table() {
        use tonic::Code;
        let table = [
            (Code::InvalidArgument, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::FailedPrecondition, 412),
            (Code::Aborted, 409),
            (Code::ResourceExhausted, 429),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Internal, 500),
            (Code::DataLoss, 500),
            (Code::Unknown, 500),
        ];
        for (code, status) in table {
            assert_eq!(http_status(code).as_u16(), status, "{code:?}");
        }
        assert_eq!(code_name(Code::Unauthenticated), "UNAUTHENTICATED");
        assert_eq!(code_name(Code::FailedPrecondition), "FAILED_PRECONDITION");
    }

    #[test]
    fn serves_every_module_of_the_client_package() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../js/client/src");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".js"))
            .collect();
        on_disk.sort();
        let served: Vec<&str> = CLIENT_MODULES.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            served, on_disk,
            "CLIENT_MODULES lists js/client/src/*.js, sorted"
        );
        // What the playground imports is there.
        assert!(APP_JS.contains("from './client/index.js'"));
    }

    #[test]
    fn listen_addresses_parse() {
        assert_eq!("off".parse::<HttpListen>(), Ok(HttpListen(None)));
        let default: HttpListen = DEFAULT_HTTP_LISTEN.parse().unwrap();
        assert_eq!(default.to_string(), DEFAULT_HTTP_LISTEN);
        assert!("nonsense".parse::<HttpListen>().is_err());
    }
}
