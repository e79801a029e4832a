//! Which failed calls are retried, and how often.
//!
//! Only statuses that the broker gives *before* it runs anything are retried (docs/
//! PROTOCOL.md section 11), and only before any sealed answer was opened, so a retry can
//! never run a job twice:
//! - UNAUTHENTICATED: the session is unknown or expired (or a record failed to
//!   authenticate). A new handshake, then the request once more.
//! - ABORTED: replay window or key epoch trouble. The same session, re-sealed under a
//!   fresh sequence number.
//!
//! Everything else (RESOURCE_EXHAUSTED, UNAVAILABLE, INVALID_ARGUMENT, ...) goes back to
//! the caller, who knows whether backing off is worth it.

use tonic::Code;

/// What to do before the next attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Drop the session, handshake again, re-seal.
    NewSession,
    /// Re-seal on the same session.
    Reseal,
}

/// Attempts left for one request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryBudget {
    new_sessions: u8,
    reseals: u8,
}

/// One new session per request: the brief's "retry once, transparently". A second
/// UNAUTHENTICATED on a fresh session is a configuration problem, not an expiry.
const NEW_SESSIONS: u8 = 1;
/// ABORTED needs concurrent requests racing a key update; two re-seals outlast any
/// realistic race without looping on a broker that always aborts.
const RESEALS: u8 = 2;

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            new_sessions: NEW_SESSIONS,
            reseals: RESEALS,
        }
    }
}

impl RetryBudget {
    /// Spends one attempt for a call that failed with `code`, if it may be retried.
    pub(crate) fn next(&mut self, code: Code) -> Option<Retry> {
        match code {
            Code::Unauthenticated if self.new_sessions > 0 => {
                self.new_sessions -= 1;
                Some(Retry::NewSession)
            }
            Code::Aborted if self.reseals > 0 => {
                self.reseals -= 1;
                Some(Retry::Reseal)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthenticated_gets_one_new_session() {
        let mut b = RetryBudget::default();
        assert_eq!(b.next(Code::Unauthenticated), Some(Retry::NewSession));
        assert_eq!(b.next(Code::Unauthenticated), None);
    }

    #[test]
    fn aborted_is_resealed_a_bounded_number_of_times() {
        let mut b = RetryBudget::default();
        assert_eq!(b.next(Code::Aborted), Some(Retry::Reseal));
        assert_eq!(b.next(Code::Aborted), Some(Retry::Reseal));
        assert_eq!(b.next(Code::Aborted), None);
        // The budgets are separate: an expiry after aborts still gets its new session.
        assert_eq!(b.next(Code::Unauthenticated), Some(Retry::NewSession));
    }

    #[test]
    fn everything_else_goes_to_the_caller() {
        for code in [
            Code::InvalidArgument,
            Code::ResourceExhausted,
            Code::Unavailable,
            Code::FailedPrecondition,
            Code::Internal,
            Code::DeadlineExceeded,
            Code::Cancelled,
            Code::Unknown,
            Code::Ok,
        ] {
            assert_eq!(RetryBudget::default().next(code), None, "{code:?}");
        }
    }
}
