//! Real `enclave-broker` and `enclave-executor` processes with TLS, and a self-signed
//! certificate made here for `localhost` and `127.0.0.1`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use enclave_client::Fingerprint;

/// The processes compile the sandbox at start-up: seconds, more on a busy 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "enclave-client-tls-{name}-{}-{}",
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

/// A self-signed certificate (its own CA) for `localhost` and `127.0.0.1`.
pub struct Cert {
    /// The certificate, PEM: both the server's certificate and the CA file clients trust.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Cert {
    pub fn new(dir: &Path, name: &str) -> Cert {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        Cert { cert, key }
    }
}

/// The binaries of this workspace and build profile, which `cargo test --workspace`
/// builds with the test build's own features.
fn bin(name: &str) -> PathBuf {
    // tests run from <target>/<profile>/deps/
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        bin.display()
    );
    bin
}

/// A child process, killed when dropped, with the fields of its start-up line.
pub struct Process {
    child: Child,
    fields: HashMap<String, String>,
}

impl Process {
    pub fn field(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("no `{key}=` in the start-up line"))
    }

    pub fn addr(&self) -> SocketAddr {
        self.field("addr").parse().unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn command(name: &str) -> Command {
    let mut cmd = Command::new(bin(name));
    cmd.env("NO_COLOR", "1")
        .env("ENCLAVE_LOG", "info")
        // One compiled guest snapshot for every process the tests start.
        .env(
            "ENCLAVE_SNAPSHOT_DIR",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("snapshots"),
        )
        .env_remove("ENCLAVE_EXECUTORS")
        .env_remove("ENCLAVE_EXECUTOR_DNS")
        .env_remove("ENCLAVE_EXECUTOR_CA")
        .env_remove("ENCLAVE_CONFIG")
        .env_remove("ENCLAVE_ALLOW_CLIENTS")
        .env_remove("ENCLAVE_TLS_CERT")
        .env_remove("ENCLAVE_TLS_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Starts `name` with `args` and waits for the line containing `ready`; the rest of
/// stderr keeps being drained (shown with `--nocapture`).
fn spawn(name: &str, args: &[&str], ready: &str) -> Process {
    let mut child = command(name)
        .args(args)
        .spawn()
        .expect("starting the binary");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let (tag, wanted) = (name.to_owned(), ready.to_owned());
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{tag}] {line}");
            if line.contains(&wanted)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(fields(&line));
            }
        }
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(fields) => Process { child, fields },
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} did not report `{ready}` in time");
        }
    }
}

/// `key=value` pairs of a tracing line (the first occurrence of each key wins).
fn fields(line: &str) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    for word in line.split_whitespace() {
        if let Some((key, value)) = word.split_once('=') {
            fields
                .entry(key.to_owned())
                .or_insert_with(|| value.to_owned());
        }
    }
    fields
}

/// A broker on 127.0.0.1:0 with a key made here; `args` are extra flags.
pub struct Broker {
    pub process: Process,
    pub fingerprint: Fingerprint,
    _dir: TempDir,
}

impl Broker {
    pub fn start(name: &str, args: &[&str]) -> Broker {
        let dir = TempDir::new(name);
        let key = dir.path().join("broker.key");
        let fingerprint = enclave_proto::keys::keygen(&key).unwrap().fingerprint();
        let mut all = vec![
            "--listen",
            "127.0.0.1:0",
            "--identity",
            key.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        let process = spawn("enclave-broker", &all, "broker serving");
        Broker {
            process,
            fingerprint,
            _dir: dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.process.addr().port()
    }

    pub fn http_port(&self) -> u16 {
        self.process
            .field("http_addr")
            .parse::<SocketAddr>()
            .unwrap()
            .port()
    }
}

/// An executor on 127.0.0.1:0; `args` are extra flags.
pub fn executor(args: &[&str]) -> Process {
    let mut all = vec!["--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    spawn("enclave-executor", &all, "executor serving")
}

/// Runs `name` with `args`, which must make it refuse to start: its exit status and
/// stderr. Killed (and the test failed) if it is still running after a while.
pub fn refused(name: &str, args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = command(name)
        .args(args)
        .spawn()
        .expect("starting the binary");
    let deadline = std::time::Instant::now() + START_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} {args:?} started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}
