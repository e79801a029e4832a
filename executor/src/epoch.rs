//! The thread that advances the engine's epoch: the clock behind every job's time
//! limit and behind running jobs taking turns on a worker thread.
//!
//! It ticks every quarter of a millisecond while jobs run, and sleeps once no job has run for a
//! while, so that an idle executor (or an idle broker with its embedded one) does not
//! wake a core a thousand times a second. A job that starts wakes it before the job
//! runs any guest code; a ticker that slept through a running job would leave that job
//! without a time limit, which `tests/epoch.rs` checks.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use wasmtime::{Engine, EngineWeak};

/// How often the epoch advances. Timeouts are checked, and running jobs yield to other
/// tasks, at this granularity: a short job that arrives behind busy ones waits about one
/// slice (crate::priority), so the slice bounds what a busy neighbour adds to it.
const TICK: Duration = Duration::from_micros(250);

/// Ticks with no job running or started before the ticker sleeps (100 ms). Traffic of
/// ten jobs a second or more never pays for waking it; slower traffic pays one wake-up
/// per job.
const IDLE_TICKS_BEFORE_SLEEP: u32 = 400;

pub(crate) struct EpochTicker {
    /// Jobs between [`EpochTicker::job_running`] and the drop of its guard.
    running: AtomicUsize,
    /// Set by every job that starts, cleared by every tick: a job that started and
    /// ended between two ticks still counts as activity.
    started: AtomicBool,
    /// Set by the ticker before it checks `running` one last time and sleeps; a job
    /// counts itself in `running` before it reads this (both sequentially consistent),
    /// so one of the two always sees the other.
    asleep: AtomicBool,
    /// Set by [`EpochTicker::stop`]: the thread ends.
    stopped: AtomicBool,
    /// Held while the ticker checks and waits, and while it is woken, so that a wake-up
    /// cannot fall between the two.
    lock: Mutex<()>,
    wake: Condvar,
}

impl EpochTicker {
    /// Starts the ticker thread for `engine`; it ends with [`EpochTicker::stop`] or when
    /// the engine is dropped.
    pub(crate) fn spawn(engine: &Engine) -> Arc<EpochTicker> {
        let ticker = Arc::new(EpochTicker {
            running: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            asleep: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let weak = engine.weak();
        let thread_ticker = ticker.clone();
        std::thread::Builder::new()
            .name("enclave-epoch".into())
            .spawn(move || thread_ticker.run(weak))
            .expect("spawning the epoch thread");
        ticker
    }

    /// Marks a job as running until the guard is dropped, waking the ticker first if
    /// it sleeps. Take it before the job's instance runs any guest code.
    pub(crate) fn job_running(self: &Arc<Self>) -> RunningJob {
        self.started.store(true, Ordering::Relaxed);
        if self.running.fetch_add(1, Ordering::SeqCst) == 0 && self.asleep.load(Ordering::SeqCst) {
            self.wake_up();
        }
        RunningJob(self.clone())
    }

    /// Whether the ticker is asleep (no job has run for a while).
    pub(crate) fn is_asleep(&self) -> bool {
        self.asleep.load(Ordering::SeqCst)
    }

    /// Ends the ticker thread, asleep or not.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.wake_up();
    }

    fn wake_up(&self) {
        let _held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.wake.notify_one();
    }

    fn run(&self, engine: EngineWeak) {
        let mut idle_ticks = 0;
        loop {
            let Some(strong) = engine
                .upgrade()
                .filter(|_| !self.stopped.load(Ordering::SeqCst))
            else {
                return;
            };
            strong.increment_epoch();
            drop(strong);
            std::thread::sleep(TICK);
            let started = self.started.swap(false, Ordering::Relaxed);
            if started || self.running.load(Ordering::SeqCst) > 0 {
                idle_ticks = 0;
                continue;
            }
            idle_ticks += 1;
            if idle_ticks < IDLE_TICKS_BEFORE_SLEEP {
                continue;
            }
            idle_ticks = 0;
            // No timeout: a job or `stop` wakes it, nothing else needs to.
            let mut held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.asleep.store(true, Ordering::SeqCst);
            while self.running.load(Ordering::SeqCst) == 0 && !self.stopped.load(Ordering::SeqCst) {
                held = self.wake.wait(held).unwrap_or_else(|p| p.into_inner());
            }
            self.asleep.store(false, Ordering::SeqCst);
        }
    }
}

/// A running job, as far as the ticker is concerned.
pub(crate) struct RunningJob(Arc<EpochTicker>);

impl Drop for RunningJob {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}
