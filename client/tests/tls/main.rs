//! TLS end to end: a broker and an executor serving TLS with a self-signed certificate
//! made here, and the client library, the `enclave` CLI, reqwest and the broker itself
//! (to its executors) trusting it through a CA file.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use enclave_client::Client;
use serde_json::{Value, json};

use support::{Broker, Cert, TempDir};

/// Failures must come quickly, not after a hang.
const FAIL_WITHIN: Duration = Duration::from_secs(20);

fn tls_args(cert: &Cert) -> [&str; 4] {
    [
        "--tls-cert",
        cert.cert.to_str().unwrap(),
        "--tls-key",
        cert.key.to_str().unwrap(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_runs_jobs_over_tls_and_refuses_plaintext_and_a_wrong_ca() {
    let dir = TempDir::new("client");
    let cert = Cert::new(dir.path(), "broker");
    let other = Cert::new(dir.path(), "other");
    let mut args = tls_args(&cert).to_vec();
    args.extend(["--http-listen", "off"]);
    let broker = Broker::start("client", &args);
    assert_eq!(broker.process.field("tls"), "true");

    for host in ["127.0.0.1", "localhost"] {
        let url = format!("https://{host}:{}", broker.port());
        let client = Client::builder(&url)
            .pin(broker.fingerprint)
            .ca_file(&cert.cert)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let run = client
            .execute("return await callTool('echo', {n: 1 + 1})")
            .await
            .unwrap();
        assert_eq!(run.result, Ok(json!({"n": 2})), "{url}");
    }

    // Plaintext gRPC to a TLS listener: a clear connection failure, not a hang.
    let plaintext = Client::builder(format!("http://127.0.0.1:{}", broker.port()))
        .pin(broker.fingerprint)
        .connect_timeout(Duration::from_secs(5))
        .connect();
    let error = match tokio::time::timeout(FAIL_WITHIN, plaintext)
        .await
        .expect("a plaintext client fails quickly")
    {
        Ok(_) => panic!("a plaintext client is refused"),
        Err(e) => e,
    };
    // Usually the first RPC fails (with the hint); the connection may also break first.
    let message = error.to_string();
    assert!(
        message.contains("if it serves TLS, use https://")
            || message.starts_with("cannot reach the broker"),
        "{message}"
    );

    // A certificate that does not chain to the CA given: the TLS handshake fails.
    let wrong_ca = Client::builder(format!("https://127.0.0.1:{}", broker.port()))
        .pin(broker.fingerprint)
        .ca_file(&other.cert)
        .connect_timeout(Duration::from_secs(5))
        .connect();
    let error = match tokio::time::timeout(FAIL_WITHIN, wrong_ca)
        .await
        .expect("a client with the wrong CA fails quickly")
    {
        Ok(_) => panic!("a client with the wrong CA is refused"),
        Err(e) => e,
    };
    let message = error.to_string();
    assert!(
        message.contains("cannot reach the broker") && message.contains("certificate"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_the_http_api_work_over_tls() {
    let dir = TempDir::new("cli-http");
    let cert = Cert::new(dir.path(), "broker");
    let mut args = tls_args(&cert).to_vec();
    args.extend(["--http-listen", "127.0.0.1:0"]);
    let broker = Broker::start("cli-http", &args);

    // The CLI, with --ca-file.
    let script = dir.path().join("job.js");
    std::fs::write(&script, "console.log('over tls'); return {ok: true};").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_enclave"))
        .env_remove("ENCLAVE_SERVER")
        .env_remove("ENCLAVE_PIN")
        .env_remove("ENCLAVE_CA_FILE")
        .env_remove("ENCLAVE_IDENTITY")
        .env_remove("ENCLAVE_CURVE")
        .env_remove("ENCLAVE_LEVEL")
        .env_remove("ENCLAVE_JSON")
        .env_remove("ENCLAVE_LOG")
        .arg("run")
        .arg("--server")
        .arg(format!("https://localhost:{}", broker.port()))
        .arg("--pin")
        .arg(broker.fingerprint.to_string())
        .arg("--ca-file")
        .arg(&cert.cert)
        .arg(&script)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    let (console, result) = stdout.split_once('\n').unwrap();
    assert_eq!(console, "over tls");
    assert_eq!(
        serde_json::from_str::<Value>(result).unwrap(),
        json!({"ok": true})
    );

    // The HTTP listener, with reqwest trusting only that certificate.
    let pem = std::fs::read(&cert.cert).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    {
        use rustls::pki_types::{CertificateDer, pem::PemObject as _};
        roots
            .add(CertificateDer::from_pem_slice(&pem).unwrap())
            .unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(FAIL_WITHIN)
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{}/v1/info", broker.http_port());
    let response = http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let info: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(info["fingerprint"], json!(broker.fingerprint.to_string()));

    // Plain HTTP to the TLS listener gets no answer.
    let url = format!("http://127.0.0.1:{}/v1/info", broker.http_port());
    assert!(http.get(&url).send().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_reaches_a_tls_executor_with_its_ca() {
    let dir = TempDir::new("executor");
    let cert = Cert::new(dir.path(), "executor");
    let other = Cert::new(dir.path(), "other");
    let executor = support::executor(&tls_args(&cert));
    assert_eq!(executor.field("tls"), "true");
    let endpoint = format!("https://127.0.0.1:{}", executor.addr().port());

    let broker = Broker::start(
        "executor",
        &[
            "--http-listen",
            "off",
            "--executor",
            &endpoint,
            "--executor-ca",
            cert.cert.to_str().unwrap(),
        ],
    );
    assert_eq!(broker.process.field("tls"), "false");
    let client = Client::builder(format!("http://127.0.0.1:{}", broker.port()))
        .pin(broker.fingerprint)
        .connect()
        .await
        .unwrap();
    let run = client
        .execute("return await callTool('echo', 'via a tls executor')")
        .await
        .unwrap();
    assert_eq!(run.result, Ok(json!("via a tls executor")));

    // A broker that trusts another CA cannot start jobs there.
    let broker = Broker::start(
        "executor-wrong-ca",
        &[
            "--http-listen",
            "off",
            "--executor",
            &endpoint,
            "--executor-ca",
            other.cert.to_str().unwrap(),
        ],
    );
    let client = Client::builder(format!("http://127.0.0.1:{}", broker.port()))
        .pin(broker.fingerprint)
        .connect()
        .await
        .unwrap();
    let run = tokio::time::timeout(FAIL_WITHIN, client.execute("return 1"))
        .await
        .expect("fails quickly");
    let failure = match run {
        Ok(run) => run
            .result
            .expect_err("no job runs without a trusted executor"),
        Err(e) => panic!("the job should fail as a result, not {e}"),
    };
    eprintln!("wrong executor CA: {failure:?}");
}

#[test]
fn incomplete_or_unreadable_tls_settings_stop_start_up() {
    let dir = TempDir::new("refused");
    let cert = Cert::new(dir.path(), "server");
    let identity = dir.path().join("broker.key");
    let missing = dir.path().join("missing.pem");
    let cert_path = cert.cert.to_str().unwrap();
    let key_path = cert.key.to_str().unwrap();
    let missing = missing.to_str().unwrap();
    let broker = |extra: &[&str]| {
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
            "--identity",
            identity.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        support::refused("enclave-broker", &args)
    };
    let executor = |extra: &[&str]| {
        let mut args = vec!["--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        support::refused("enclave-executor", &args)
    };
    let cases: Vec<(&str, (std::process::ExitStatus, String), &str)> = vec![
        (
            "broker, cert only",
            broker(&["--tls-cert", cert_path]),
            "--tls-cert needs --tls-key",
        ),
        (
            "broker, key only",
            broker(&["--tls-key", key_path]),
            "--tls-key needs --tls-cert",
        ),
        (
            "broker, missing key",
            broker(&["--tls-cert", cert_path, "--tls-key", missing]),
            "reading the TLS key",
        ),
        (
            "broker, key and cert swapped",
            broker(&["--tls-cert", key_path, "--tls-key", cert_path]),
            "TLS certificate",
        ),
        (
            "broker, https executor without a CA",
            broker(&["--executor", "https://127.0.0.1:1"]),
            "no CA is given",
        ),
        (
            "broker, missing executor CA",
            broker(&[
                "--executor",
                "https://127.0.0.1:1",
                "--executor-ca",
                missing,
            ]),
            "executors.ca_file",
        ),
        (
            "executor, cert only",
            executor(&["--tls-cert", cert_path]),
            "--tls-cert needs --tls-key",
        ),
        (
            "executor, missing cert",
            executor(&["--tls-cert", missing, "--tls-key", key_path]),
            "reading the TLS certificate",
        ),
    ];
    for (case, (status, stderr), expected) in cases {
        assert!(!status.success(), "{case}: started");
        assert!(stderr.contains(expected), "{case}: {stderr}");
    }
    assert!(!identity.exists(), "refused before creating an identity");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_in_progress_are_capped_and_the_cap_frees_up() {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    let dir = TempDir::new("handshakes");
    let cert = Cert::new(dir.path(), "broker");
    let mut args = tls_args(&cert).to_vec();
    args.extend(["--http-listen", "off", "--max-tls-handshakes", "4"]);
    let broker = Broker::start("handshakes", &args);
    let addr = format!("127.0.0.1:{}", broker.port());
    // Four connections that never send their ClientHello hold every handshake slot.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A fifth is closed at once rather than held for the handshake timeout.
    let mut extra = TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf))
        .await
        .expect("a connection past the cap is closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // Once they are gone, a real client gets its handshake.
    drop(stalled);
    let client = tokio::time::timeout(
        FAIL_WITHIN,
        Client::builder(format!("https://127.0.0.1:{}", broker.port()))
            .pin(broker.fingerprint)
            .ca_file(&cert.cert)
            .connect(),
    )
    .await
    .expect("connects quickly")
    .unwrap();
    let run = client.execute("return 7").await.unwrap();
    assert_eq!(run.result, Ok(json!(7)));
}
