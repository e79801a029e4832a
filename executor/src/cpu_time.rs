//! The CPU time a future takes: what a job costs the machine, as opposed to how long it
//! waited (for its turn, its tool calls, its consumer).
//!
//! A job's task can move between the job threads at each await, so the time is summed
//! per poll from the polling thread's own CPU clock.

use std::future::Future;
use std::time::Duration;

/// Runs `future` to its end; its output and the CPU time spent polling it.
pub(crate) async fn measured<F: Future>(future: F) -> (F::Output, Duration) {
    let mut future = std::pin::pin!(future);
    let mut spent = Duration::ZERO;
    let output = std::future::poll_fn(|cx| {
        let before = thread_cpu();
        let poll = future.as_mut().poll(cx);
        spent += thread_cpu().saturating_sub(before);
        poll
    })
    .await;
    (output, spent)
}

fn thread_cpu() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn counts_work_not_waiting() {
        // Work until this thread has used 20 ms of CPU, however long that takes on a
        // busy machine: all of it is counted.
        let ((), busy) = measured(async {
            let start = thread_cpu();
            while thread_cpu() - start < Duration::from_millis(20) {
                std::hint::black_box(0);
            }
        })
        .await;
        assert!(busy >= Duration::from_millis(20), "{busy:?}");

        let ((), idle) = measured(tokio::time::sleep(Duration::from_millis(50))).await;
        assert!(idle < Duration::from_millis(10), "{idle:?}");
    }
}
