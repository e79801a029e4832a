//! The browser playground (`src/http/playground/`): the real page in headless Chromium
//! against the real `enclave-broker`, driven over the WebDriver protocol (chromedriver)
//! with reqwest. Its protocol code is the `@enclave-vm/client` package (`js/client/`),
//! served by the broker under `/client/`; the package's own tests, the known-answer
//! vectors included, are `tests/js` (`js/client/test/`).
//!
//! Needs `chromium` and `chromedriver` (Debian: `chromium chromium-driver`).
//! `CHROMEDRIVER` and `CHROMIUM` override the binaries' paths.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "enclave-playground-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Where cargo puts build output (the shared target directory): two levels above the
/// broker binary (`target/debug/enclave-broker`).
fn target_dir() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_enclave-broker"));
    bin.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

// ---------------------------------------------------------------------------------------
// Processes.

/// A child process killed (and reaped) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Broker {
    _proc: Proc,
    http_addr: String,
    fingerprint: String,
    log: Arc<Mutex<String>>,
}

impl Broker {
    fn start() -> Broker {
        let identity = temp_dir("broker").join("broker.key");
        let mut child = Command::new(env!("CARGO_BIN_EXE_enclave-broker"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--identity",
            ])
            .arg(&identity)
            .env("NO_COLOR", "1")
            .env("ENCLAVE_LOG", "info")
            // One compiled guest snapshot for every process the tests start.
            .env(
                "ENCLAVE_SNAPSHOT_DIR",
                std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("snapshots"),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn enclave-broker");
        let stderr = child.stderr.take().unwrap();
        let proc = Proc(child);
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("broker serving") {
                        let field = |name: &str| {
                            line.split_whitespace()
                                .find_map(|token| token.strip_prefix(&format!("{name}=")))
                                .map(|v| v.trim_matches('"').to_owned())
                        };
                        let _ = tx.send((field("http_addr"), field("fingerprint")));
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let (http_addr, fingerprint) = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("the broker did not start:\n{}", log.lock().unwrap()));
        Broker {
            _proc: proc,
            http_addr: http_addr.expect("the broker logs http_addr="),
            fingerprint: fingerprint.expect("the broker logs fingerprint="),
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

struct ChromeDriver {
    _proc: Proc,
    url: String,
    log_path: PathBuf,
}

impl ChromeDriver {
    async fn start(http: &reqwest::Client) -> ChromeDriver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log_path = temp_dir("chromedriver").join("chromedriver.log");
        let binary = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log_path.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting {binary}: {e} (the playground test needs chromium and chromedriver; Debian: apt-get install chromium chromium-driver)")
            });
        let driver = ChromeDriver {
            _proc: Proc(child),
            url: format!("http://127.0.0.1:{port}"),
            log_path,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = http.get(format!("{}/status", driver.url)).send().await
                && let Ok(body) = response.text().await
                && serde_json::from_str::<Value>(&body)
                    .is_ok_and(|v| v["value"]["ready"] == json!(true))
            {
                return driver;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready; log: {}",
                driver.log_path.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// A minimal WebDriver (W3C) client.

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

struct WebDriver {
    http: reqwest::Client,
    session_url: String,
}

impl WebDriver {
    async fn new_session(
        http: reqwest::Client,
        driver: &ChromeDriver,
        profile: &Path,
    ) -> WebDriver {
        let mut options = json!({
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--window-size=1100,1300",
                format!("--user-data-dir={}", profile.display()),
            ],
        });
        if let Ok(binary) = std::env::var("CHROMIUM") {
            options["binary"] = json!(binary);
        }
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": options,
                    "goog:loggingPrefs": { "browser": "ALL" },
                }
            }
        });
        let value = send(
            &http,
            reqwest::Method::POST,
            &format!("{}/session", driver.url),
            Some(capabilities),
        )
        .await;
        let id = value["sessionId"].as_str().expect("sessionId").to_owned();
        WebDriver {
            http,
            session_url: format!("{}/session/{id}", driver.url),
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        send(
            &self.http,
            method,
            &format!("{}{path}", self.session_url),
            body,
        )
        .await
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        v[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_owned()
    }

    async fn text(&self, element: &str) -> String {
        let v = self
            .cmd(
                reqwest::Method::GET,
                &format!("/element/{element}/text"),
                None,
            )
            .await;
        v.as_str().unwrap_or_default().to_owned()
    }

    async fn attribute(&self, element: &str, name: &str) -> Option<String> {
        let v = self
            .cmd(
                reqwest::Method::GET,
                &format!("/element/{element}/attribute/{name}"),
                None,
            )
            .await;
        v.as_str().map(str::to_owned)
    }

    async fn property(&self, element: &str, name: &str) -> Value {
        self.cmd(
            reqwest::Method::GET,
            &format!("/element/{element}/property/{name}"),
            None,
        )
        .await
    }

    async fn css(&self, element: &str, name: &str) -> String {
        let v = self
            .cmd(
                reqwest::Method::GET,
                &format!("/element/{element}/css/{name}"),
                None,
            )
            .await;
        v.as_str().unwrap_or_default().to_owned()
    }

    async fn clear(&self, element: &str) {
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{element}/clear"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_text(&self, element: &str, text: &str) {
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn click(&self, element: &str) {
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn script(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    async fn screenshot(&self, path: &Path) {
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64_decode(v.as_str().expect("screenshot is base64"));
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "the screenshot is a PNG"
        );
        std::fs::write(path, png).unwrap();
        println!("screenshot: {}", path.display());
    }

    /// The browser's console messages so far (chromedriver's legacy log endpoint).
    async fn browser_log(&self) -> Vec<Value> {
        let url = format!("{}/se/log", self.session_url);
        let Ok(response) = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(r#"{"type":"browser"}"#)
            .send()
            .await
        else {
            return Vec::new();
        };
        let body: Value =
            serde_json::from_str(&response.text().await.unwrap_or_default()).unwrap_or_default();
        body["value"].as_array().cloned().unwrap_or_default()
    }

    async fn quit(&self) {
        let _ = self.http.delete(&self.session_url).send().await;
    }
}

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Value {
    let mut request = http.request(method.clone(), url);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("WebDriver {method} {url}: {e}"));
    let status = response.status();
    let text = response.text().await.unwrap();
    let value: Value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("WebDriver {method} {url}: {status} {text}"));
    assert!(
        status.is_success(),
        "WebDriver {method} {url}: {status} {}",
        value["value"]
    );
    value["value"].clone()
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => panic!("invalid base64 byte {c}"),
        }
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

/// Polls `probe` until it returns `Some`, failing with `what` after `timeout`.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last seen: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The page, end to end.

const OUTPUT_LINES: &str = "return [...document.querySelectorAll('#output .line')].map(l => ({ kind: l.dataset.kind, level: l.dataset.level, text: l.querySelector('.text').textContent }));";

async fn status(wd: &WebDriver) -> (String, String) {
    let el = wd.find("#status").await;
    (
        wd.attribute(&el, "data-state").await.unwrap_or_default(),
        wd.text(&el).await,
    )
}

async fn wait_connected(wd: &WebDriver, expect_suite: &str) {
    let text = wait_for(
        "#status to say Encrypted Connection",
        Duration::from_secs(60),
        move || async move {
            match status(wd).await {
                (state, text) if state == "ok" => Ok(text),
                (state, text) if state == "error" => panic!("the page failed to connect: {text}"),
                (state, text) => Err(format!("{state}: {text}")),
            }
        },
    )
    .await;
    assert_eq!(text.trim(), "Encrypted Connection");
    let session = wd.text(&wd.find("#session").await).await;
    assert!(
        session.contains(expect_suite),
        "session line names the suite {expect_suite}: {session}"
    );
    let execute = wd.find("#execute").await;
    assert_eq!(
        wd.property(&execute, "disabled").await,
        json!(false),
        "Execute is enabled once connected"
    );
}

/// Types `code` into the editor, runs it and waits for the result; returns (result state,
/// result text, output lines, whether console output showed up while the job still ran).
async fn run_script(wd: &WebDriver, code: &str) -> (String, String, Vec<Value>, bool) {
    let editor = wd.find("#code").await;
    wd.clear(&editor).await;
    wd.type_text(&editor, code).await;
    assert_eq!(
        wd.property(&editor, "value").await,
        json!(code),
        "the editor holds what was typed"
    );
    wd.click(&wd.find("#execute").await).await;
    let result = wd.find("#result").await;
    let streamed_before_result = AtomicBool::new(false);
    let (streamed, result) = (&streamed_before_result, &result);
    let state = wait_for("#result", Duration::from_secs(60), move || async move {
        let state = wd.attribute(result, "data-state").await.unwrap_or_default();
        if state == "running" {
            let lines = wd.script(OUTPUT_LINES).await;
            if lines
                .as_array()
                .is_some_and(|l| l.iter().any(|l| l["kind"] == "console"))
            {
                streamed.store(true, Ordering::Relaxed);
            }
        }
        if state == "ok" || state == "error" {
            Ok(state)
        } else {
            Err(state)
        }
    })
    .await;
    let text = wd
        .script("return document.querySelector('#result pre').textContent")
        .await;
    let lines = wd
        .script(OUTPUT_LINES)
        .await
        .as_array()
        .cloned()
        .unwrap_or_default();
    (
        state,
        text.as_str().unwrap_or_default().to_owned(),
        lines,
        streamed_before_result.into_inner(),
    )
}

/// `rgb(r, g, b)` or `rgba(r, g, b, a)` -> [r, g, b].
fn rgb(css: &str) -> [u8; 3] {
    let n: Vec<u8> = css
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .filter(|s| !s.is_empty())
        .take(3)
        .map(|s| s.parse().unwrap_or_else(|_| panic!("color {css}")))
        .collect();
    n.try_into().unwrap_or_else(|_| panic!("color {css}"))
}

fn console_lines(lines: &[Value]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter(|l| l["kind"] == "console")
        .map(|l| {
            (
                l["level"].as_str().unwrap().to_owned(),
                l["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playground_runs_a_script_in_headless_chromium() {
    // Plain http to loopback only; the TLS config is required by the crate's features.
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let http = reqwest::Client::builder()
        .no_proxy()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();

    let broker = Broker::start();
    client_modules_are_served(&http, &broker).await;
    let driver = ChromeDriver::start(&http).await;
    let profile = temp_dir("chromium-profile");
    let wd = WebDriver::new_session(http.clone(), &driver, &profile).await;
    let outcome = std::panic::AssertUnwindSafe(drive(&wd, &broker));
    let result = futures::FutureExt::catch_unwind(outcome).await;
    if result.is_err() {
        let _ = wd
            .screenshot(&target_dir().join("playground-screenshot-failure.png"))
            .await;
        eprintln!("browser console: {:#?}", wd.browser_log().await);
        eprintln!("broker log:\n{}", broker.log());
        eprintln!("chromedriver log: {}", driver.log_path.display());
    }
    wd.quit().await;
    let _ = std::fs::remove_dir_all(&profile);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// The page's protocol code: the modules of `@enclave-vm/client`, as scripts, under the
/// same headers as every answer; nothing else under `/client/`.
async fn client_modules_are_served(http: &reqwest::Client, broker: &Broker) {
    let base = format!("http://{}", broker.http_addr);
    for file in ["index.js", "client.js", "handshake.js", "channel.js"] {
        let response = http
            .get(format!("{base}/client/{file}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "/client/{file}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(header("content-type"), "text/javascript; charset=utf-8");
        assert_eq!(header("x-content-type-options"), "nosniff");
        let source = response.text().await.unwrap();
        let on_disk = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../js/client/src/{file}")),
        )
        .unwrap();
        assert_eq!(source, on_disk, "/client/{file} is js/client/src/{file}");
    }
    for path in [
        "/client/nope.js",
        "/client/",
        "/client/test/client.test.mjs",
    ] {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
    let app = http
        .get(format!("{base}/app.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        app.contains("from './client/index.js'"),
        "the page imports the package"
    );
}

async fn drive(wd: &WebDriver, broker: &Broker) {
    let base = format!("http://{}", broker.http_addr);
    wd.goto(&format!("{base}/")).await;

    // The page pins the broker that served it, connects over X25519 and turns green.
    let pin = wd.find("#pin").await;
    assert_eq!(
        wd.property(&pin, "value").await,
        json!(broker.fingerprint),
        "#pin is prefilled with the fingerprint"
    );
    wait_connected(wd, "X25519").await;
    let dot = wd.find("#status .dot").await;
    assert_eq!(
        rgb(&wd.css(&dot, "background-color").await),
        [34, 197, 94],
        "green indicator"
    );

    // The sample script the page comes with works as it is.
    wd.click(&wd.find("#execute").await).await;
    let result = &wd.find("#result").await;
    let text = wait_for(
        "the sample's result",
        Duration::from_secs(60),
        move || async move {
            match wd.attribute(result, "data-state").await.as_deref() {
                Some("ok") => Ok(wd.text(&wd.find("#result pre").await).await),
                Some("error") => panic!("the sample script failed: {}", wd.text(result).await),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({ "doubled": 42, "greeting": "HI" })
    );

    // A script that logs twice around a tool call; the busy wait keeps the job running
    // after the first events, so the page must show them before the result (streaming).
    let code = "console.log('first line', 1 + 1);\n\
                const echoed = await callTool('echo', { word: 'sealed', n: 20 });\n\
                console.warn('second line:', echoed.word);\n\
                const until = Date.now() + 1500;\n\
                while (Date.now() < until) {}\n\
                return { echoed, n: echoed.n + 1 };";
    let (state, text, lines, streamed) = run_script(wd, code).await;
    assert_eq!(
        state, "ok",
        "result state; result: {text}; output: {lines:?}"
    );
    let value: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("#result holds JSON: {text}"));
    assert_eq!(
        value,
        json!({ "echoed": { "word": "sealed", "n": 20 }, "n": 21 })
    );
    assert!(
        text.contains("\n  \"echoed\""),
        "the result is pretty-printed: {text}"
    );
    assert_eq!(
        console_lines(&lines),
        vec![
            ("log".to_owned(), "first line 2".to_owned()),
            ("warn".to_owned(), "second line: sealed".to_owned())
        ],
        "one line per console event, with its level"
    );
    let tool_lines: Vec<&str> = lines
        .iter()
        .filter(|l| l["kind"] == "tool")
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        tool_lines.len(),
        2,
        "the tool call and its result: {lines:?}"
    );
    assert!(
        tool_lines[0].contains("callTool(\"echo\"")
            && tool_lines[0].contains("\"word\":\"sealed\""),
        "{}",
        tool_lines[0]
    );
    assert!(
        tool_lines[1].contains("echo") && tool_lines[1].contains("answered"),
        "{}",
        tool_lines[1]
    );
    assert!(
        streamed,
        "console output appeared while the job was still running (streamed, not buffered)"
    );
    wd.screenshot(&target_dir().join("playground-screenshot.png"))
        .await;

    // A script error: code, message and line.
    let (state, text, _, _) = run_script(wd, "const a = 1;\nnull.boom;\nreturn a;").await;
    assert_eq!(state, "error", "{text}");
    let result = wd.find("#result").await;
    assert_eq!(
        wd.attribute(&result, "data-code").await.as_deref(),
        Some("SCRIPT_ERROR"),
        "{text}"
    );
    assert_eq!(
        wd.attribute(&result, "data-line").await.as_deref(),
        Some("2"),
        "{text}"
    );
    assert!(
        text.contains("SCRIPT_ERROR: TypeError") && text.contains("at line 2"),
        "{text}"
    );

    // The P-256 suite, from the browser too.
    wd.click(&wd.find("#suite option[value='2']").await).await;
    wait_connected(wd, "P-256").await;
    let (state, text, lines, _) =
        run_script(wd, "console.info('over P-256');\nreturn [1, 2, 3];").await;
    assert_eq!(state, "ok", "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!([1, 2, 3])
    );
    assert_eq!(
        console_lines(&lines),
        vec![("info".to_owned(), "over P-256".to_owned())]
    );
    wd.click(&wd.find("#suite option[value='1']").await).await;
    wait_connected(wd, "X25519").await;

    // A wrong pin refuses to connect: red, with the reason, and Execute disabled.
    let wrong = format!("sha256:{}", "0".repeat(64));
    wd.clear(&pin).await;
    wd.type_text(&pin, &wrong).await;
    let text = wait_for("a pin error", Duration::from_secs(30), move || async move {
        match status(wd).await {
            (state, text) if state == "error" && text.contains("pin mismatch") => Ok(text),
            (state, text) => Err(format!("{state}: {text}")),
        }
    })
    .await;
    assert!(
        text.contains(&broker.fingerprint) && text.contains(&wrong),
        "the error names both keys: {text}"
    );
    assert_eq!(
        rgb(&wd.css(&dot, "background-color").await),
        [239, 68, 68],
        "red indicator"
    );
    assert_eq!(
        wd.property(&wd.find("#execute").await, "disabled").await,
        json!(true),
        "no executing without a session"
    );
    assert_eq!(
        wd.attribute(&pin, "aria-invalid").await.as_deref(),
        Some("true")
    );
    wd.screenshot(&target_dir().join("playground-screenshot-wrong-pin.png"))
        .await;

    // A malformed pin is refused before any request.
    wd.clear(&pin).await;
    wd.type_text(&pin, "sha256:abc").await;
    wait_for(
        "a malformed-pin error",
        Duration::from_secs(30),
        move || async move {
            match status(wd).await {
                (state, text) if state == "error" && text.contains("invalid pin") => Ok(()),
                (state, text) => Err(format!("{state}: {text}")),
            }
        },
    )
    .await;

    // The right pin again: connected again.
    wd.clear(&pin).await;
    wd.type_text(&pin, &broker.fingerprint).await;
    wait_connected(wd, "X25519").await;

    // Nothing went wrong in the page itself (CSP violations, uncaught errors).
    let severe: Vec<Value> = wd
        .browser_log()
        .await
        .into_iter()
        .filter(|e| {
            e["level"] == "SEVERE"
                && !e["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("favicon.ico")
        })
        .collect();
    assert!(severe.is_empty(), "browser console errors: {severe:#?}");
}
