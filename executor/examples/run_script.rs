//! Runs one script in the sandbox and prints its events and final event; with
//! `REPEAT=N`, runs it N times (for profiling the per-job path).
//!
//! `cargo run --release -p enclave-executor --example run_script -- 'return 1+1'`

use enclave_executor::{JobSpec, Limits, Sandbox, SandboxConfig};
use enclave_proto::v1::SecurityLevel;
use tokio::sync::mpsc;

#[tokio::main]
async fn main() {
    let started = std::time::Instant::now();
    let sandbox = Sandbox::new(SandboxConfig::default())
        .await
        .expect("sandbox starts");
    eprintln!("sandbox ready in {:?}", started.elapsed());
    let code = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "return 1+1".into());
    let repeat: usize = std::env::var("REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    for i in 0..repeat {
        let (events, mut events_rx) = mpsc::channel(16);
        let (_results, results_rx) = mpsc::channel(16);
        let printer = tokio::spawn(async move {
            while let Some(event) = events_rx.recv().await {
                if i == 0 {
                    eprintln!("event {event:?}");
                }
            }
        });
        let spec = JobSpec {
            code: code.clone(),
            input_json: String::new(),
            limits: Limits::preset(SecurityLevel::Strict),
        };
        let started = std::time::Instant::now();
        let done = sandbox.run(spec, events, results_rx).await;
        if i + 1 == repeat {
            eprintln!("{done:?} in {:?}", started.elapsed());
        }
        printer.await.expect("printer");
    }
}
