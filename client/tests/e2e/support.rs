//! A real `enclave-broker` process per test, on 127.0.0.1:0, with a key made here so the
//! pin is known without parsing it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

use enclave_client::{Client, ClientBuilder, Fingerprint};

/// The broker compiles the sandbox at start-up: seconds, more on a busy 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "enclave-client-e2e-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The broker binary of this workspace and build profile. No test builds it: a build
/// from here would use other features than the test build and make the next one
/// rebuild everything. `ENCLAVE_BROKER_BIN` names another one.
pub fn broker_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("ENCLAVE_BROKER_BIN") {
            return PathBuf::from(bin);
        }
        // tests run from <target>/<profile>/deps/; `cargo test --workspace` builds the
        // workspace's binaries there with the test build's own features.
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_owned();
        for name in ["enclave-broker", "enclave-executor"] {
            assert!(
                profile_dir.join(name).exists(),
                "{} is missing: run the tests with `cargo test --workspace`, which builds it",
                profile_dir.join(name).display()
            );
        }
        profile_dir.join("enclave-broker")
    })
    .clone()
}

pub struct Broker {
    child: Child,
    pub addr: SocketAddr,
    pub fingerprint: Fingerprint,
    args: Vec<String>,
    key: PathBuf,
    _dir: TempDir,
}

impl Broker {
    pub fn start(name: &str) -> Broker {
        Self::start_with(name, &[])
    }

    /// `args` are extra `enclave-broker` flags (`--allow-client`, `--session-idle-secs`).
    pub fn start_with(name: &str, args: &[&str]) -> Broker {
        let dir = TempDir::new(name);
        let key = dir.path().join("broker.key");
        let fingerprint = enclave_proto::keys::keygen(&key).unwrap().fingerprint();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (child, addr) = spawn(&key, "127.0.0.1:0", &args);
        Broker {
            child,
            addr,
            fingerprint,
            args,
            key,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn builder(&self) -> ClientBuilder {
        Client::builder(self.url()).pin(self.fingerprint)
    }

    pub async fn client(&self) -> Client {
        self.builder().connect().await.unwrap()
    }

    /// Kills the broker and starts it again on the same address with the same key: all
    /// sessions are gone, the pin still holds.
    pub fn restart(&mut self) {
        stop(&mut self.child);
        let (child, addr) = spawn(&self.key, &self.addr.to_string(), &self.args);
        self.child = child;
        assert_eq!(addr, self.addr);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts the broker and reads its start-up line (`broker serving addr=...`) from
/// stderr; the rest of stderr keeps being drained (and shown with `--nocapture`) so the
/// broker never blocks on a full pipe.
fn spawn(key: &Path, listen: &str, args: &[String]) -> (Child, SocketAddr) {
    let mut child = Command::new(broker_bin())
        .arg("--listen")
        .arg(listen)
        .arg("--identity")
        .arg(key)
        .args(args)
        .env("NO_COLOR", "1")
        .env("ENCLAVE_LOG", "info")
        // One compiled guest snapshot for every process the tests start.
        .env(
            "ENCLAVE_SNAPSHOT_DIR",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("snapshots"),
        )
        .env_remove("ENCLAVE_EXECUTORS")
        .env_remove("ENCLAVE_EXECUTOR_DNS")
        .env_remove("ENCLAVE_CONFIG")
        .env_remove("ENCLAVE_ALLOW_CLIENTS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting enclave-broker");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let line = strip_ansi(&line);
            eprintln!("[broker] {line}");
            if let Some(addr) = line
                .contains("broker serving")
                .then(|| field(&line, "addr="))
                .flatten()
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(addr);
            }
        }
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(addr) => (child, addr.parse().expect("broker address")),
        Err(_) => {
            stop(&mut child);
            panic!("enclave-broker did not report `broker serving addr=...` in time");
        }
    }
}

fn field(line: &str, key: &str) -> Option<String> {
    let rest = &line[line.find(key)? + key.len()..];
    Some(rest.split_whitespace().next()?.to_owned())
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A client identity file made with the CLI's own key format.
pub fn client_key(dir: &Path, name: &str) -> (PathBuf, Fingerprint) {
    let path = dir.join(name);
    let key = enclave_proto::keys::keygen(&path).unwrap();
    (path, key.fingerprint())
}
