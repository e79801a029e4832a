//! The record layer: sealing and opening `SealedRecord`s once a handshake is done.
//!
//! TLS 1.3's record protection (RFC 8446 section 5.3) with three changes a many-request
//! RPC session needs:
//! - associated data names the session, direction, epoch, sequence number, record kind
//!   and, for replies, the request answered and the event's place in its stream, so a
//!   record cannot be moved to another session, request, stream position or meaning;
//! - the broker accepts requests out of order inside a 1024-record sliding window
//!   (RFC 4303 section 3.4.3 anti-replay) because concurrent RPCs on one session overtake
//!   each other, while still refusing every replay;
//! - replies are accepted by what they answer (request sequence number, stream index),
//!   not by arrival order, so one slow stream never ages out behind a fast one.
//!
//! Sequence numbers count records per direction for the whole session and do not
//! restart at a key update, so one window serves every epoch and a request is named by
//! its sequence number alone.

use std::fmt;
use std::time::{Duration, Instant};

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::key_schedule::{self, IV_LEN, KEY_LEN, Secret};
use crate::keys::hex;
use crate::v1::{self, RecordKind, SealedRecord};

pub const SESSION_ID_LEN: usize = 16;
/// AES-GCM tag length, appended to every ciphertext.
pub const TAG_LEN: usize = 16;
/// How far behind the newest request an out-of-order request may arrive.
pub const REPLAY_WINDOW: u64 = 1024;
pub use crate::MAX_PLAINTEXT_LEN;
/// Length of the associated data of every record.
pub const AD_LEN: usize = 42;

/// The 16 random bytes that name a session (chosen by the broker, in the transcript).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId([u8; SESSION_ID_LEN]);

impl SessionId {
    pub fn from_bytes(bytes: [u8; SESSION_ID_LEN]) -> Self {
        SessionId(bytes)
    }

    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        bytes
            .try_into()
            .map(SessionId)
            .map_err(|_| Error::Malformed("session id (must be 16 bytes)"))
    }

    pub fn generate() -> Result<Self> {
        let mut bytes = [0u8; SESSION_ID_LEN];
        getrandom::fill(&mut bytes).map_err(Error::Rng)?;
        Ok(SessionId(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; SESSION_ID_LEN] {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// Which way a record travels; part of the associated data, so a record can never be
/// reflected back to its sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Direction {
    ClientToBroker = 1,
    BrokerToClient = 2,
}

/// The direction a kind travels in; `None` for `UNSPECIFIED`.
pub fn kind_direction(kind: RecordKind) -> Option<Direction> {
    use RecordKind::*;
    match kind {
        ExecuteRequest | StreamRequest | CloseRequest | RekeyRequest | ListToolsRequest
        | ToolResult => Some(Direction::ClientToBroker),
        ExecuteResult | StreamEvent | StreamFinal | CloseResult | RekeyResult | ListToolsResult
        | ToolResultAck => Some(Direction::BrokerToClient),
        Unspecified => None,
    }
}

/// When a sender moves to the next key epoch, and how long a receiver still accepts
/// the previous one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RekeyPolicy {
    /// Records sealed under one key. Default 2^24 (TLS 1.3's AES-GCM guidance is
    /// 2^24.5 full records).
    pub max_records: u64,
    /// Plaintext bytes sealed under one key. Default 2^36 (64 GiB), well inside
    /// AES-GCM's confidentiality bound for 2^-57 advantage.
    pub max_bytes: u64,
    /// Age of a sending key. Default 10 minutes: limits what one leaked traffic key
    /// reveals of a long session.
    pub max_age: Duration,
    /// How long the receiver still opens records of the previous epoch after the first
    /// record of the new one. Default 60 s: requests already in flight, and stream
    /// events still queued, when the sender switched.
    pub grace: Duration,
}

impl Default for RekeyPolicy {
    fn default() -> Self {
        RekeyPolicy {
            max_records: 1 << 24,
            max_bytes: 1 << 36,
            max_age: Duration::from_secs(600),
            grace: Duration::from_secs(60),
        }
    }
}

/// The associated data of a record (docs/PROTOCOL.md, "Records"):
/// `session_id[16] || direction u8 || epoch u32 || seq u64 || kind u8 ||
/// request_seq u64 || event_index u32`, integers big-endian.
pub fn record_ad(
    session_id: &SessionId,
    direction: Direction,
    epoch: u32,
    seq: u64,
    kind: RecordKind,
    request_seq: u64,
    event_index: u32,
) -> [u8; AD_LEN] {
    let mut ad = [0u8; AD_LEN];
    ad[..16].copy_from_slice(&session_id.0);
    ad[16] = direction as u8;
    ad[17..21].copy_from_slice(&epoch.to_be_bytes());
    ad[21..29].copy_from_slice(&seq.to_be_bytes());
    ad[29] = kind as i32 as u8;
    ad[30..38].copy_from_slice(&request_seq.to_be_bytes());
    ad[38..42].copy_from_slice(&event_index.to_be_bytes());
    ad
}

/// TLS 1.3 per-record nonce: the epoch's IV XOR the 64-bit sequence number, left-padded
/// to 12 bytes. Unique per key because the sender never reuses a sequence number.
pub fn record_nonce(iv: &[u8; IV_LEN], seq: u64) -> [u8; IV_LEN] {
    let mut nonce = *iv;
    for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
        *n ^= s;
    }
    nonce
}

/// One epoch of one direction. Only the secret, key and IV are kept; the AES key
/// schedule is rebuilt per record (well under a microsecond with AES-NI) so that an
/// idle session holds 80 bytes per epoch instead of an expanded cipher.
struct EpochKeys {
    epoch: u32,
    secret: Secret,
    key: Zeroizing<[u8; KEY_LEN]>,
    iv: [u8; IV_LEN],
}

impl EpochKeys {
    fn new(epoch: u32, secret: Secret) -> Self {
        let (key, iv) = key_schedule::traffic_key_iv(&secret);
        EpochKeys {
            epoch,
            secret,
            key,
            iv,
        }
    }

    fn next(&self) -> Result<Self> {
        let epoch = self.epoch.checked_add(1).ok_or(Error::Exhausted)?;
        Ok(Self::new(
            epoch,
            key_schedule::next_traffic_secret(&self.secret),
        ))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&*self.key).into())
    }
}

struct Sender {
    keys: EpochKeys,
    next_seq: u64,
    epoch_records: u64,
    epoch_bytes: u64,
    epoch_started: Instant,
}

struct Previous {
    keys: EpochKeys,
    expires: Instant,
}

struct Receiver {
    current: EpochKeys,
    /// Boxed: present only during a grace period, so idle sessions pay 8 bytes.
    previous: Option<Box<Previous>>,
}

/// What both ends share: keys and counters for one sending and one receiving
/// direction.
struct Core {
    session_id: SessionId,
    send_direction: Direction,
    policy: RekeyPolicy,
    send: Sender,
    recv: Receiver,
}

/// Which key opens a record: a current, previous or freshly derived next epoch.
enum KeyChoice {
    Current,
    Previous,
    Next(EpochKeys),
}

impl Core {
    fn new(
        session_id: SessionId,
        send_direction: Direction,
        send_secret: Secret,
        recv_secret: Secret,
        policy: RekeyPolicy,
        now: Instant,
    ) -> Self {
        Core {
            session_id,
            send_direction,
            policy,
            send: Sender {
                keys: EpochKeys::new(0, send_secret),
                next_seq: 0,
                epoch_records: 0,
                epoch_bytes: 0,
                epoch_started: now,
            },
            recv: Receiver {
                current: EpochKeys::new(0, recv_secret),
                previous: None,
            },
        }
    }

    fn recv_direction(&self) -> Direction {
        match self.send_direction {
            Direction::ClientToBroker => Direction::BrokerToClient,
            Direction::BrokerToClient => Direction::ClientToBroker,
        }
    }

    fn rotate_send_at(&mut self, now: Instant) -> Result<()> {
        self.send.keys = self.send.keys.next()?;
        self.send.epoch_records = 0;
        self.send.epoch_bytes = 0;
        self.send.epoch_started = now;
        Ok(())
    }

    fn seal_at(
        &mut self,
        now: Instant,
        kind: RecordKind,
        request_seq: u64,
        event_index: u32,
        plaintext: &[u8],
    ) -> Result<SealedRecord> {
        if kind_direction(kind) != Some(self.send_direction) {
            return Err(Error::UnexpectedKind {
                expected: RecordKind::Unspecified,
                got: kind,
            });
        }
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(Error::RecordTooLarge(plaintext.len()));
        }
        let policy = &self.policy;
        if self.send.epoch_records >= policy.max_records
            || self.send.epoch_bytes >= policy.max_bytes
            || now.saturating_duration_since(self.send.epoch_started) >= policy.max_age
        {
            self.rotate_send_at(now)?;
        }
        // u64::MAX is never used, so a receiver's window arithmetic cannot overflow.
        if self.send.next_seq == u64::MAX {
            return Err(Error::Exhausted);
        }
        let seq = self.send.next_seq;
        let keys = &self.send.keys;
        let ad = record_ad(
            &self.session_id,
            self.send_direction,
            keys.epoch,
            seq,
            kind,
            request_seq,
            event_index,
        );
        let nonce = record_nonce(&keys.iv, seq);
        let mut ciphertext = Vec::with_capacity(plaintext.len() + TAG_LEN);
        ciphertext.extend_from_slice(plaintext);
        let tag = keys
            .cipher()
            .encrypt_inout_detached(&Nonce::from(nonce), &ad, ciphertext.as_mut_slice().into())
            .map_err(|_| Error::RecordTooLarge(plaintext.len()))?;
        ciphertext.extend_from_slice(&tag);
        self.send.next_seq += 1;
        self.send.epoch_records += 1;
        self.send.epoch_bytes = self.send.epoch_bytes.saturating_add(plaintext.len() as u64);
        Ok(SealedRecord {
            session_id: self.session_id.0.to_vec(),
            epoch: keys.epoch,
            seq,
            kind: kind as i32,
            event_index,
            ciphertext,
        })
    }

    fn drop_expired_at(&mut self, now: Instant) {
        if self
            .recv
            .previous
            .as_ref()
            .is_some_and(|p| now >= p.expires)
        {
            self.recv.previous = None;
        }
    }

    /// Checks everything that is cheap before decrypting; decrypts; and only if the tag
    /// verifies, lets the record move the receive epoch (and the caller's window).
    fn open_at(
        &mut self,
        now: Instant,
        record: &SealedRecord,
        expected: &[RecordKind],
        request_seq: u64,
        event_index: u32,
        window: Option<&mut ReplayWindow>,
    ) -> Result<(RecordKind, Vec<u8>)> {
        if record.session_id.as_slice() != self.session_id.0.as_slice() {
            return Err(Error::WrongSession);
        }
        let kind =
            RecordKind::try_from(record.kind).map_err(|_| Error::Malformed("record kind"))?;
        if !expected.contains(&kind) || kind_direction(kind) != Some(self.recv_direction()) {
            return Err(Error::UnexpectedKind {
                expected: expected.first().copied().unwrap_or(RecordKind::Unspecified),
                got: kind,
            });
        }
        if record.event_index != event_index {
            return Err(Error::StreamOrder {
                expected: event_index,
                got: record.event_index,
            });
        }
        if record.ciphertext.len() < TAG_LEN {
            return Err(Error::Malformed("ciphertext shorter than its tag"));
        }
        // Refused before decryption: nobody seals more, and opening it would cost a
        // copy of it.
        if record.ciphertext.len() - TAG_LEN > MAX_PLAINTEXT_LEN {
            return Err(Error::RecordTooLarge(record.ciphertext.len() - TAG_LEN));
        }
        if record.seq == u64::MAX {
            return Err(Error::Malformed("sequence number"));
        }
        if let Some(w) = window.as_deref() {
            w.check(record.seq)?;
        }
        self.drop_expired_at(now);

        let current = self.recv.current.epoch;
        let choice = if record.epoch == current {
            KeyChoice::Current
        } else if current.checked_add(1) == Some(record.epoch) {
            KeyChoice::Next(self.recv.current.next()?)
        } else if record.epoch < current {
            match &self.recv.previous {
                Some(p) if p.keys.epoch == record.epoch => KeyChoice::Previous,
                _ => return Err(Error::StaleEpoch(record.epoch)),
            }
        } else {
            return Err(Error::EpochAhead {
                current,
                got: record.epoch,
            });
        };
        let keys = match &choice {
            KeyChoice::Current => &self.recv.current,
            KeyChoice::Previous => match &self.recv.previous {
                Some(p) => &p.keys,
                None => return Err(Error::StaleEpoch(record.epoch)),
            },
            KeyChoice::Next(k) => k,
        };

        let ad = record_ad(
            &self.session_id,
            self.recv_direction(),
            record.epoch,
            record.seq,
            kind,
            request_seq,
            event_index,
        );
        let nonce = record_nonce(&keys.iv, record.seq);
        let (body, tag) = record
            .ciphertext
            .split_at(record.ciphertext.len() - TAG_LEN);
        let tag = Tag::try_from(tag).map_err(|_| Error::Malformed("tag"))?;
        let mut plaintext = body.to_vec();
        keys.cipher()
            .decrypt_inout_detached(
                &Nonce::from(nonce),
                &ad,
                plaintext.as_mut_slice().into(),
                &tag,
            )
            .map_err(|_| Error::RecordAuth)?;

        if let Some(w) = window {
            w.mark(record.seq);
        }
        if let KeyChoice::Next(next) = choice {
            let old = std::mem::replace(&mut self.recv.current, next);
            self.recv.previous = Some(Box::new(Previous {
                keys: old,
                expires: now + self.policy.grace,
            }));
        }
        Ok((kind, plaintext))
    }
}

/// RFC 4303-style anti-replay bitmap over the last [`REPLAY_WINDOW`] sequence numbers,
/// as a ring indexed by `seq % 1024`: 136 bytes per session.
#[derive(Clone)]
pub(crate) struct ReplayWindow {
    /// One past the highest sequence number accepted; 0 before the first.
    top: u64,
    bits: [u64; (REPLAY_WINDOW / 64) as usize],
}

impl ReplayWindow {
    pub(crate) fn new() -> Self {
        ReplayWindow {
            top: 0,
            bits: [0; (REPLAY_WINDOW / 64) as usize],
        }
    }

    fn slot(seq: u64) -> (usize, u64) {
        let i = seq % REPLAY_WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    pub(crate) fn check(&self, seq: u64) -> Result<()> {
        if seq >= self.top {
            return Ok(());
        }
        if self.top - 1 - seq >= REPLAY_WINDOW {
            return Err(Error::TooOld(seq));
        }
        let (w, b) = Self::slot(seq);
        if self.bits[w] & b != 0 {
            return Err(Error::Replay(seq));
        }
        Ok(())
    }

    /// Only after `check` passed and the record authenticated.
    pub(crate) fn mark(&mut self, seq: u64) {
        if seq >= self.top {
            let advance = seq - self.top + 1;
            if advance >= REPLAY_WINDOW {
                self.bits = [0; (REPLAY_WINDOW / 64) as usize];
            } else {
                // Slots of the numbers now entering the window last held numbers that
                // are leaving it.
                for s in self.top..=seq {
                    let (w, b) = Self::slot(s);
                    self.bits[w] &= !b;
                }
            }
            self.top = seq + 1;
        }
        let (w, b) = Self::slot(seq);
        self.bits[w] |= b;
    }
}

/// A request the broker opened: `seq` names it in every reply.
#[derive(Debug)]
pub struct OpenedRequest {
    pub seq: u64,
    pub kind: RecordKind,
    pub plaintext: Vec<u8>,
}

/// The broker's end of a session: opens requests (with replay window), seals replies.
///
/// Lives inside a [`crate::ServerSession`], which a broker keeps behind a `Mutex` in its
/// session table: every method is short, allocation-light, and takes `&mut self`.
pub struct ServerChannel {
    core: Core,
    window: ReplayWindow,
}

/// The client's end of a session: seals requests, opens the replies to them.
pub struct ClientChannel {
    core: Core,
}

impl ServerChannel {
    pub(crate) fn new(
        session_id: SessionId,
        client_secret: Secret,
        server_secret: Secret,
        policy: RekeyPolicy,
    ) -> Self {
        ServerChannel {
            core: Core::new(
                session_id,
                Direction::BrokerToClient,
                server_secret,
                client_secret,
                policy,
                Instant::now(),
            ),
            window: ReplayWindow::new(),
        }
    }

    pub fn session_id(&self) -> SessionId {
        self.core.session_id
    }

    pub fn send_epoch(&self) -> u32 {
        self.core.send.keys.epoch
    }

    pub fn recv_epoch(&self) -> u32 {
        self.core.recv.current.epoch
    }

    #[cfg(test)]
    pub(crate) fn open_request(
        &mut self,
        record: &SealedRecord,
        expected: RecordKind,
    ) -> Result<OpenedRequest> {
        self.open_request_at(Instant::now(), record, expected)
    }

    /// Opens a request record of the kind this RPC takes (EXECUTE_REQUEST for Execute,
    /// and so on); a record of any other kind is refused before decryption. Reached
    /// through [`crate::ServerSession::open_request`], which first enforces client
    /// authentication.
    pub(crate) fn open_request_at(
        &mut self,
        now: Instant,
        record: &SealedRecord,
        expected: RecordKind,
    ) -> Result<OpenedRequest> {
        // Only replies carry an event index; a request with one is malformed, not a
        // stream out of order.
        if record.event_index != 0 {
            return Err(Error::Malformed("request record (event_index must be 0)"));
        }
        let (kind, plaintext) =
            self.core
                .open_at(now, record, &[expected], 0, 0, Some(&mut self.window))?;
        Ok(OpenedRequest {
            seq: record.seq,
            kind,
            plaintext,
        })
    }

    /// Seals a reply to request `request_seq`. `event_index` is the position in an
    /// ExecuteStream (0, 1, 2, ...) and 0 for unary replies; [`StreamSealer`] keeps
    /// count for streams.
    pub fn seal_reply(
        &mut self,
        request_seq: u64,
        kind: RecordKind,
        event_index: u32,
        plaintext: &[u8],
    ) -> Result<SealedRecord> {
        self.core
            .seal_at(Instant::now(), kind, request_seq, event_index, plaintext)
    }

    /// The answer to a Rekey request: moves this side's sending key to the next epoch
    /// first, so the reply itself already uses it.
    pub fn seal_rekey_result(&mut self, request_seq: u64) -> Result<SealedRecord> {
        let now = Instant::now();
        self.core.rotate_send_at(now)?;
        let body = prost::Message::encode_to_vec(&v1::RekeyResponse {});
        self.core
            .seal_at(now, RecordKind::RekeyResult, request_seq, 0, &body)
    }

    /// Moves the sending key to the next epoch now (the client follows on the next
    /// record it opens).
    pub fn rotate_send_key(&mut self) -> Result<()> {
        self.core.rotate_send_at(Instant::now())
    }

    /// Forgets the previous receive epoch once its grace period is over. Opening a
    /// record does this too; a sweep over idle sessions calls it to free the memory.
    pub fn drop_expired_keys(&mut self) {
        self.core.drop_expired_at(Instant::now())
    }
}

impl ClientChannel {
    pub(crate) fn new(
        session_id: SessionId,
        client_secret: Secret,
        server_secret: Secret,
        policy: RekeyPolicy,
    ) -> Self {
        ClientChannel {
            core: Core::new(
                session_id,
                Direction::ClientToBroker,
                client_secret,
                server_secret,
                policy,
                Instant::now(),
            ),
        }
    }

    pub fn session_id(&self) -> SessionId {
        self.core.session_id
    }

    pub fn send_epoch(&self) -> u32 {
        self.core.send.keys.epoch
    }

    pub fn recv_epoch(&self) -> u32 {
        self.core.recv.current.epoch
    }

    /// Seals a request. The returned record's `seq` names the request: pass it to
    /// [`ClientChannel::open_reply`] or [`StreamOpener::new`].
    pub fn seal_request(&mut self, kind: RecordKind, plaintext: &[u8]) -> Result<SealedRecord> {
        self.core.seal_at(Instant::now(), kind, 0, 0, plaintext)
    }

    #[cfg(test)]
    pub(crate) fn seal_request_at(
        &mut self,
        now: Instant,
        kind: RecordKind,
        plaintext: &[u8],
    ) -> Result<SealedRecord> {
        self.core.seal_at(now, kind, 0, 0, plaintext)
    }

    /// Opens the unary reply (`event_index` 0) of kind `expected` to request
    /// `request_seq`. A reply to any other request fails to authenticate.
    pub fn open_reply(
        &mut self,
        request_seq: u64,
        expected: RecordKind,
        record: &SealedRecord,
    ) -> Result<Vec<u8>> {
        self.open_reply_at(Instant::now(), request_seq, &[expected], 0, record)
            .map(|(_, p)| p)
    }

    pub(crate) fn open_reply_at(
        &mut self,
        now: Instant,
        request_seq: u64,
        expected: &[RecordKind],
        event_index: u32,
        record: &SealedRecord,
    ) -> Result<(RecordKind, Vec<u8>)> {
        self.core
            .open_at(now, record, expected, request_seq, event_index, None)
    }

    /// Moves the client's sending key to the next epoch and seals a Rekey request
    /// under it; the broker answers from its own next epoch.
    pub fn seal_rekey_request(&mut self) -> Result<SealedRecord> {
        let now = Instant::now();
        self.core.rotate_send_at(now)?;
        let body = prost::Message::encode_to_vec(&v1::RekeyRequest {});
        self.core
            .seal_at(now, RecordKind::RekeyRequest, 0, 0, &body)
    }

    pub fn rotate_send_key(&mut self) -> Result<()> {
        self.core.rotate_send_at(Instant::now())
    }

    pub fn drop_expired_keys(&mut self) {
        self.core.drop_expired_at(Instant::now())
    }
}

/// The broker's side of one ExecuteStream: numbers events 0, 1, 2, ... and marks the
/// last (`final` or `error`) with kind STREAM_FINAL, after which it seals nothing more.
#[derive(Debug)]
pub struct StreamSealer {
    request_seq: u64,
    next_index: u32,
    finished: bool,
}

impl StreamSealer {
    pub fn new(request_seq: u64) -> Self {
        StreamSealer {
            request_seq,
            next_index: 0,
            finished: false,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    pub fn seal(
        &mut self,
        channel: &mut ServerChannel,
        event: &v1::StreamEvent,
    ) -> Result<SealedRecord> {
        if self.finished {
            return Err(Error::StreamFinished);
        }
        let kind = stream_event_kind(event)?;
        let record = channel.seal_reply(
            self.request_seq,
            kind,
            self.next_index,
            &prost::Message::encode_to_vec(event),
        )?;
        self.next_index = self.next_index.checked_add(1).ok_or(Error::Exhausted)?;
        self.finished = kind == RecordKind::StreamFinal;
        Ok(record)
    }
}

/// The client's side of one ExecuteStream: accepts events only in order and only for
/// this request, and knows whether the final event arrived, so a stream cut short is
/// an error ([`StreamOpener::finish`]) rather than a quietly shorter result.
#[derive(Debug)]
pub struct StreamOpener {
    request_seq: u64,
    next_index: u32,
    finished: bool,
}

impl StreamOpener {
    /// `request_seq` is the `seq` of the sealed ExecuteStream request.
    pub fn new(request_seq: u64) -> Self {
        StreamOpener {
            request_seq,
            next_index: 0,
            finished: false,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    pub fn open(
        &mut self,
        channel: &mut ClientChannel,
        record: &SealedRecord,
    ) -> Result<v1::StreamEvent> {
        self.open_at(Instant::now(), channel, record)
    }

    pub(crate) fn open_at(
        &mut self,
        now: Instant,
        channel: &mut ClientChannel,
        record: &SealedRecord,
    ) -> Result<v1::StreamEvent> {
        if self.finished {
            return Err(Error::StreamFinished);
        }
        let (kind, plaintext) = channel.open_reply_at(
            now,
            self.request_seq,
            &[RecordKind::StreamEvent, RecordKind::StreamFinal],
            self.next_index,
            record,
        )?;
        let event = <v1::StreamEvent as prost::Message>::decode(plaintext.as_slice()).map_err(
            |source| Error::Decode {
                what: "StreamEvent",
                source,
            },
        )?;
        // The kind is authenticated; the content must agree with it, or a sender bug
        // could end a stream without the client noticing.
        if stream_event_kind(&event)? != kind {
            return Err(Error::StreamKindMismatch);
        }
        self.next_index = self.next_index.checked_add(1).ok_or(Error::Exhausted)?;
        self.finished = kind == RecordKind::StreamFinal;
        Ok(event)
    }

    /// Call when the gRPC stream ends: an error unless the final event was opened.
    pub fn finish(&self) -> Result<()> {
        if self.finished {
            Ok(())
        } else {
            Err(Error::StreamTruncated)
        }
    }
}

fn stream_event_kind(event: &v1::StreamEvent) -> Result<RecordKind> {
    use v1::stream_event::Event;
    match &event.event {
        Some(Event::Final(_) | Event::Error(_)) => Ok(RecordKind::StreamFinal),
        Some(Event::Console(_) | Event::ToolCall(_) | Event::ToolResult(_)) => {
            Ok(RecordKind::StreamEvent)
        }
        None => Err(Error::Malformed("StreamEvent without an event")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn window_accepts_out_of_order_and_refuses_replays() {
        let mut w = ReplayWindow::new();
        for seq in [0u64, 2, 1, 5, 3] {
            w.check(seq).unwrap();
            w.mark(seq);
        }
        for seq in [0u64, 1, 2, 3, 5] {
            assert!(matches!(w.check(seq), Err(Error::Replay(s)) if s == seq));
        }
        w.check(4).unwrap();
        // Jump ahead: the window is the 1024 numbers ending at the highest, so with
        // 1029 the oldest still inside is 1029 - 1023 = 6.
        w.check(1029).unwrap();
        w.mark(1029);
        assert!(matches!(w.check(5), Err(Error::TooOld(5))));
        w.check(6).unwrap();
        w.mark(6);
        assert!(matches!(w.check(6), Err(Error::Replay(6))));
        w.check(7).unwrap();
        // A jump of more than a window clears everything.
        w.mark(10_000);
        assert!(matches!(w.check(8_976), Err(Error::TooOld(_))));
        w.check(8_977).unwrap();
        w.check(9_999).unwrap();
        assert!(matches!(w.check(10_000), Err(Error::Replay(_))));
    }

    #[test]
    fn window_ring_reuses_slots_correctly() {
        let mut w = ReplayWindow::new();
        for seq in 0..5000u64 {
            if seq % 3 != 0 {
                w.check(seq).unwrap();
                w.mark(seq);
            }
        }
        // Inside the window: marked ones are replays, skipped ones are still welcome.
        for seq in 5000 - 1023..5000u64 {
            let r = w.check(seq);
            if seq % 3 == 0 {
                assert!(r.is_ok(), "{seq}");
            } else {
                assert!(matches!(r, Err(Error::Replay(_))), "{seq}");
            }
        }
        assert!(matches!(w.check(4999 - 1024), Err(Error::TooOld(_))));
    }

    #[test]
    fn nonce_is_iv_xor_seq() {
        let iv = [0xffu8; 12];
        let n = record_nonce(&iv, 0x0102_0304_0506_0708);
        assert_eq!(hex::encode(&n), "fffffffffefdfcfbfaf9f8f7");
    }

    #[test]
    fn ad_layout() {
        let ad = record_ad(
            &SessionId([0xaa; 16]),
            Direction::BrokerToClient,
            3,
            0x0102,
            RecordKind::StreamFinal,
            7,
            9,
        );
        assert_eq!(
            hex::encode(&ad),
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\
             02\
             00000003\
             0000000000000102\
             05\
             0000000000000007\
             00000009"
        );
    }
}
