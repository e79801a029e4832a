//! The epoch thread, the clock behind every time limit, sleeps while no job runs. A
//! test binary of its own: it builds a second sandbox (two compilations on every core),
//! which should not slow the timing-sensitive tests of `it` running beside it.

use std::time::{Duration, Instant};

use enclave_proto::v1::{ErrorCode, SecurityLevel};

/// The epoch thread sleeps while the executor is idle; a job started after that must
/// wake it, or a busy loop would run with no time limit at all.
#[tokio::test]
async fn a_busy_loop_times_out_after_the_executor_was_idle() {
    use enclave_executor::{JobSpec, Sandbox, SandboxConfig};
    use enclave_proto::v1::final_event::Outcome;
    use tokio::sync::mpsc;

    let sandbox = std::sync::Arc::new(
        Sandbox::new(SandboxConfig {
            max_concurrent_jobs: 2,
            ..SandboxConfig::default()
        })
        .await
        .expect("sandbox starts"),
    );
    let asleep_by = Instant::now() + Duration::from_secs(5);
    while !sandbox.epoch_ticker_asleep() {
        assert!(
            Instant::now() < asleep_by,
            "the epoch thread kept ticking with no job running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut limits = enclave_executor::Limits::preset(SecurityLevel::Strict);
    limits.timeout = Duration::from_millis(300);
    let spec = JobSpec {
        code: "while (true) {}".into(),
        input_json: String::new(),
        limits,
    };
    let (events, _events_rx) = mpsc::channel(16);
    let (_results_tx, results) = mpsc::channel(16);
    let started = Instant::now();
    // On a thread of its own, never joined: without epoch ticks the loop never yields,
    // and only a timeout outside its thread can notice (and then leave it spinning).
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn({
        let sandbox = sandbox.clone();
        move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _ = done.send(rt.block_on(sandbox.run(spec, events, results)));
        }
    });
    let finished =
        tokio::task::spawn_blocking(move || finished.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap()
            .expect("the busy loop was not stopped: no epoch ticks while it ran")
            .expect("no caller fault");
    let took = started.elapsed();
    match finished.outcome {
        Some(Outcome::Error(e)) => assert_eq!(e.code(), ErrorCode::Timeout, "{e:?}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert!(!sandbox.epoch_ticker_asleep(), "asleep right after a job");
}
