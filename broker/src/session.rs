//! The broker's table of encrypted sessions: creation at handshake, lookup per record,
//! idle and absolute expiry, caps, explicit close.
//!
//! A session is the protocol state of one client (keys, replay window, epochs) plus
//! the bookkeeping the broker needs to expire and bound it. The protocol state sits
//! behind a plain mutex: it is held only to open or seal a record (microseconds), never
//! across an await, so concurrent requests of one client interleave freely.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use enclave_proto::{ServerSession, SessionId};

/// Default idle timeout: a session unused this long is gone (the seed's advice is to
/// expire after inactivity; 15 minutes outlasts any job).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Default absolute lifetime: one hour, as the seed's own cleanup does.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// Default cap on live sessions: bounds the memory an anonymous flood of handshakes can
/// pin (under 1 KiB each) while leaving room for any real deployment.
pub const DEFAULT_MAX_SESSIONS: usize = 100_000;
/// Default cap on jobs in flight per session: one client cannot occupy every executor.
pub const DEFAULT_MAX_JOBS_PER_SESSION: u32 = 64;
/// How often expired sessions are swept out.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct SessionLimits {
    pub idle_timeout: Duration,
    pub lifetime: Duration,
    pub max_sessions: usize,
    pub max_jobs_per_session: u32,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            lifetime: DEFAULT_LIFETIME,
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_jobs_per_session: DEFAULT_MAX_JOBS_PER_SESSION,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("unknown or expired session; do a new handshake")]
    Unknown,
    #[error("the broker holds its maximum of {0} sessions; retry later")]
    TooManySessions(usize),
    #[error("this session already has its maximum of {0} jobs in flight")]
    TooManyJobs(u32),
}

impl From<SessionError> for tonic::Status {
    fn from(e: SessionError) -> tonic::Status {
        match e {
            SessionError::Unknown => tonic::Status::unauthenticated(e.to_string()),
            SessionError::TooManySessions(_) | SessionError::TooManyJobs(_) => {
                tonic::Status::resource_exhausted(e.to_string())
            }
        }
    }
}

pub struct Session {
    protocol: Mutex<ServerSession>,
    created: Instant,
    /// Milliseconds since `created` at the last use; atomics keep lookups lock-free.
    last_used_ms: AtomicU64,
    jobs: AtomicU32,
}

impl Session {
    /// The protocol state, for opening and sealing. Never hold it across an await.
    pub fn protocol(&self) -> MutexGuard<'_, ServerSession> {
        // A panic while sealing cannot leave the state half-updated in a way that
        // matters more than refusing the client forever would.
        self.protocol
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn touch(&self) {
        self.last_used_ms
            .store(self.created.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn expired(&self, now: Instant, limits: &SessionLimits) -> bool {
        let age = now.saturating_duration_since(self.created);
        let idle = age.saturating_sub(Duration::from_millis(
            self.last_used_ms.load(Ordering::Relaxed),
        ));
        age >= limits.lifetime
            || (idle >= limits.idle_timeout && self.jobs.load(Ordering::Relaxed) == 0)
    }
}

/// Counts a job against its session for as long as it lives.
pub struct JobSlot {
    session: Arc<Session>,
}

impl Drop for JobSlot {
    fn drop(&mut self) {
        self.session.jobs.fetch_sub(1, Ordering::AcqRel);
        self.session.touch();
    }
}

pub struct SessionStore {
    sessions: RwLock<HashMap<SessionId, Arc<Session>>>,
    limits: SessionLimits,
}

impl SessionStore {
    pub fn new(limits: SessionLimits) -> SessionStore {
        SessionStore {
            sessions: RwLock::new(HashMap::new()),
            limits,
        }
    }

    pub fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refuses a new handshake early, before any key work, when the table is full.
    pub fn check_capacity(&self) -> Result<(), SessionError> {
        if self.len() >= self.limits.max_sessions {
            Err(SessionError::TooManySessions(self.limits.max_sessions))
        } else {
            Ok(())
        }
    }

    pub fn insert(&self, protocol: ServerSession) -> Result<SessionId, SessionError> {
        let id = protocol.session_id();
        let mut sessions = self.write();
        if sessions.len() >= self.limits.max_sessions {
            return Err(SessionError::TooManySessions(self.limits.max_sessions));
        }
        let session = Session {
            protocol: Mutex::new(protocol),
            created: Instant::now(),
            last_used_ms: AtomicU64::new(0),
            jobs: AtomicU32::new(0),
        };
        sessions.insert(id, Arc::new(session));
        Ok(id)
    }

    /// The live session named by `id` (raw bytes from a record), refreshed as used.
    pub fn get(&self, id: &[u8]) -> Result<Arc<Session>, SessionError> {
        let id = SessionId::from_slice(id).map_err(|_| SessionError::Unknown)?;
        let session = self.read().get(&id).cloned().ok_or(SessionError::Unknown)?;
        if session.expired(Instant::now(), &self.limits) {
            self.write().remove(&id);
            return Err(SessionError::Unknown);
        }
        session.touch();
        Ok(session)
    }

    /// Reserves a job slot on the session, or refuses past the per-session cap.
    pub fn start_job(&self, session: &Arc<Session>) -> Result<JobSlot, SessionError> {
        let max = self.limits.max_jobs_per_session;
        let taken = session
            .jobs
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(JobSlot {
                session: session.clone(),
            }),
            Err(_) => Err(SessionError::TooManyJobs(max)),
        }
    }

    pub fn remove(&self, id: &[u8]) {
        if let Ok(id) = SessionId::from_slice(id) {
            self.write().remove(&id);
        }
    }

    /// Drops expired sessions and expired previous-epoch keys; returns how many
    /// sessions went.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut sessions = self.write();
        let before = sessions.len();
        sessions.retain(|_, s| !s.expired(now, &self.limits));
        for s in sessions.values() {
            s.protocol().channel().drop_expired_keys();
        }
        before - sessions.len()
    }

    /// Sweeps every `interval` for as long as the store lives.
    pub fn spawn_sweeper(self: &Arc<Self>, interval: Duration) {
        spawn_sweeper(self, interval, |store| (store.sweep(), store.len()));
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<SessionId, Arc<Session>>> {
        self.sessions.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<SessionId, Arc<Session>>> {
        self.sessions.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Calls `sweep` on `table` every `interval` for as long as the table lives (the task
/// holds it weakly), logging how many entries went. Shared by the v1 session store and
/// the legacy HTTP session table. `sweep` returns (removed, still live).
pub(crate) fn spawn_sweeper<T: Send + Sync + 'static>(
    table: &Arc<T>,
    interval: Duration,
    sweep: impl Fn(&T) -> (usize, usize) + Send + 'static,
) {
    let table = Arc::downgrade(table);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(table) = table.upgrade() else { return };
            let (gone, live) = sweep(&table);
            if gone > 0 {
                tracing::debug!(gone, live, "swept expired sessions");
            }
        }
    });
}
