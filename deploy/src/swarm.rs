//! The same `docker-compose.yml` deployed as a stack on a Docker Swarm
//! (`docker stack deploy`), the path past one machine.

use std::time::{Duration, Instant};

use enclave_client::{Client, Fingerprint};

use crate::{DeployError, Result, docker, images_exist, repository};

/// A stack of `docker-compose.yml` on this engine's swarm (made a one-node swarm first if
/// it is in none, and taken out of it again when the stack goes). Removed when dropped.
pub struct Stack {
    name: String,
    /// Whether this stack made the swarm, so must leave it.
    made_swarm: bool,
}

impl Stack {
    /// Deploys the stack and waits until its services run every replica, healthy.
    pub async fn deploy(name: &str) -> Result<Stack> {
        images_exist().await?;
        let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).await?;
        let made_swarm = state.trim() == "inactive";
        if made_swarm {
            docker(&["swarm", "init"]).await?;
        }
        let stack = Stack {
            name: name.to_owned(),
            made_swarm,
        };
        let file = repository().join("docker-compose.yml");
        crate::run(
            tokio::process::Command::new("docker")
                .args(["stack", "deploy", "-c"])
                .arg(&file)
                .arg(name)
                .current_dir(repository())
                // Ports of its own: the mesh publishes them on every address of the node.
                .env("ENCLAVE_GRPC_PORT", crate::free_port().to_string())
                .env("ENCLAVE_HTTP_PORT", crate::free_port().to_string())
                .env("ENCLAVE_TAG", crate::tag()),
            "docker stack deploy",
        )
        .await?;
        stack.wait_healthy(Duration::from_secs(90)).await?;
        Ok(stack)
    }

    pub fn service(&self, service: &str) -> String {
        format!("{}_{service}", self.name)
    }

    /// Running containers of one of the stack's services (on this node).
    pub async fn containers(&self, service: &str) -> Result<Vec<String>> {
        let filter = format!(
            "label=com.docker.swarm.service.name={}",
            self.service(service)
        );
        Ok(crate::ids(
            &docker(&["ps", "-q", "--no-trunc", "--filter", &filter]).await?,
        ))
    }

    /// Waits until every service runs all its replicas and every container is healthy.
    pub async fn wait_healthy(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let filter = format!("label=com.docker.stack.namespace={}", self.name);
            let replicas = docker(&[
                "service",
                "ls",
                "--filter",
                &filter,
                "--format",
                "{{.Replicas}}",
            ])
            .await?;
            let converged = !replicas.trim().is_empty()
                && replicas.lines().all(|r| {
                    let r = r.split_whitespace().next().unwrap_or("");
                    r.split_once('/').is_some_and(|(a, b)| a == b && a != "0")
                });
            let mut ids = self.containers("broker").await?;
            ids.extend(self.containers("executor").await?);
            let (healthy, states) = crate::health(&ids).await;
            if converged && healthy {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(DeployError::Timeout(format!(
                    "stack {} not healthy within {within:?}: replicas {}, containers {}",
                    self.name,
                    replicas.split_whitespace().collect::<Vec<_>>().join(" "),
                    states.split_whitespace().collect::<Vec<_>>().join(" ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The broker's container, its fingerprint, and a client of it from this host. The
    /// client connects to the broker's address on `docker_gwbridge`, the bridge every
    /// swarm container with published ports has on its node: what the routing mesh
    /// forwards to, reached without the mesh (which needs the kernel's IPVS, not in
    /// every VM).
    pub async fn client(&self) -> Result<(String, Fingerprint, Client)> {
        let broker = self
            .containers("broker")
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| DeployError::Unexpected("no broker container".into()))?;
        let out = docker(&["exec", &broker, "/enclave-broker", "fingerprint"]).await?;
        let pin = crate::parse_fingerprint(&out)?;
        let endpoints = docker(&[
            "network",
            "inspect",
            "docker_gwbridge",
            "--format",
            "{{range $id, $c := .Containers}}{{$id}} {{$c.IPv4Address}}\n{{end}}",
        ])
        .await?;
        let ip = endpoints
            .lines()
            .find_map(|l| {
                let (id, addr) = l.split_once(' ')?;
                (id == broker).then(|| addr.split('/').next().unwrap_or(addr).to_owned())
            })
            .ok_or_else(|| {
                DeployError::Unexpected("the broker is not on docker_gwbridge".into())
            })?;
        let client = crate::connect(&format!("http://{ip}:7700"), pin).await?;
        Ok((broker, pin, client))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let docker = |args: &[&str]| {
            std::process::Command::new("docker")
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
        };
        let _ = docker(&["stack", "rm", &self.name]);
        // The stack's containers and networks go in the background; its volume only once
        // no container uses it.
        let volume = format!("{}_broker-identity", self.name);
        for _ in 0..60 {
            let gone = !docker(&["volume", "inspect", &volume]).is_ok_and(|s| s.success());
            if gone || docker(&["volume", "rm", &volume]).is_ok_and(|s| s.success()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        if self.made_swarm {
            let _ = docker(&["swarm", "leave", "--force"]);
            // Made by `swarm init`, left behind by `swarm leave`.
            let _ = docker(&["network", "rm", "docker_gwbridge"]);
        }
    }
}
