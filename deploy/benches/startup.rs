//! Start-up of what the images run: process start to the "serving" log line, for the
//! executor compiling its guest snapshot (what every start cost before snapshots were
//! kept), the executor loading the precompiled one the image carries, and the broker
//! (with remote executors, as compose runs it, and embedded). Then a container of each
//! image, `docker run` to the serving line (the broker's with remote executors, then
//! alone, embedded).
//!
//! `./scripts/images` first (it builds the binaries under target/images), then
//! `cargo bench -p enclave-deploy --bench startup [-- RUNS]`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10);
    let images = enclave_deploy::repository().join("target/images");
    let executor = images.join("executor/enclave-executor");
    let broker = images.join("broker/enclave-broker");
    assert!(
        executor.exists() && broker.exists(),
        "{} has no binaries: run ./scripts/images first",
        images.display()
    );
    let snapshot = images.join("executor/snapshot");
    let scratch = std::env::temp_dir().join(format!("enclave-startup-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let key = scratch.join("broker.key");
    let key = key.to_str().unwrap();
    let listen = ["--listen", "127.0.0.1:0"];

    println!("process start -> serving line, {runs} runs each (median, min-max):");
    let compiled = measure(runs, || process(&executor, &listen, "executor serving"));
    report("executor, compiling the snapshot", &compiled);
    let snapshot_dir = snapshot.to_str().unwrap();
    let loaded = measure(runs, || {
        process(
            &executor,
            &[&listen[..], &["--snapshot-dir", snapshot_dir]].concat(),
            "executor serving",
        )
    });
    report("executor, precompiled snapshot (the image)", &loaded);
    println!(
        "  ratio compiled / precompiled: {:.0}x",
        median(&compiled).as_secs_f64() / median(&loaded).as_secs_f64()
    );
    let broker_with = |extra: &[&str]| {
        let args = [
            &listen[..],
            &["--http-listen", "127.0.0.1:0", "--identity", key],
            extra,
        ]
        .concat();
        measure(runs, || process(&broker, &args, "broker serving"))
    };
    let remote = broker_with(&["--executor-dns", "executor.invalid:7701"]);
    report("broker, remote executors (compose)", &remote);
    let embedded = broker_with(&["--snapshot-dir", snapshot_dir]);
    report("broker, embedded, precompiled snapshot", &embedded);

    let tag = enclave_deploy::tag();
    println!("container start (`docker run -d`) -> serving line, {runs} runs each:");
    for (image, args, needle) in [
        ("enclave-executor", &[][..], "executor serving"),
        (
            "enclave-broker",
            &["--executor-dns", "executor.invalid:7701"][..],
            "broker serving",
        ),
        ("enclave-broker", &[][..], "broker serving"),
    ] {
        let image = format!("{image}:{tag}");
        let times = measure(runs, || container(&image, args, needle));
        let what = match args.is_empty() {
            true if image.contains("broker") => format!("{image} (embedded)"),
            _ => image.clone(),
        };
        report(&what, &times);
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

fn measure(runs: usize, mut once: impl FnMut() -> Duration) -> Vec<Duration> {
    let mut times: Vec<Duration> = (0..runs).map(|_| once()).collect();
    times.sort();
    times
}

fn median(sorted: &[Duration]) -> Duration {
    sorted[sorted.len() / 2]
}

fn report(what: &str, sorted: &[Duration]) {
    println!(
        "  {what:<45} {:>7.1} ms  ({:.1}-{:.1})",
        ms(median(sorted)),
        ms(sorted[0]),
        ms(sorted[sorted.len() - 1])
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Spawns `binary` and times it to the first log line containing `needle`.
fn process(binary: &Path, args: &[&str], needle: &str) -> Duration {
    let started = Instant::now();
    let mut child = Command::new(binary)
        .args(args)
        .env_remove("ENCLAVE_SNAPSHOT_DIR")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = None;
    for line in stderr.lines().map_while(Result::ok) {
        if line.contains(needle) {
            seen = Some(started.elapsed());
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    seen.unwrap_or_else(|| panic!("{} never logged `{needle}`", binary.display()))
}

/// Starts a container of `image` and times `docker run` to the serving line in its log.
fn container(image: &str, args: &[&str], needle: &str) -> Duration {
    let started = Instant::now();
    let out = Command::new("docker")
        .args(["run", "-d", "--rm", image])
        .args(args)
        .output()
        .expect("docker");
    assert!(
        out.status.success(),
        "docker run {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let took = loop {
        let logs = Command::new("docker").args(["logs", &id]).output().unwrap();
        if String::from_utf8_lossy(&logs.stderr).contains(needle) {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{image} did not serve within 30 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = Command::new("docker").args(["rm", "-f", &id]).output();
    took
}
