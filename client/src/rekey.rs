//! When to call the `Rekey` RPC.
//!
//! `ClientChannel` rotates its own sending key, silently, when its `RekeyPolicy` says so;
//! that moves only the client -> broker direction, and the channel has no way to ask
//! "is a rotation due?". The `Rekey` RPC moves both directions at once, so the client
//! keeps its own clock with the caller's policy and hands the channel a policy that
//! never fires: every rotation is then an RPC (see `connection.rs`).

use std::time::{Duration, Instant};

use enclave_proto::RekeyPolicy;

/// The channel's policy once the client keeps the clock: never rotate on its own, but
/// keep the caller's grace period for the broker's previous epoch.
pub(crate) fn channel_policy(policy: &RekeyPolicy) -> RekeyPolicy {
    RekeyPolicy {
        max_records: u64::MAX,
        max_bytes: u64::MAX,
        max_age: Duration::MAX,
        grace: policy.grace,
    }
}

/// Records and bytes sealed since the last key update, and since when.
#[derive(Debug)]
pub(crate) struct RekeyClock {
    records: u64,
    bytes: u64,
    since: Instant,
    /// One task runs the RPC; the others keep sealing under the current key meanwhile.
    in_flight: bool,
}

impl RekeyClock {
    /// `now` must be taken before the channel exists, so the clock is never younger
    /// than the key it measures.
    pub(crate) fn new(now: Instant) -> Self {
        RekeyClock {
            records: 0,
            bytes: 0,
            since: now,
            in_flight: false,
        }
    }

    pub(crate) fn sealed(&mut self, plaintext_len: usize) {
        self.records = self.records.saturating_add(1);
        self.bytes = self.bytes.saturating_add(plaintext_len as u64);
    }

    pub(crate) fn due(&self, policy: &RekeyPolicy, now: Instant) -> bool {
        self.records >= policy.max_records
            || self.bytes >= policy.max_bytes
            || now.saturating_duration_since(self.since) >= policy.max_age
    }

    /// True when the caller should run the RPC now: due, and nobody else running it.
    /// Restarts the count at once, so the rekey request itself is the new key's first
    /// record.
    pub(crate) fn begin(&mut self, policy: &RekeyPolicy, now: Instant) -> bool {
        if self.in_flight || !self.due(policy, now) {
            return false;
        }
        self.in_flight = true;
        self.restart(now);
        true
    }

    pub(crate) fn restart(&mut self, now: Instant) {
        self.records = 0;
        self.bytes = 0;
        self.since = now;
    }

    pub(crate) fn end(&mut self) {
        self.in_flight = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(records: u64, bytes: u64, age: Duration) -> RekeyPolicy {
        RekeyPolicy {
            max_records: records,
            max_bytes: bytes,
            max_age: age,
            grace: Duration::from_secs(60),
        }
    }

    #[test]
    fn due_on_records_bytes_or_age() {
        let t0 = Instant::now();
        let p = policy(3, 100, Duration::from_secs(10));
        let mut c = RekeyClock::new(t0);
        c.sealed(10);
        c.sealed(10);
        assert!(!c.due(&p, t0));
        c.sealed(10);
        assert!(c.due(&p, t0));

        let mut c = RekeyClock::new(t0);
        c.sealed(100);
        assert!(c.due(&p, t0));

        let c = RekeyClock::new(t0);
        assert!(!c.due(&p, t0 + Duration::from_secs(9)));
        assert!(c.due(&p, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn one_rekey_at_a_time_and_the_count_restarts() {
        let t0 = Instant::now();
        let p = policy(2, u64::MAX, Duration::MAX);
        let mut c = RekeyClock::new(t0);
        c.sealed(1);
        c.sealed(1);
        assert!(c.begin(&p, t0));
        // While the RPC runs, more records do not start a second one.
        c.sealed(1);
        c.sealed(1);
        assert!(!c.begin(&p, t0));
        c.end();
        assert!(c.begin(&p, t0));
        c.end();
        assert!(!c.begin(&p, t0));
    }

    #[test]
    fn the_channel_never_rotates_by_itself() {
        let p = channel_policy(&policy(1, 1, Duration::from_secs(1)));
        let c = RekeyClock {
            records: u64::MAX - 1,
            bytes: u64::MAX - 1,
            since: Instant::now(),
            in_flight: false,
        };
        assert!(!c.due(&p, Instant::now() + Duration::from_secs(3600)));
        assert_eq!(p.grace, Duration::from_secs(60));
    }
}
