//! The path past one machine: `docker-compose.yml` as a stack on a swarm (a one-node
//! swarm here), where the broker finds every executor task by DNS (`endpoint_mode:
//! dnsrr`) and `docker service scale` adds executors that take jobs.

use std::time::{Duration, Instant};

use enclave_deploy::swarm::Stack;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_compose_file_deploys_as_a_swarm_stack() {
    let _serial = one_at_a_time().await;
    let name = format!("enclave-test-stack-{}", std::process::id());
    let deployed = Instant::now();
    let stack = Stack::deploy(&name).await.unwrap();
    let healthy = deployed.elapsed();
    let (broker, _pin, client) = stack.client().await.unwrap();
    let network = stack.service("executors");
    // The broker may have started before the executors' DNS records existed; it asks
    // again every second while it knows none.
    let first = Instant::now();
    while let Err(e) = trivial(&client).await {
        assert!(
            first.elapsed() < Duration::from_secs(3),
            "no job ran within 3 s of the stack being healthy: {e}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = first.elapsed();

    let every_executor_works = |replicas: usize| {
        let (stack, client, broker, network) = (&stack, &client, &broker, &network);
        async move {
            let started = Instant::now();
            loop {
                let executors = stack.containers("executor").await.unwrap();
                let counts = enclave_deploy::jobs_by_executor(broker, &executors, network)
                    .await
                    .unwrap();
                if counts.len() == replicas && counts.iter().all(|(_, n)| *n > 0) {
                    return started.elapsed();
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "not every executor task took a job: {counts:?}"
                );
                spread_jobs(client).await;
            }
        }
    };
    every_executor_works(2).await;
    let scaled = Instant::now();
    docker(&[
        "service",
        "scale",
        "--detach",
        &format!("{}=3", stack.service("executor")),
    ])
    .await
    .unwrap();
    let taking = every_executor_works(3).await;
    println!(
        "swarm stack: deployed and healthy in {} ms, first job {} ms later; scaled to 3 \
         executors, all taking jobs {} ms later",
        healthy.as_millis(),
        first.as_millis(),
        (scaled.elapsed().max(taking)).as_millis()
    );
}
