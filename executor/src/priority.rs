//! Short jobs first. Running jobs share the job threads (crate::jobs) and take turns at
//! every epoch tick; in plain turns, a job that starts behind N busy ones waits up to N
//! slices at each of its steps, so one session's busy loops would slow every other
//! session's short jobs in proportion to their number.
//!
//! Instead a job is *fresh* for its first [`FRESH_TICKS`] slices of running guest code;
//! past them it is *demoted*, and at each of its ticks it steps aside, for at most
//! [`MAX_DEFER`], while a fresh job is active. Short jobs then run as if the busy ones
//! were not there, and busy ones share what the short ones leave. A fresh job that sits
//! waiting (for a tool call) does not hold the others back: only fresh jobs active in the
//! last [`ACTIVE_WINDOW`] count. Nor can a stream of short jobs stop a busy one: it runs
//! a slice after every [`MAX_DEFER`] at the latest.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Slices (epoch ticks) a job runs before it is demoted: far more than a short job
/// needs, far less than a busy loop takes.
const FRESH_TICKS: u32 = 10;

/// Longest a demoted job steps aside at one tick.
const MAX_DEFER: Duration = Duration::from_millis(2);

/// A fresh job counts as active if it started or ran a slice this recently.
const ACTIVE_WINDOW: Duration = Duration::from_millis(2);

/// The fresh jobs of one sandbox.
pub(crate) struct Priority {
    fresh: AtomicUsize,
    /// When a fresh job last started or ran a slice, in microseconds since `origin`.
    last_active_us: AtomicU64,
    origin: Instant,
    /// Woken when the last fresh job is demoted or ends.
    none_fresh: Notify,
}

impl Priority {
    pub(crate) fn new() -> Arc<Priority> {
        Arc::new(Priority {
            fresh: AtomicUsize::new(0),
            last_active_us: AtomicU64::new(0),
            origin: Instant::now(),
            none_fresh: Notify::new(),
        })
    }

    /// A job starting: fresh until [`Turn::tick`] demotes it or it ends.
    pub(crate) fn start(self: &Arc<Priority>) -> Turn {
        self.fresh.fetch_add(1, Ordering::SeqCst);
        self.touch();
        Turn {
            priority: self.clone(),
            ticks: 0,
            fresh: true,
        }
    }

    fn touch(&self) {
        let now = self.origin.elapsed().as_micros() as u64;
        self.last_active_us.fetch_max(now, Ordering::Relaxed);
    }

    /// Whether a fresh job is active now.
    fn fresh_active(&self) -> bool {
        if self.fresh.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let idle_us = (self.origin.elapsed().as_micros() as u64)
            .saturating_sub(self.last_active_us.load(Ordering::Relaxed));
        idle_us < ACTIVE_WINDOW.as_micros() as u64
    }

    /// Until no job is fresh.
    async fn until_none_fresh(&self) {
        loop {
            let notified = self.none_fresh.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.fresh.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One job's place in the order.
pub(crate) struct Turn {
    priority: Arc<Priority>,
    ticks: u32,
    fresh: bool,
}

impl Turn {
    /// At each of the job's epoch ticks: what it waits for before its next slice.
    pub(crate) fn tick(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        if self.fresh {
            self.ticks += 1;
            if self.ticks < FRESH_TICKS {
                self.priority.touch();
                return Box::pin(tokio::task::yield_now());
            }
            self.demote();
        }
        if !self.priority.fresh_active() {
            return Box::pin(tokio::task::yield_now());
        }
        let priority = self.priority.clone();
        Box::pin(async move {
            let _ = tokio::time::timeout(MAX_DEFER, priority.until_none_fresh()).await;
        })
    }

    fn demote(&mut self) {
        self.fresh = false;
        if self.priority.fresh.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.priority.none_fresh.notify_waiters();
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.fresh {
            self.demote();
        }
    }
}
