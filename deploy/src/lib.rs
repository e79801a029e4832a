//! How enclave is deployed: the container images (`deploy/images/*.Dockerfile`, built by
//! `./scripts/images`), the compose file (`docker-compose.yml` at the top of the
//! repository) and the broker config it mounts (`deploy/broker.toml`).
//!
//! The library is [`Project`]: one compose project of those images, started from that
//! very file and driven as an operator would (scale, kill, cut off, restart), for the
//! fault tests in `tests/faults`. Nothing here is a stand-in: real containers, real
//! networks, the Rust client from the host.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use enclave_client::{Client, Fingerprint};
use tokio::process::Command;

pub mod swarm;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(
        "`{command}` could not run ({error}): these tests need a Docker engine with Compose v2 \
         (./scripts/install-compose) and the images from ./scripts/images"
    )]
    Spawn {
        command: String,
        error: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("the image {0} is missing: build it with ./scripts/images (./scripts/test does)")]
    MissingImage(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Unexpected(String),
}

pub type Result<T, E = DeployError> = std::result::Result<T, E>;

/// The repository's top level, where `docker-compose.yml` is.
pub fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("deploy/ is in the repository")
        .to_owned()
}

/// The image tag the project runs (`ENCLAVE_TAG`, as `./scripts/images` builds it).
pub fn tag() -> String {
    std::env::var("ENCLAVE_TAG").unwrap_or_else(|_| "latest".into())
}

/// Runs `docker` with `args`; its stdout, or why it failed.
pub async fn docker(args: &[&str]) -> Result<String> {
    run(
        Command::new("docker").args(args),
        &format!("docker {}", args.join(" ")),
    )
    .await
}

/// Runs `command` (shown in errors as `shown`); its stdout, or why it failed.
pub(crate) async fn run(command: &mut Command, shown: &str) -> Result<String> {
    let out = command
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|error| DeployError::Spawn {
            command: shown.to_owned(),
            error,
        })?;
    if !out.status.success() {
        return Err(DeployError::Failed {
            command: shown.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What `enclave-broker fingerprint` printed.
fn parse_fingerprint(printed: &str) -> Result<Fingerprint> {
    printed
        .trim()
        .parse()
        .map_err(|e| DeployError::Unexpected(format!("fingerprint `{}`: {e}", printed.trim())))
}

/// A client of the broker at `server`, pinned to `pin`.
async fn connect(server: &str, pin: Fingerprint) -> Result<Client> {
    Client::builder(server)
        .pin(pin)
        .connect()
        .await
        .map_err(|e| DeployError::Unexpected(format!("connecting to the broker: {e}")))
}

/// Container ids, one per line of `docker ... -q` output.
fn ids(output: &str) -> Vec<String> {
    output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether every one of `containers` (at least one) is healthy, and their states.
async fn health(containers: &[String]) -> (bool, String) {
    let mut args = vec!["inspect", "--format", "{{.State.Health.Status}}"];
    args.extend(containers.iter().map(String::as_str));
    let states = docker(&args).await.unwrap_or_default();
    let healthy = !containers.is_empty() && states.lines().all(|s| s.trim() == "healthy");
    (healthy, states)
}

/// Fails with what to do when the engine or the images are missing.
pub async fn images_exist() -> Result<()> {
    for image in ["enclave-broker", "enclave-executor"] {
        let image = format!("{image}:{}", tag());
        if docker(&["image", "inspect", "--format", "{{.Id}}", &image])
            .await
            .is_err()
        {
            // Tell a missing engine from a missing image.
            docker(&["version", "--format", "{{.Server.Version}}"]).await?;
            return Err(DeployError::MissingImage(image));
        }
    }
    Ok(())
}

/// A compose project of `docker-compose.yml` under a name of its own, taken down with
/// its volumes and networks when dropped.
pub struct Project {
    name: String,
    /// Host ports the broker's gRPC and HTTP listeners are published on.
    pub grpc_port: u16,
    pub http_port: u16,
    env: Vec<(String, String)>,
}

impl Project {
    /// Starts the broker and `executors` executors and waits until all of them report
    /// healthy. `env` sets the compose file's variables (`ENCLAVE_EXECUTOR_CPUS`, ...).
    pub async fn up(executors: usize, env: &[(&str, &str)]) -> Result<Project> {
        images_exist().await?;
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "enclave-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let (grpc_port, http_port) = (free_port(), free_port());
        let mut all_env: Vec<(String, String)> = vec![
            ("ENCLAVE_GRPC_PORT".into(), grpc_port.to_string()),
            ("ENCLAVE_HTTP_PORT".into(), http_port.to_string()),
            ("ENCLAVE_TAG".into(), tag()),
        ];
        all_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let project = Project {
            name,
            grpc_port,
            http_port,
            env: all_env,
        };
        project.scale_executors(executors).await?;
        project.wait_healthy(Duration::from_secs(60)).await?;
        Ok(project)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `docker compose` on this project; its stdout.
    pub async fn compose(&self, args: &[&str]) -> Result<String> {
        let file = repository().join("docker-compose.yml");
        let mut command = Command::new("docker");
        command
            .arg("compose")
            .arg("-p")
            .arg(&self.name)
            .arg("-f")
            .arg(&file)
            .args(args)
            .current_dir(repository())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        run(&mut command, &format!("docker compose {}", args.join(" "))).await
    }

    /// `up --scale executor=N`, leaving the running containers as they are.
    pub async fn scale_executors(&self, executors: usize) -> Result<()> {
        let scale = format!("executor={executors}");
        self.compose(&["up", "-d", "--no-recreate", "--scale", &scale])
            .await
            .map(drop)
    }

    /// Container ids of `service`, running or not.
    pub async fn containers(&self, service: &str) -> Result<Vec<String>> {
        Ok(ids(&self.compose(&["ps", "-q", service]).await?))
    }

    /// Waits until every container of the project is running and healthy.
    pub async fn wait_healthy(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let mut ids = self.containers("broker").await?;
            ids.extend(self.containers("executor").await?);
            let (healthy, states) = health(&ids).await;
            if healthy {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(DeployError::Timeout(format!(
                    "project {} not healthy within {within:?}: {}",
                    self.name,
                    states.split_whitespace().collect::<Vec<_>>().join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The broker's fingerprint, as a user reads it: `enclave-broker fingerprint` in the
    /// broker's container (the image has no shell; the binary prints it).
    pub async fn fingerprint(&self) -> Result<Fingerprint> {
        let out = self
            .compose(&["exec", "-T", "broker", "/enclave-broker", "fingerprint"])
            .await?;
        parse_fingerprint(&out)
    }

    /// A client of the broker from the host, pinned to the broker's key.
    pub async fn client(&self) -> Result<Client> {
        let pin = self.fingerprint().await?;
        connect(&format!("http://127.0.0.1:{}", self.grpc_port), pin).await
    }

    /// The `executors` network's full name (compose prefixes the project's).
    pub fn executor_network(&self) -> String {
        format!("{}_executors", self.name)
    }

    /// Jobs the broker has logged as finished on each executor container, by id.
    pub async fn jobs_by_executor(&self) -> Result<Vec<(String, usize)>> {
        let broker = self.containers("broker").await?;
        let broker = broker
            .first()
            .ok_or_else(|| DeployError::Unexpected("no broker container".into()))?;
        let executors = self.containers("executor").await?;
        jobs_by_executor(broker, &executors, &self.executor_network()).await
    }
}

/// Jobs the broker container `broker` has logged as finished on each of the `executors`
/// containers, which it knows by their address on `network` (its `job finished` lines
/// name the executor).
pub async fn jobs_by_executor(
    broker: &str,
    executors: &[String],
    network: &str,
) -> Result<Vec<(String, usize)>> {
    let out = Command::new("docker")
        .args(["logs", broker])
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|error| DeployError::Spawn {
            command: "docker logs".into(),
            error,
        })?;
    // The broker logs to stderr.
    let log = String::from_utf8_lossy(&out.stderr);
    let mut counts = Vec::new();
    for id in executors {
        let ip = container_ip(id, network).await?;
        let n = match ip {
            None => 0,
            Some(ip) => {
                let needle = format!("executor=http://{ip}:7701 ");
                log.lines()
                    .filter(|l| l.contains("job finished") && l.contains(&needle))
                    .count()
            }
        };
        counts.push((id.clone(), n));
    }
    Ok(counts)
}

/// The address of `container` on `network`, if it is on it.
pub async fn container_ip(container: &str, network: &str) -> Result<Option<String>> {
    let format = format!(
        "{{{{with index .NetworkSettings.Networks \"{network}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}"
    );
    let ip = docker(&["inspect", "--format", &format, container]).await?;
    let ip = ip.trim();
    Ok((!ip.is_empty()).then(|| ip.to_owned()))
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["compose", "-p", &self.name, "-f"])
            .arg(repository().join("docker-compose.yml"))
            .args(["down", "-v", "--remove-orphans", "-t", "1"])
            .current_dir(repository())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on loopback")
}
