//! What an operator scrapes in the compose deployment: both servers serve `/metrics` on
//! the compose networks, unpublished, and count the same jobs.

use std::net::SocketAddr;

use enclave_deploy::container_ip;

use crate::support::*;

/// A sample's value in a Prometheus text exposition (0 when absent).
fn sample(exposition: &str, key: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// `/metrics` of `container`, at its address on `network` (as a Prometheus on that
/// network reaches it).
async fn scrape(container: &str, network: &str) -> String {
    let ip = container_ip(container, network)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{container} is not on {network}"));
    let addr: SocketAddr = format!("{ip}:9100").parse().unwrap();
    enclave_server::healthcheck::get(addr, "/metrics")
        .await
        .unwrap()
        .body
}

#[tokio::test(flavor = "multi_thread")]
async fn both_servers_serve_metrics_on_the_internal_network_and_agree() {
    let (_serial, project, client) = ready(2).await;
    let network = project.executor_network();
    let broker = project.containers("broker").await.unwrap().remove(0);
    let executors = project.containers("executor").await.unwrap();
    let ok = r#"{outcome="OK"}"#;
    let counts = || async {
        let by_broker = sample(
            &scrape(&broker, &network).await,
            &format!("enclave_broker_jobs_finished_total{ok}"),
        );
        let mut by_executors = 0.0;
        for executor in &executors {
            by_executors += sample(
                &scrape(executor, &network).await,
                &format!("enclave_executor_jobs_finished_total{ok}"),
            );
        }
        (by_broker, by_executors)
    };
    let before = counts().await;
    assert_eq!(before.0, before.1, "before: {before:?}");
    for _ in 0..10 {
        trivial(&client).await.unwrap();
    }
    let after = counts().await;
    println!("jobs OK before {before:?}, after {after:?} (broker, executors)");
    assert_eq!((after.0 - before.0, after.1 - before.1), (10.0, 10.0));
    let pool = scrape(&broker, &network).await;
    assert_eq!(
        sample(&pool, r#"enclave_broker_executors{state="healthy"}"#),
        2.0,
        "{pool}"
    );
    // Not published: only the broker's two API ports reach the host.
    let published = docker(&["port", &broker]).await.unwrap();
    assert!(!published.contains("9100"), "{published}");
}
