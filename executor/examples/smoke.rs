use enclave_executor::{JobSpec, Limits, Sandbox, SandboxConfig};
use tokio::sync::mpsc;

#[tokio::main]
async fn main() {
    let t = std::time::Instant::now();
    let sandbox = Sandbox::new(SandboxConfig::default()).await.unwrap();
    eprintln!("sandbox ready in {:?}", t.elapsed());
    let code = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "return 1+1".into());
    let (tx, mut rx) = mpsc::channel(16);
    let (_ttx, trx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            eprintln!("event {e:?}");
        }
    });
    let spec = JobSpec {
        code,
        input_json: String::new(),
        limits: Limits::preset(enclave_proto::v1::SecurityLevel::Strict),
    };
    let t = std::time::Instant::now();
    let f = sandbox.run(spec, tx, trx).await;
    eprintln!("{:?} in {:?}", f, t.elapsed());
}
