//! The broker's one table of sessions, protocol v1 and legacy alike: creation at
//! handshake, lookup per record, expiry, caps, eviction, explicit close.
//!
//! A session is the protocol state of one client (for v1: keys, replay window, epochs;
//! for the legacy API: its key and the IVs it used) plus the bookkeeping the broker
//! needs to expire and bound it. The protocol state sits behind a plain mutex: it is
//! held only to open or seal a record (microseconds), never across an await, so
//! concurrent requests of one client interleave freely.
//!
//! # Why sessions have stages
//! A handshake costs a client one round trip and the broker under a kilobyte, so
//! sessions are cheap to create and, unchecked, expensive to hold: one client could
//! fill the table with ClientHellos and lock everyone else out for the idle timeout.
//! So a session is *unused* until it has run a job, and unused sessions are held on
//! short terms:
//! - they expire after [`DEFAULT_UNUSED_TIMEOUT`] without an opened record;
//! - at most [`DEFAULT_MAX_UNUSED`] are held; past that, the oldest goes (so a flood of
//!   handshakes costs only the flood's own sessions, and a new handshake always gets
//!   in);
//! - one source address holds at most [`DEFAULT_MAX_UNUSED_PER_SOURCE`]; more
//!   handshakes from it are refused before any key work;
//! - when the whole table is full, unused sessions go first; only a table full of
//!   sessions that have run jobs refuses a handshake.
//!
//! With an allow-list of client keys a session is *pending* from its ClientHello until
//! its ClientAuth verifies: at most [`DEFAULT_MAX_PENDING_AUTH`] (the oldest goes), each
//! for [`DEFAULT_AUTH_TIMEOUT`]. A session's clock (`last_used`) moves only when a
//! record of it opens, a ClientAuth verifies, or a job ends: a garbage record naming a
//! session id keeps nothing alive.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use enclave_proto::{ServerSession, SessionId};

use crate::http::legacy::LegacyKeys;

/// Default idle timeout of a session that has run a job: a session unused this long
/// is gone (the seed's advice is to expire after inactivity; 15 minutes outlasts any
/// job).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Default absolute lifetime: one hour, as the seed's own cleanup does.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// Default cap on live sessions of every stage (each under 1 KiB).
pub const DEFAULT_MAX_SESSIONS: usize = 100_000;
/// Default cap on jobs in flight per session: one client cannot occupy every executor.
pub const DEFAULT_MAX_JOBS_PER_SESSION: u32 = 64;
/// Default life of a session that has not run a job, after its last opened record: a
/// client sends its first job right after its handshake.
pub const DEFAULT_UNUSED_TIMEOUT: Duration = Duration::from_secs(30);
/// Default cap on sessions that have not run a job; past it the oldest goes. Under a
/// flood of handshakes a new session survives this many newer ones (about 18 MB).
pub const DEFAULT_MAX_UNUSED: usize = 20_000;
/// Default cap on unused (and pending) sessions per source address (IPv4 address, IPv6
/// /64); more handshakes from that source are refused until one runs a job or expires.
/// A pool of a thousand clients starting at once behind one address fits.
pub const DEFAULT_MAX_UNUSED_PER_SOURCE: usize = 1_000;
/// Default time from a ClientHello to its ClientAuth, on brokers with an allow-list.
pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on sessions waiting for their ClientAuth; past it the oldest goes.
pub const DEFAULT_MAX_PENDING_AUTH: usize = 1_000;
/// How often expired sessions are swept out.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// IVs all legacy sessions together remember (each refuses its replay): bounds the
/// legacy API's memory as a whole (about 40 MiB) rather than per session.
pub const DEFAULT_MAX_LEGACY_IVS: usize = 1 << 20;

#[derive(Clone, Debug)]
pub struct SessionLimits {
    /// Idle timeout of sessions that have run a job.
    pub idle_timeout: Duration,
    pub lifetime: Duration,
    pub max_sessions: usize,
    pub max_jobs_per_session: u32,
    pub unused_timeout: Duration,
    pub max_unused: usize,
    /// 0: no per-source cap.
    pub max_unused_per_source: usize,
    pub auth_timeout: Duration,
    pub max_pending_auth: usize,
    pub max_legacy_ivs: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            lifetime: DEFAULT_LIFETIME,
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_jobs_per_session: DEFAULT_MAX_JOBS_PER_SESSION,
            unused_timeout: DEFAULT_UNUSED_TIMEOUT,
            max_unused: DEFAULT_MAX_UNUSED,
            max_unused_per_source: DEFAULT_MAX_UNUSED_PER_SOURCE,
            auth_timeout: DEFAULT_AUTH_TIMEOUT,
            max_pending_auth: DEFAULT_MAX_PENDING_AUTH,
            max_legacy_ivs: DEFAULT_MAX_LEGACY_IVS,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("unknown or expired session; do a new handshake")]
    Unknown,
    #[error("the broker holds its maximum of {0} sessions, all of them in use; retry later")]
    TooManySessions(usize),
    #[error(
        "this address holds its maximum of {0} sessions that have not run a job yet; run a job on one of them, or wait for them to expire"
    )]
    SourceFull(usize),
    #[error("this session already has its maximum of {0} jobs in flight")]
    TooManyJobs(u32),
    #[error("session id collision")]
    Collision,
}

impl From<SessionError> for tonic::Status {
    fn from(e: SessionError) -> tonic::Status {
        match e {
            SessionError::Unknown => tonic::Status::unauthenticated(e.to_string()),
            SessionError::TooManySessions(_)
            | SessionError::SourceFull(_)
            | SessionError::TooManyJobs(_) => tonic::Status::resource_exhausted(e.to_string()),
            SessionError::Collision => tonic::Status::internal(e.to_string()),
        }
    }
}

/// Where a handshake came from, for the per-source cap: an IPv4 address, or an IPv6
/// /64 (one host's share of a network; a host can pick any address in it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Source(u128);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(u128::from(v4.to_ipv6_mapped())),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(u128::from(v4.to_ipv6_mapped())),
                None => Source(u128::from(v6) & !u128::from(u64::MAX)),
            },
        }
    }
}

/// How far a session has come; it only moves forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Stage {
    /// Waiting for its ClientAuth (brokers with an allow-list).
    Pending = 0,
    /// Has not run a job yet.
    Unused = 1,
    /// Has run a job.
    Used = 2,
}

impl Stage {
    fn from_u8(v: u8) -> Stage {
        match v {
            0 => Stage::Pending,
            1 => Stage::Unused,
            _ => Stage::Used,
        }
    }
}

/// The protocol state of a v1 session.
pub type V1State = Mutex<ServerSession>;

/// One session: its protocol state `P` and the table's bookkeeping.
pub struct Session<P = V1State> {
    state: P,
    meta: Meta,
}

struct Meta {
    id: [u8; 16],
    created: Instant,
    /// Milliseconds since `created` at the last use; atomics keep lookups lock-free.
    last_used_ms: AtomicU64,
    jobs: AtomicU32,
    /// A [`Stage`]; changed only under the table's write lock.
    stage: AtomicU8,
    source: Option<Source>,
}

impl Meta {
    fn stage(&self) -> Stage {
        Stage::from_u8(self.stage.load(Ordering::Acquire))
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
        if age >= limits.lifetime {
            return true;
        }
        match self.stage() {
            Stage::Pending => age >= limits.auth_timeout,
            Stage::Unused => idle >= limits.unused_timeout,
            Stage::Used => idle >= limits.idle_timeout && self.jobs.load(Ordering::Relaxed) == 0,
        }
    }
}

impl Session<V1State> {
    /// The protocol state, for opening and sealing. Never hold it across an await.
    pub fn protocol(&self) -> MutexGuard<'_, ServerSession> {
        // A panic while sealing cannot leave the state half-updated in a way that
        // matters more than refusing the client forever would.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<P> Session<P> {
    /// The protocol state of a legacy session (or the mutex of a v1 one).
    pub fn state(&self) -> &P {
        &self.state
    }

    /// Marks the session as used now: call once a record of it has opened (never for
    /// a record that failed to, or garbage would keep a session alive).
    pub fn touch(&self) {
        self.meta.touch();
    }

    /// The session's 16-byte id, as its records name it.
    pub fn id(&self) -> &[u8] {
        &self.meta.id
    }

    /// Whether the session has run a job.
    pub fn has_run_a_job(&self) -> bool {
        self.meta.stage() == Stage::Used
    }
}

/// A table entry: one kind of session or the other, never confused (a v1 record that
/// names a legacy session id finds no session).
#[derive(Clone)]
enum Entry {
    V1(Arc<Session<V1State>>),
    Legacy(Arc<Session<LegacyKeys>>),
}

impl Entry {
    fn meta(&self) -> &Meta {
        match self {
            Entry::V1(s) => &s.meta,
            Entry::Legacy(s) => &s.meta,
        }
    }
}

/// Counts a job against its session for as long as it lives.
pub struct JobSlot<P = V1State> {
    session: Arc<Session<P>>,
}

impl<P> Drop for JobSlot<P> {
    fn drop(&mut self) {
        self.session.meta.jobs.fetch_sub(1, Ordering::AcqRel);
        self.session.meta.touch();
    }
}

/// What the table did under pressure, for logs and the coming metrics.
#[derive(Debug, Default)]
pub struct SessionStats {
    /// Unused sessions dropped to make room (oldest first).
    pub evicted_unused: AtomicU64,
    /// Pending sessions (waiting for ClientAuth) dropped to make room.
    pub evicted_pending: AtomicU64,
    /// Handshakes refused because their source held its maximum of unused sessions.
    pub refused_source: AtomicU64,
    /// Handshakes refused because every session in the table had run a job.
    pub refused_full: AtomicU64,
}

#[derive(Default)]
struct Table {
    sessions: HashMap<[u8; 16], Entry>,
    /// Ids in the order they entered [`Stage::Unused`] / [`Stage::Pending`]. Entries
    /// of sessions that moved on or went are skipped when met, and compacted away
    /// once they outnumber the live ones.
    unused: VecDeque<[u8; 16]>,
    pending: VecDeque<[u8; 16]>,
    unused_count: usize,
    pending_count: usize,
    /// Unused and pending sessions per source.
    sources: HashMap<Source, usize>,
}

impl Table {
    fn count_mut(&mut self, stage: Stage) -> Option<&mut usize> {
        match stage {
            Stage::Pending => Some(&mut self.pending_count),
            Stage::Unused => Some(&mut self.unused_count),
            Stage::Used => None,
        }
    }

    fn queue(&mut self, stage: Stage) -> &mut VecDeque<[u8; 16]> {
        match stage {
            Stage::Pending => &mut self.pending,
            _ => &mut self.unused,
        }
    }

    fn source_count(&self, source: Option<Source>) -> usize {
        source
            .and_then(|s| self.sources.get(&s).copied())
            .unwrap_or(0)
    }

    fn release_source(&mut self, source: Option<Source>) {
        if let Some(source) = source
            && let Some(n) = self.sources.get_mut(&source)
        {
            *n -= 1;
            if *n == 0 {
                self.sources.remove(&source);
            }
        }
    }

    fn add(&mut self, entry: Entry) {
        let meta = entry.meta();
        let (id, stage, source) = (meta.id, meta.stage(), meta.source);
        if let Some(count) = self.count_mut(stage) {
            *count += 1;
            self.queue(stage).push_back(id);
            if let Some(source) = source {
                *self.sources.entry(source).or_default() += 1;
            }
        }
        self.sessions.insert(id, entry);
    }

    fn remove(&mut self, id: &[u8; 16]) -> Option<Entry> {
        let entry = self.sessions.remove(id)?;
        let meta = entry.meta();
        let (stage, source) = (meta.stage(), meta.source);
        if let Some(count) = self.count_mut(stage) {
            *count -= 1;
            self.release_source(source);
        }
        Some(entry)
    }

    /// Moves a session to a later stage, keeping the counts true.
    fn advance(&mut self, meta: &Meta, to: Stage) {
        let from = meta.stage();
        if from as u8 >= to as u8 || !self.sessions.contains_key(&meta.id) {
            return;
        }
        if let Some(count) = self.count_mut(from) {
            *count -= 1;
        }
        meta.stage.store(to as u8, Ordering::Release);
        match self.count_mut(to) {
            Some(count) => {
                *count += 1;
                self.queue(to).push_back(meta.id);
                self.compact(to);
            }
            None => self.release_source(meta.source),
        }
    }

    /// The oldest live session of `stage`, popped off its queue.
    fn pop_oldest(&mut self, stage: Stage) -> Option<[u8; 16]> {
        while let Some(id) = self.queue(stage).pop_front() {
            if self
                .sessions
                .get(&id)
                .is_some_and(|e| e.meta().stage() == stage)
            {
                return Some(id);
            }
        }
        None
    }

    fn evict_oldest(&mut self, stage: Stage) -> bool {
        match self.pop_oldest(stage) {
            Some(id) => self.remove(&id).is_some(),
            None => false,
        }
    }

    /// Drops expired sessions at the fronts of the queues (the oldest), cheaply.
    fn expire_oldest(&mut self, now: Instant, limits: &SessionLimits) {
        for stage in [Stage::Pending, Stage::Unused] {
            while let Some(&id) = self.queue(stage).front() {
                match self.sessions.get(&id) {
                    Some(e) if e.meta().stage() == stage && !e.meta().expired(now, limits) => {
                        break;
                    }
                    Some(e) if e.meta().stage() == stage => {
                        self.queue(stage).pop_front();
                        self.remove(&id);
                    }
                    _ => {
                        self.queue(stage).pop_front();
                    }
                }
            }
        }
    }

    /// Drops queue entries of sessions that left the stage once they outnumber the
    /// live ones, so the queues stay proportional to the sessions they track.
    fn compact(&mut self, stage: Stage) {
        let live = match stage {
            Stage::Pending => self.pending_count,
            Stage::Unused => self.unused_count,
            Stage::Used => return,
        };
        if self.queue(stage).len() <= 2 * live + 64 {
            return;
        }
        let mut queue = std::mem::take(self.queue(stage));
        queue.retain(|id| {
            self.sessions
                .get(id)
                .is_some_and(|e| e.meta().stage() == stage)
        });
        *self.queue(stage) = queue;
    }
}

pub struct SessionStore {
    table: RwLock<Table>,
    limits: SessionLimits,
    stats: SessionStats,
    /// IVs the legacy sessions remember, all together.
    legacy_ivs: Arc<AtomicUsize>,
    sweeping: AtomicBool,
}

impl SessionStore {
    pub fn new(limits: SessionLimits) -> SessionStore {
        SessionStore {
            table: RwLock::new(Table::default()),
            limits,
            stats: SessionStats::default(),
            legacy_ivs: Arc::new(AtomicUsize::new(0)),
            sweeping: AtomicBool::new(false),
        }
    }

    pub fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    pub fn len(&self) -> usize {
        self.read().sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sessions that have not run a job yet, pending ones included.
    pub fn unused(&self) -> usize {
        let table = self.read();
        table.unused_count + table.pending_count
    }

    /// Sessions waiting for their ClientAuth.
    pub fn pending(&self) -> usize {
        self.read().pending_count
    }

    /// The counter of IVs all legacy sessions remember (see [`LegacyKeys`]).
    pub(crate) fn legacy_ivs(&self) -> &Arc<AtomicUsize> {
        &self.legacy_ivs
    }

    /// Refuses a new handshake early, before any key work: its source holds its
    /// maximum of unused sessions, or every session in the table has run a job.
    pub fn admit(&self, source: Option<Source>) -> Result<(), SessionError> {
        let table = self.read();
        self.check_room(&table, source)
    }

    fn check_room(&self, table: &Table, source: Option<Source>) -> Result<(), SessionError> {
        let per_source = self.limits.max_unused_per_source;
        if per_source > 0 && table.source_count(source) >= per_source {
            self.stats.refused_source.fetch_add(1, Ordering::Relaxed);
            return Err(SessionError::SourceFull(per_source));
        }
        if table.sessions.len() >= self.limits.max_sessions
            && table.unused_count + table.pending_count == 0
        {
            self.stats.refused_full.fetch_add(1, Ordering::Relaxed);
            return Err(SessionError::TooManySessions(self.limits.max_sessions));
        }
        Ok(())
    }

    /// Stores a v1 session after its ServerHello: pending when the broker requires
    /// client authentication, unused otherwise.
    pub fn insert(
        &self,
        protocol: ServerSession,
        source: Option<Source>,
    ) -> Result<SessionId, SessionError> {
        let id = protocol.session_id();
        let stage = if protocol.client_auth_required() {
            Stage::Pending
        } else {
            Stage::Unused
        };
        let session = Arc::new(Session {
            state: Mutex::new(protocol),
            meta: self.meta(*id.as_bytes(), stage, source),
        });
        self.insert_entry(Entry::V1(session))?;
        Ok(id)
    }

    /// Stores a legacy session under `id`.
    pub(crate) fn insert_legacy(
        &self,
        id: [u8; 16],
        keys: LegacyKeys,
        source: Option<Source>,
    ) -> Result<(), SessionError> {
        let session = Arc::new(Session {
            state: keys,
            meta: self.meta(id, Stage::Unused, source),
        });
        self.insert_entry(Entry::Legacy(session))
    }

    fn meta(&self, id: [u8; 16], stage: Stage, source: Option<Source>) -> Meta {
        Meta {
            id,
            created: Instant::now(),
            last_used_ms: AtomicU64::new(0),
            jobs: AtomicU32::new(0),
            stage: AtomicU8::new(stage as u8),
            source,
        }
    }

    fn insert_entry(&self, entry: Entry) -> Result<(), SessionError> {
        let meta = entry.meta();
        let (id, stage, source) = (meta.id, meta.stage(), meta.source);
        let mut table = self.write();
        table.expire_oldest(Instant::now(), &self.limits);
        self.check_room(&table, source)?;
        if table.sessions.contains_key(&id) {
            return Err(SessionError::Collision);
        }
        // Room in the session's own stage: the oldest of that stage goes.
        let (cap, evicted) = match stage {
            Stage::Pending => (self.limits.max_pending_auth, &self.stats.evicted_pending),
            _ => (self.limits.max_unused, &self.stats.evicted_unused),
        };
        while table.count_mut(stage).is_some_and(|n| *n >= cap) && table.evict_oldest(stage) {
            evicted.fetch_add(1, Ordering::Relaxed);
        }
        // Room in the table: sessions that never ran a job go first, pending ones
        // (the cheapest to redo) before unused ones.
        while table.sessions.len() >= self.limits.max_sessions {
            if table.evict_oldest(Stage::Pending) {
                self.stats.evicted_pending.fetch_add(1, Ordering::Relaxed);
            } else if table.evict_oldest(Stage::Unused) {
                self.stats.evicted_unused.fetch_add(1, Ordering::Relaxed);
            } else {
                self.stats.refused_full.fetch_add(1, Ordering::Relaxed);
                return Err(SessionError::TooManySessions(self.limits.max_sessions));
            }
        }
        table.add(entry);
        table.compact(stage);
        Ok(())
    }

    /// The live v1 session named by `id` (raw bytes from a record). Does not mark it
    /// used: see [`Session::touch`].
    pub fn get(&self, id: &[u8]) -> Result<Arc<Session>, SessionError> {
        match self.entry(id)? {
            Entry::V1(session) => Ok(session),
            Entry::Legacy(_) => Err(SessionError::Unknown),
        }
    }

    /// The live legacy session named by `id`.
    pub(crate) fn get_legacy(
        &self,
        id: &[u8; 16],
    ) -> Result<Arc<Session<LegacyKeys>>, SessionError> {
        match self.entry(id)? {
            Entry::Legacy(session) => Ok(session),
            Entry::V1(_) => Err(SessionError::Unknown),
        }
    }

    fn entry(&self, id: &[u8]) -> Result<Entry, SessionError> {
        let id: [u8; 16] = id.try_into().map_err(|_| SessionError::Unknown)?;
        let entry = self
            .read()
            .sessions
            .get(&id)
            .cloned()
            .ok_or(SessionError::Unknown)?;
        if entry.meta().expired(Instant::now(), &self.limits) {
            self.write().remove(&id);
            return Err(SessionError::Unknown);
        }
        Ok(entry)
    }

    /// A pending session's ClientAuth verified: it becomes an unused session.
    pub fn authenticated(&self, session: &Session) {
        session.touch();
        if session.meta.stage() == Stage::Pending {
            self.write().advance(&session.meta, Stage::Unused);
        }
    }

    /// Reserves a job slot on the session, or refuses past the per-session cap. The
    /// session counts as used from now on.
    pub fn start_job<P>(&self, session: &Arc<Session<P>>) -> Result<JobSlot<P>, SessionError> {
        let max = self.limits.max_jobs_per_session;
        let taken = session
            .meta
            .jobs
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(SessionError::TooManyJobs(max));
        }
        let slot = JobSlot {
            session: session.clone(),
        };
        if session.meta.stage() != Stage::Used {
            self.write().advance(&session.meta, Stage::Used);
        }
        Ok(slot)
    }

    pub fn remove(&self, id: &[u8]) {
        if let Ok(id) = <[u8; 16]>::try_from(id) {
            self.write().remove(&id);
        }
    }

    /// Drops expired sessions and expired previous-epoch keys; returns how many
    /// sessions went.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut table = self.write();
        let expired: Vec<[u8; 16]> = table
            .sessions
            .iter()
            .filter(|(_, e)| e.meta().expired(now, &self.limits))
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            table.remove(id);
        }
        table.compact(Stage::Pending);
        table.compact(Stage::Unused);
        for entry in table.sessions.values() {
            if let Entry::V1(s) = entry {
                s.protocol().channel().drop_expired_keys();
            }
        }
        expired.len()
    }

    /// Sweeps every `interval` for as long as the store lives; a second call (the
    /// gRPC and the HTTP listener share the store) does nothing. Logs, at most once
    /// per sweep, what the table refused or evicted since the last one.
    pub fn spawn_sweeper(self: &Arc<Self>, interval: Duration) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            let mut reported = [0u64; 4];
            loop {
                tick.tick().await;
                let Some(store) = store.upgrade() else { return };
                let gone = store.sweep();
                if gone > 0 {
                    tracing::debug!(gone, live = store.len(), "swept expired sessions");
                }
                let stats = &store.stats;
                let now = [
                    stats.evicted_unused.load(Ordering::Relaxed),
                    stats.evicted_pending.load(Ordering::Relaxed),
                    stats.refused_source.load(Ordering::Relaxed),
                    stats.refused_full.load(Ordering::Relaxed),
                ];
                if now != reported {
                    tracing::warn!(
                        evicted_unused = now[0] - reported[0],
                        evicted_pending = now[1] - reported[1],
                        refused_per_source = now[2] - reported[2],
                        refused_full = now[3] - reported[3],
                        live = store.len(),
                        "session table under pressure"
                    );
                    reported = now;
                }
            }
        });
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use enclave_proto::{ClientConfig, ClientHandshake, IdentityKey, ServerConfig};

    fn server(allow: bool) -> ServerConfig {
        let identity = Arc::new(IdentityKey::generate().unwrap());
        let mut config = ServerConfig::new(identity);
        if allow {
            config.allowed_clients = Some(Vec::new());
        }
        config
    }

    fn session(config: &ServerConfig) -> ServerSession {
        let pin = config.identity.fingerprint();
        let (_, hello) = ClientHandshake::start(&ClientConfig::new(pin)).unwrap();
        enclave_proto::handshake::accept(config, &hello).unwrap().0
    }

    fn source(last: u8) -> Option<Source> {
        Some(Source::of(IpAddr::from([10, 0, 0, last])))
    }

    #[test]
    fn sources_group_ipv6_by_64_and_map_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Source::of(a), Source::of(b));
        assert_ne!(Source::of(a), Source::of(c));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(Source::of(v4), Source::of(mapped));
        assert_ne!(Source::of(v4), Source::of("192.0.2.8".parse().unwrap()));
    }

    #[test]
    fn the_oldest_unused_session_goes_when_unused_ones_are_at_their_cap() {
        let config = server(false);
        let store = SessionStore::new(SessionLimits {
            max_unused: 3,
            ..SessionLimits::default()
        });
        let ids: Vec<_> = (0..5)
            .map(|i| store.insert(session(&config), source(i)).unwrap())
            .collect();
        assert_eq!(store.len(), 3);
        assert!(store.get(ids[0].as_bytes()).is_err());
        assert!(store.get(ids[1].as_bytes()).is_err());
        assert!(store.get(ids[4].as_bytes()).is_ok());
        assert_eq!(store.stats().evicted_unused.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn used_sessions_are_not_evicted_and_a_full_table_of_them_refuses() {
        let config = server(false);
        let store = SessionStore::new(SessionLimits {
            max_sessions: 2,
            ..SessionLimits::default()
        });
        let a = store.insert(session(&config), source(1)).unwrap();
        let a = store.get(a.as_bytes()).unwrap();
        drop(store.start_job(&a).unwrap());
        let b = store.insert(session(&config), source(2)).unwrap();
        // Full: the unused `b` makes room for `c`; the used `a` stays.
        let c = store.insert(session(&config), source(3)).unwrap();
        assert!(store.get(b.as_bytes()).is_err());
        let c = store.get(c.as_bytes()).unwrap();
        drop(store.start_job(&c).unwrap());
        assert_eq!(
            store.admit(source(4)),
            Err(SessionError::TooManySessions(2))
        );
        assert!(store.insert(session(&config), source(4)).is_err());
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn one_source_is_refused_past_its_unused_sessions() {
        let config = server(false);
        let store = SessionStore::new(SessionLimits {
            max_unused_per_source: 2,
            ..SessionLimits::default()
        });
        let a = store.insert(session(&config), source(1)).unwrap();
        store.insert(session(&config), source(1)).unwrap();
        assert_eq!(store.admit(source(1)), Err(SessionError::SourceFull(2)));
        assert!(store.admit(source(2)).is_ok());
        // A job frees the source's slot.
        let a = store.get(a.as_bytes()).unwrap();
        drop(store.start_job(&a).unwrap());
        assert!(store.admit(source(1)).is_ok());
        store.insert(session(&config), source(1)).unwrap();
        assert!(store.admit(source(1)).is_err());
        assert_eq!(store.unused(), 2);
    }

    #[test]
    fn unused_and_pending_sessions_expire_on_their_short_terms() {
        let store = SessionStore::new(SessionLimits {
            unused_timeout: Duration::from_millis(50),
            auth_timeout: Duration::from_millis(50),
            ..SessionLimits::default()
        });
        let unused = store.insert(session(&server(false)), None).unwrap();
        let pending = store.insert(session(&server(true)), None).unwrap();
        let used = store.insert(session(&server(false)), None).unwrap();
        let used = store.get(used.as_bytes()).unwrap();
        drop(store.start_job(&used).unwrap());
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(store.sweep(), 2);
        assert!(store.get(unused.as_bytes()).is_err());
        assert!(store.get(pending.as_bytes()).is_err());
        assert_eq!(store.len(), 1);
        assert_eq!(store.unused(), 0);
    }

    #[test]
    fn pending_sessions_have_their_own_cap() {
        let config = server(true);
        let store = SessionStore::new(SessionLimits {
            max_pending_auth: 2,
            ..SessionLimits::default()
        });
        let first = store.insert(session(&config), None).unwrap();
        for _ in 0..3 {
            store.insert(session(&config), None).unwrap();
        }
        assert_eq!(store.len(), 2);
        assert!(store.get(first.as_bytes()).is_err());
        assert_eq!(store.stats().evicted_pending.load(Ordering::Relaxed), 2);
        // An unused session is not displaced by pending ones.
        let unused = store.insert(session(&server(false)), None).unwrap();
        store.insert(session(&config), None).unwrap();
        assert!(store.get(unused.as_bytes()).is_ok());
    }

    #[test]
    fn a_lookup_alone_does_not_keep_a_session_alive() {
        let store = SessionStore::new(SessionLimits {
            unused_timeout: Duration::from_millis(100),
            ..SessionLimits::default()
        });
        let id = store.insert(session(&server(false)), None).unwrap();
        for _ in 0..6 {
            std::thread::sleep(Duration::from_millis(25));
            let _ = store.get(id.as_bytes());
        }
        assert_eq!(store.get(id.as_bytes()).err(), Some(SessionError::Unknown));
    }

    #[test]
    fn queues_stay_proportional_to_live_sessions() {
        let config = server(false);
        let store = SessionStore::new(SessionLimits::default());
        for _ in 0..1000 {
            let id = store.insert(session(&config), None).unwrap();
            let s = store.get(id.as_bytes()).unwrap();
            drop(store.start_job(&s).unwrap());
        }
        let table = store.read();
        assert!(table.unused.len() <= 64 + 1, "{}", table.unused.len());
        assert_eq!(table.unused_count, 0);
    }
}
