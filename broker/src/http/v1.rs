//! Protocol v1 over HTTP: the outer messages in the proto3 JSON mapping, everything else
//! exactly as over gRPC.
//!
//! Each handler parses the JSON body into the generated message, calls the gRPC
//! service's own method on the shared [`BrokerService`](crate::service::BrokerService)
//! and writes its answer back as JSON. No protocol logic lives here: sessions, replay
//! window, epochs, job caps, cancellation and sealing are the service's.

use std::convert::Infallible;
use std::future::ready;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use enclave_proto::v1::broker_server::Broker as BrokerRpc;
use enclave_proto::v1::{HandshakeRequest, SealedRecord};
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Status};

use super::{ApiError, HttpApi, Peer, json_response};

type Answer = Result<Response, ApiError>;

pub(super) async fn handshake(
    State(api): State<HttpApi>,
    peer: Peer,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let request: HandshakeRequest = parse(body, "HandshakeRequest")?;
    answer(api.service().handshake(call(peer, request)).await)
}

pub(super) async fn execute(
    State(api): State<HttpApi>,
    peer: Peer,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let record: SealedRecord = parse(body, "SealedRecord")?;
    answer(
        api.service()
            .execute(traced(call(peer, record), &headers))
            .await,
    )
}

pub(super) async fn close_session(
    State(api): State<HttpApi>,
    peer: Peer,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let record: SealedRecord = parse(body, "SealedRecord")?;
    answer(api.service().close_session(call(peer, record)).await)
}

pub(super) async fn rekey(
    State(api): State<HttpApi>,
    peer: Peer,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let record: SealedRecord = parse(body, "SealedRecord")?;
    answer(api.service().rekey(call(peer, record)).await)
}

pub(super) async fn list_tools(
    State(api): State<HttpApi>,
    peer: Peer,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let record: SealedRecord = parse(body, "SealedRecord")?;
    answer(api.service().list_tools(call(peer, record)).await)
}

pub(super) async fn submit_tool_result(
    State(api): State<HttpApi>,
    peer: Peer,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let record: SealedRecord = parse(body, "SealedRecord")?;
    answer(api.service().submit_tool_result(call(peer, record)).await)
}

/// The service's request for `message`, with the connection's peer as gRPC has it.
fn call<T>(peer: Peer, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(addr) = peer.0 {
        request.extensions_mut().insert(addr);
    }
    request
}

/// `request` with the client's trace context (W3C `traceparent` and `tracestate`), as a
/// gRPC client would send it in metadata.
fn traced<T>(mut request: Request<T>, headers: &HeaderMap) -> Request<T> {
    for name in ["traceparent", "tracestate"] {
        if let Some(value) = headers.get(name) {
            request.metadata_mut().as_mut().insert(name, value.clone());
        }
    }
    request
}

/// `POST /v1/execute/stream`: one `SealedRecord` per line as the service produces them.
///
/// Backpressure: the body is pulled only as fast as the socket takes it, so the
/// service's bounded channel fills and the job waits (as over gRPC). Cancellation: when
/// the client goes away hyper drops the body, which drops the service's stream; the
/// service sees its channel closed and stops the job.
pub(super) async fn execute_stream(
    State(api): State<HttpApi>,
    peer: Peer,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let record: SealedRecord = parse(body, "SealedRecord")?;
    let records = api
        .service()
        .execute_stream(traced(call(peer, record), &headers))
        .await
        .map_err(ApiError::from)?
        .into_inner();
    let mut response = Response::new(Body::from_stream(ndjson(records)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    // Reverse proxies that buffer responses (nginx) would hold events back until the end.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Records as JSON lines; a failure after the stream started becomes a last line
/// `{"error":{"code","message"}}` (the status line has long been sent).
fn ndjson(
    records: impl Stream<Item = Result<SealedRecord, Status>> + Send + 'static,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    records.scan(false, |ended, item| {
        if *ended {
            return ready(None);
        }
        let mut line = match item.map(|record| serde_json::to_vec(&record)) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => {
                *ended = true;
                error_line(&ApiError::new(
                    tonic::Code::Internal,
                    format!("encoding a record: {e}"),
                ))
            }
            Err(status) => {
                *ended = true;
                error_line(&ApiError::from(status))
            }
        };
        line.push(b'\n');
        ready(Some(Ok(Bytes::from(line))))
    })
}

fn error_line(error: &ApiError) -> Vec<u8> {
    serde_json::json!({ "error": error.to_json() })
        .to_string()
        .into_bytes()
}

/// The body as message `T` in the proto3 JSON mapping, or the documented error answer.
fn parse<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    what: &str,
) -> Result<T, ApiError> {
    let body = body.map_err(|r| ApiError::unreadable_body(&r))?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid_argument(format!(
            "the body is not a {what} in the proto3 JSON mapping: {e}"
        ))
    })
}

/// A unary call's reply as JSON, or its status as the matching HTTP error.
fn answer<T: Serialize>(reply: Result<tonic::Response<T>, Status>) -> Answer {
    Ok(message(&reply.map_err(ApiError::from)?.into_inner()))
}

fn message<T: Serialize>(message: &T) -> Response {
    match serde_json::to_vec(message) {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(e) => ApiError::new(tonic::Code::Internal, format!("encoding the answer: {e}"))
            .into_response(),
    }
}
