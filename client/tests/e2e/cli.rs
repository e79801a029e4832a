//! The `enclave` binary against a real broker: output streams, exit codes, `--json`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

use crate::support::{Broker, TempDir};

const ENCLAVE: &str = env!("CARGO_BIN_EXE_enclave");

fn enclave(broker: &Broker, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(ENCLAVE);
    // Configured the way a deployment would: through the environment.
    cmd.env("ENCLAVE_SERVER", broker.url())
        .env("ENCLAVE_PIN", broker.fingerprint.to_string())
        .env_remove("ENCLAVE_IDENTITY")
        .env_remove("ENCLAVE_CURVE")
        .env_remove("ENCLAVE_LEVEL")
        .env_remove("ENCLAVE_JSON")
        .env_remove("ENCLAVE_LOG")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(text) = stdin {
        // The CLI may refuse its arguments and exit before it reads the script: a closed
        // pipe then is its answer, not the test's failure (the exit code is asserted).
        match child.stdin.take().unwrap().write_all(text.as_bytes()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            other => other.unwrap(),
        }
    }
    child.wait_with_output().unwrap()
}

fn script(dir: &Path, name: &str, code: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, code).unwrap();
    path.to_str().unwrap().to_owned()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn enclave_run_prints_console_and_result_and_sets_the_exit_code() {
    let broker = Broker::start("cli-run");
    let dir = TempDir::new("cli-scripts");

    let ok = script(
        dir.path(),
        "ok.js",
        "console.log('hello', 1);\nconsole.warn('careful');\nreturn {a: [1, 2], b: await callTool('echo', 'x')};",
    );
    let out = enclave(&broker, &["run", &ok], None);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let (console, result) = stdout.split_once('\n').unwrap();
    assert_eq!(console, "hello 1");
    let value: Value = serde_json::from_str(result).unwrap();
    assert_eq!(value, json!({"a": [1, 2], "b": "x"}));
    assert!(result.contains("\n  \"a\""), "pretty JSON: {result}");
    assert_eq!(text(&out.stderr), "careful\n");

    let failing = script(
        dir.path(),
        "fail.js",
        "console.log('about to fail');\n\nthrow new RangeError('too far');",
    );
    let out = enclave(&broker, &["run", &failing], None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "about to fail\n");
    assert_eq!(
        text(&out.stderr),
        "error: SCRIPT_ERROR: RangeError: too far (line 3)\n"
    );

    // stdin, a level, and a limit that is hit.
    let out = enclave(
        &broker,
        &["run", "--level", "STRICT", "--timeout-ms", "100", "-"],
        Some("while (true) {}"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("error: TIMEOUT: "),
        "{}",
        text(&out.stderr)
    );

    let out = enclave(
        &broker,
        &["run", "--input", "{\"n\": 4}", "-"],
        Some("return input.n * input.n"),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "16\n");
}

#[test]
fn enclave_run_json_prints_one_event_per_line() {
    let broker = Broker::start("cli-json");
    let code = "console.info('start');\nconst r = await callTool('echo', {k: 1});\nreturn r;";
    let out = enclave(
        &broker,
        &["run", "--json", "--curve", "p256", "-"],
        Some(code),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert_eq!(
        lines[0],
        json!({"type": "console", "level": "info", "text": "start"})
    );
    assert_eq!(lines[1]["type"], "tool_call");
    assert_eq!(lines[1]["name"], "echo");
    assert_eq!(lines[1]["args"], json!({"k": 1}));
    assert_eq!(lines[2]["type"], "tool_result");
    assert_eq!(lines[2]["call_id"], lines[1]["call_id"]);
    assert_eq!(lines[2]["name"], "echo");
    assert_eq!(lines[2]["is_error"], false);
    assert_eq!(lines[3]["type"], "final");
    assert_eq!(lines[3]["result"], json!({"k": 1}));
    assert_eq!(lines[3]["stats"]["tool_calls"], 1);

    let out = enclave(&broker, &["run", "--json", "-"], Some("return ("));
    assert_eq!(out.status.code(), Some(1));
    let last: Value = serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "error");
    assert_eq!(last["code"], "SYNTAX_ERROR");
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

#[test]
fn enclave_run_refuses_a_wrong_pin_and_bad_usage_with_status_2() {
    let broker = Broker::start("cli-errors");
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let out = enclave(&broker, &["run", "--pin", &wrong, "-"], Some("return 1"));
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("does not match the pinned fingerprint"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());

    let out = enclave(&broker, &["run", "/nonexistent/job.js"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read /nonexistent/job.js"));

    let out = enclave(&broker, &["run", "--level", "EXTREME", "-"], Some(""));
    assert_eq!(out.status.code(), Some(2));
    let out = enclave(&broker, &["run", "--input", "{oops", "-"], Some("return 1"));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--input is not JSON"));

    // Nobody listening.
    let out = Command::new(ENCLAVE)
        .args([
            "run",
            "--server",
            "http://127.0.0.1:1",
            "--pin",
            &wrong,
            "-",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with("error: cannot reach the broker"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn enclave_keygen_makes_an_identity_the_broker_accepts() {
    let dir = TempDir::new("cli-keygen");
    let key = dir.path().join("me.key");
    let out = Command::new(ENCLAVE)
        .arg("keygen")
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let fingerprint = text(&out.stdout).trim().to_owned();
    assert!(
        fingerprint.starts_with("sha256:") && fingerprint.len() == 71,
        "{fingerprint}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // Never over an existing key.
    let again = Command::new(ENCLAVE)
        .arg("keygen")
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));

    let broker = Broker::start_with("cli-auth", &["--allow-client", &fingerprint]);
    let out = enclave(&broker, &["run", "-"], Some("return 1"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("requires client authentication"),
        "{}",
        text(&out.stderr)
    );
    let out = enclave(
        &broker,
        &["run", "--identity", key.to_str().unwrap(), "-"],
        Some("return 'me'"),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "\"me\"\n");
}
