//! Prometheus metrics: `GET /metrics` on `--metrics-listen` (off unless given), in the
//! Prometheus text format 0.0.4, which every scraper and `promtool` read.
//!
//! Why `prometheus-client`: it is the Prometheus project's own Rust client; metrics are
//! typed, label sets are Rust types (so labels stay bounded by construction: no session
//! ids, no script text, no tool arguments), there is no global registry, and it encodes
//! the text format itself. Each server builds one [`Registry`] at start-up; what it
//! already counts for its own logs (connections, sessions) is read at scrape time by a
//! collector rather than counted twice.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::listener::{self, ConnectionPolicy, Connections, HttpVersion};

/// Scrapers open a connection or two; a few more leave room for a person with `curl`.
const MAX_SCRAPE_CONNECTIONS: usize = 16;

/// `--metrics-listen`: an address to serve `/metrics` on, or `off` (the default).
pub use crate::listener::ListenAddr as MetricsListen;

/// The registry in the text format.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry)
        .expect("writing to a String cannot fail");
    text
}

/// Serves `GET /metrics` from `registry` on `listener` (if any: without one, returns at
/// once) until `shutdown`, with its own small connection cap, so that scrapes never
/// compete with clients for connections.
pub async fn serve(
    listener: Option<TcpListener>,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Some(listener) = listener else {
        return Ok(());
    };
    let router = Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move { exposition(&registry) }
        }),
    );
    let connections = Connections::new(ConnectionPolicy {
        max_connections: MAX_SCRAPE_CONNECTIONS,
        ..ConnectionPolicy::default()
    });
    listener::serve(
        listener,
        connections,
        HttpVersion::Http1,
        None,
        router,
        shutdown,
    )
    .await
}

fn exposition(registry: &Registry) -> Response {
    let mut response = encode(registry).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(prometheus_client::encoding::prometheus_text::CONTENT_TYPE),
    );
    response
}

/// What a listener's connection policy did ([`crate::listener::ConnectionStats`]), read
/// at each scrape: `enclave_connections_*`.
pub struct ConnectionMetrics(pub Arc<Connections>);

impl fmt::Debug for ConnectionMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConnectionMetrics")
    }
}

impl Collector for ConnectionMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let stats = self.0.stats();
        let open = ConstGauge::new(self.0.open() as i64);
        open.encode(encoder.encode_descriptor(
            "enclave_connections_open",
            "Connections open now",
            None,
            open.metric_type(),
        )?)?;
        let counters = [
            ("accepted", "Connections accepted", &stats.accepted),
            (
                "refused",
                "Connections refused at the cap with none idle to replace",
                &stats.refused,
            ),
            (
                "evicted",
                "Idle connections closed to make room for a new one",
                &stats.evicted,
            ),
            (
                "timed_out",
                "Connections closed after their header or idle timeout",
                &stats.timed_out,
            ),
            (
                "write_stalls",
                "Connections closed because a write made no progress",
                &stats.write_stalls,
            ),
            (
                "tls_refused",
                "Connections refused because the TLS handshake cap was reached",
                &stats.tls_refused,
            ),
            (
                "tls_failed",
                "TLS handshakes that failed or timed out",
                &stats.tls_failed,
            ),
            (
                "body_timeouts",
                "Requests whose body did not arrive in time",
                &stats.body_timeouts,
            ),
            (
                "memory_refused",
                "Requests refused because the request memory budget was spent",
                &stats.memory_refused,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value.load(std::sync::atomic::Ordering::Relaxed));
            counter.encode(encoder.encode_descriptor(
                &format!("enclave_connections_{name}"),
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}
