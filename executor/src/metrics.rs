//! The executor's metrics (`enclave_executor_*`), counted by the one job API
//! ([`crate::jobs`]), so the gRPC server and the broker's embedded mode report alike.
//! Labels are bounded: a refusal reason and an outcome code, nothing from the job.

use std::time::Duration;

use enclave_proto::v1::{FinalEvent, final_event};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::jobs::Refusal;
use crate::sandbox::JobCost;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Debug, Clone)]
pub struct JobMetrics {
    admitted: Counter,
    refused: Family<Reason, Counter>,
    running: Gauge,
    draining: Gauge,
    outcomes: Family<Outcome, Counter>,
    duration: Histogram,
    memory: Histogram,
    instantiate: Histogram,
    cpu: Histogram,
}

impl Default for JobMetrics {
    fn default() -> Self {
        JobMetrics {
            admitted: Counter::default(),
            refused: Family::default(),
            running: Gauge::default(),
            draining: Gauge::default(),
            outcomes: Family::default(),
            // 1 ms to about 65 s.
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            // 1 MiB to 1 GiB.
            memory: Histogram::new(exponential_buckets((1 << 20) as f64, 2.0, 11)),
            // 10 µs to about 0.3 s.
            instantiate: Histogram::new(exponential_buckets(0.000_01, 2.0, 16)),
            // 100 µs to about 100 s.
            cpu: Histogram::new(exponential_buckets(0.000_1, 2.0, 21)),
        }
    }
}

impl JobMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "enclave_executor_jobs_admitted",
            "Jobs admitted (checked, given a slot and started)",
            self.admitted.clone(),
        );
        registry.register(
            "enclave_executor_jobs_refused",
            "Jobs refused before they ran, by reason (invalid, busy: every slot taken, draining)",
            self.refused.clone(),
        );
        registry.register(
            "enclave_executor_jobs_running",
            "Jobs running now",
            self.running.clone(),
        );
        registry.register(
            "enclave_executor_draining",
            "1 once the executor drains (SIGTERM): new jobs are refused",
            self.draining.clone(),
        );
        registry.register(
            "enclave_executor_jobs_finished",
            "Jobs finished, by outcome (OK or the error code)",
            self.outcomes.clone(),
        );
        registry.register(
            "enclave_executor_job_duration_seconds",
            "Wall time of finished jobs, from instantiation to their final event",
            self.duration.clone(),
        );
        registry.register(
            "enclave_executor_job_memory_bytes",
            "Peak linear memory of finished jobs",
            self.memory.clone(),
        );
        registry.register(
            "enclave_executor_instantiate_seconds",
            "Time to make a job's sandbox instance from the snapshot",
            self.instantiate.clone(),
        );
        registry.register(
            "enclave_executor_job_cpu_seconds",
            "CPU time of finished jobs (instantiation included), whatever they waited for",
            self.cpu.clone(),
        );
    }

    pub(crate) fn refused(&self, refusal: &Refusal) {
        let reason = match refusal {
            Refusal::Invalid(_) => "invalid",
            Refusal::Busy(_) => "busy",
            Refusal::Draining(_) => "draining",
        };
        self.refused.get_or_create(&Reason { reason }).inc();
    }

    /// Counts a started job as running until the returned guard is dropped: when the job
    /// ends, or when its task is dropped with it (the caller went away: CANCELLED).
    pub(crate) fn started(&self) -> Running {
        self.admitted.inc();
        self.running.inc();
        Running {
            metrics: self.clone(),
            finished: false,
        }
    }

    fn outcome(&self, outcome: &'static str) {
        self.outcomes.get_or_create(&Outcome { outcome }).inc();
    }

    pub(crate) fn draining(&self) {
        self.draining.set(1);
    }
}

/// A job counted as running; see [`JobMetrics::started`].
pub(crate) struct Running {
    metrics: JobMetrics,
    finished: bool,
}

impl Running {
    /// The job's final event (`None` when the caller broke the protocol), and what it
    /// cost when it ran to its end.
    pub(crate) fn finished(mut self, event: Option<&FinalEvent>, cost: Option<&JobCost>) {
        self.finished = true;
        if let Some(cost) = cost {
            self.metrics
                .instantiate
                .observe(cost.instantiate.as_secs_f64());
            self.metrics.cpu.observe(cost.cpu.as_secs_f64());
        }
        let Some(event) = event else {
            self.metrics.outcome("CALLER_FAULT");
            return;
        };
        let code = match &event.outcome {
            Some(final_event::Outcome::Error(e)) => e.code().as_str_name(),
            _ => "OK",
        };
        self.metrics
            .outcome(code.strip_prefix("ERROR_CODE_").unwrap_or(code));
        if let Some(stats) = &event.stats {
            self.metrics
                .duration
                .observe(Duration::from_micros(stats.duration_us).as_secs_f64());
            self.metrics.memory.observe(stats.memory_bytes as f64);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.metrics.running.dec();
        if !self.finished {
            self.metrics.outcome("CANCELLED");
        }
    }
}
