//! The JavaScript packages (`js/`): `@enclave-vm/client` and `@enclave-vm/react`, tested
//! with Node's own test runner (`node --test js/*/test/*.test.mjs`) against this
//! build's `enclave-broker` binary, whose path the tests get from `ENCLAVE_BROKER_BIN`:
//! the known-answer vectors, the client's flows on both curves, expiry and restart,
//! client authentication, the hand-written types under `tsc`, and the package and the
//! React component in headless Chromium.
//!
//! Needs Node 20+, `tsc`, `esbuild`, React 18, Chromium and chromedriver; on Debian:
//! `nodejs node-typescript esbuild node-react node-react-dom node-csstype node-prop-types
//! chromium chromium-driver` (`./scripts/test` installs them).
//!
//! `roundtrip_js_vs_rust` (ignored; `cargo test -p enclave-broker --test js -- --ignored
//! --nocapture`) prints the time of one `execute` round trip from Node and from the Rust
//! client against one broker.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn snapshot_dir() -> PathBuf {
    // One compiled guest snapshot for every broker the tests start (as the other tests).
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("snapshots")
}

/// `ℹ name N` from the spec reporter's summary.
fn summary(output: &str, name: &str) -> Option<u64> {
    output.lines().rev().find_map(|line| {
        line.trim()
            .strip_prefix('ℹ')?
            .trim()
            .strip_prefix(name)?
            .trim()
            .parse()
            .ok()
    })
}

/// `js/*/test/*.test.mjs`: named one by one, as Node 20 would also run every other file
/// under a `test/` directory given whole (support modules, the pages' scripts).
fn test_files(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for package in ["client", "react"] {
        let dir = root.join("js").join(package).join("test");
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.to_string_lossy().ends_with(".test.mjs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn js_packages_pass_their_tests() {
    let root = repo_root();
    let files = test_files(&root);
    assert!(files.len() >= 8, "test files: {files:?}");
    let out = Command::new("node")
        .args(["--test", "--test-reporter=spec"])
        .args(&files)
        .current_dir(&root)
        .env("ENCLAVE_BROKER_BIN", env!("CARGO_BIN_EXE_enclave-broker"))
        .env("ENCLAVE_SNAPSHOT_DIR", snapshot_dir())
        .env("NO_COLOR", "1")
        .env("FORCE_COLOR", "0")
        .output()
        .expect("running `node` (Node.js 20+; Debian: apt-get install nodejs)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    let (tests, pass, fail) = (
        summary(&stdout, "tests"),
        summary(&stdout, "pass"),
        summary(&stdout, "fail"),
    );
    assert!(
        out.status.success(),
        "node --test failed ({}): {fail:?} of {tests:?} tests failed",
        out.status
    );
    let (Some(tests), Some(pass), Some(0)) = (tests, pass, fail) else {
        panic!("no test summary in node's output:\n{stdout}");
    };
    // Every test file ran: a runner that found nothing would pass too.
    assert!(tests >= 50, "only {tests} tests ran");
    assert_eq!(tests, pass, "skipped or cancelled tests");
}

// ---------------------------------------------------------------------------------------
// One `execute` round trip: Node (@enclave-vm/client over HTTP) against the Rust client
// (enclave-client over gRPC), on one broker, in one run.

/// A child process killed (and reaped) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The broker binary on loopback ports: (process, gRPC address, HTTP address, fingerprint).
fn start_broker() -> (Proc, String, String, String) {
    let dir = std::env::temp_dir().join(format!("enclave-js-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_enclave-broker"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--identity",
        ])
        .arg(dir.join("broker.key"))
        .env("NO_COLOR", "1")
        .env("ENCLAVE_LOG", "info")
        .env("ENCLAVE_SNAPSHOT_DIR", snapshot_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn enclave-broker");
    let stderr = child.stderr.take().unwrap();
    let proc = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("broker serving") {
                let field = |name: &str| {
                    line.split_whitespace()
                        .find_map(|token| token.strip_prefix(&format!("{name}=")))
                        .map(|v| v.trim_matches('"').to_owned())
                        .unwrap_or_default()
                };
                let _ = tx.send((field("addr"), field("http_addr"), field("fingerprint")));
            }
        }
    });
    let (grpc, http, fingerprint) = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the broker did not start");
    (proc, grpc, http, fingerprint)
}

fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: prints figures, asserts nothing"]
async fn roundtrip_js_vs_rust() {
    const N: usize = 50;
    let (_broker, grpc, http, fingerprint) = start_broker();

    // Node: js/client/bench/roundtrip.mjs prints one JSON line.
    let node = Command::new("node")
        .arg(repo_root().join("js/client/bench/roundtrip.mjs"))
        .args(["--server", &format!("http://{http}"), "--pin", &fingerprint])
        .args(["--n", &N.to_string()])
        .output()
        .expect("running node");
    assert!(
        node.status.success(),
        "{}",
        String::from_utf8_lossy(&node.stderr)
    );
    let js: serde_json::Value = serde_json::from_slice(&node.stdout).expect("the bench's JSON");

    // Rust: the same jobs, sequential, on one session, after the same warm-up.
    let client = enclave_client::Client::builder(format!("http://{grpc}"))
        .pin(fingerprint.parse().unwrap())
        .connect()
        .await
        .unwrap();
    for _ in 0..5 {
        client.execute("return 1").await.unwrap();
    }
    let mut samples = Vec::with_capacity(N);
    for _ in 0..N {
        let started = Instant::now();
        let run = client.execute("return 1").await.unwrap();
        samples.push(started.elapsed());
        assert_eq!(run.into_value().unwrap(), 1);
    }
    let rust = median_ms(samples);
    println!(
        "execute(`return 1`) round trip, median of {N} sequential on one session, one broker:\n  \
         Node {} (@enclave-vm/client, HTTP/1.1 + JSON): {:.3} ms (p90 {:.3} ms)\n  \
         Rust (enclave-client, gRPC):                  {rust:.3} ms",
        js["node"].as_str().unwrap_or("?"),
        js["median_ms"].as_f64().unwrap_or(f64::NAN),
        js["p90_ms"].as_f64().unwrap_or(f64::NAN),
    );
}
