// The record layer (§8, §9): nonces, associated data, the client's Channel (sealing
// requests, opening replies under the receiver's epoch rule) and the StreamOpener that
// enforces §10.2 (order, kinds, nothing after STREAM_FINAL, truncation).

import { CLIENT_KINDS, Direction, MAX_PLAINTEXT, RECEIVE_GRACE_MS, RECORD_KIND_NAMES, REKEY_POLICY, RecordKind, U32_MAX, U64_MAX } from './constants.js';
import { EnclaveProtocolError } from './errors.js';
import { concat, ctEqual, u8, u32, u64 } from './encoding.js';
import { aesGcmOpen, aesGcmSeal, aesKey, deriveEpochKeys, nextTrafficSecret } from './crypto.js';
import { decodeStreamEvent } from './messages.js';

/** nonce = iv XOR (0x00000000 || u64 seq) */
export function recordNonce(iv, seq) {
  const nonce = Uint8Array.from(iv);
  const s = u64(seq);
  for (let i = 0; i < 8; i++) nonce[4 + i] ^= s[i];
  return nonce;
}

/** The 42-byte associated data of §8.3. */
export function associatedData(sessionId, direction, epoch, seq, kind, requestSeq, eventIndex) {
  return concat(sessionId, u8(direction), u32(epoch), u64(seq), u8(kind), u64(requestSeq), u32(eventIndex));
}

/** One direction's keys for one epoch: the AES key stays inside WebCrypto. */
async function makeEpoch(epoch, secret) {
  const { key, iv } = await deriveEpochKeys(secret);
  const cryptoKey = await aesKey(key);
  key.fill(0);
  return { epoch, secret, key: cryptoKey, iv, records: 0, bytes: 0, started: Date.now() };
}

/**
 * The record layer of one session (client side): sealing requests with the sender's
 * rotation policy, and opening replies with the receiver's epoch rule (§9.2). Calls are
 * serialised, so concurrent requests never share a sequence number.
 */
export class Channel {
  static async create(sessionId, clientTrafficSecret, serverTrafficSecret, { policy = REKEY_POLICY, graceMs = RECEIVE_GRACE_MS } = {}) {
    const channel = new Channel();
    channel.sessionId = sessionId;
    channel.send = await makeEpoch(0, clientTrafficSecret);
    channel.recv = await makeEpoch(0, serverTrafficSecret);
    channel.previous = null;
    channel.nextSeq = 0n;
    channel.policy = policy;
    channel.graceMs = graceMs;
    channel.queue = Promise.resolve();
    return channel;
  }

  #serial(fn) {
    const run = this.queue.then(fn);
    this.queue = run.catch(() => {});
    return run;
  }

  /** Moves the sending direction to the next epoch (KeyUpdate); the old secret is erased. */
  rotateSend() {
    return this.#serial(() => this.#rotateSend());
  }

  async #rotateSend() {
    if (this.send.epoch >= U32_MAX) throw new EnclaveProtocolError('exhausted', 'key epochs exhausted: start a new session');
    const next = await nextTrafficSecret(this.send.secret);
    const old = this.send;
    this.send = await makeEpoch(old.epoch + 1, next);
    old.secret.fill(0);
  }

  /** Seals a client -> broker record of `kind` (request_seq and event_index 0). */
  sealRequest(kind, plaintext) {
    return this.#serial(async () => {
      if (!CLIENT_KINDS.has(kind)) throw new EnclaveProtocolError('record', `kind ${kind} is not a request`);
      if (plaintext.length > MAX_PLAINTEXT) throw new EnclaveProtocolError('record', 'plaintext over 16 MiB');
      const s = this.send;
      if (s.records >= this.policy.maxRecords || s.bytes + plaintext.length > this.policy.maxBytes || Date.now() - s.started >= this.policy.maxAgeMs) {
        await this.#rotateSend();
      }
      return this.#seal(kind, plaintext);
    });
  }

  /** Rekey RPC, client half: rotate the sending key, then seal REKEY_REQUEST under it (§9.1). */
  sealRekeyRequest() {
    return this.#serial(async () => {
      await this.#rotateSend();
      return this.#seal(RecordKind.REKEY_REQUEST, new Uint8Array(0));
    });
  }

  async #seal(kind, plaintext) {
    if (this.nextSeq >= U64_MAX) throw new EnclaveProtocolError('exhausted', 'sequence numbers exhausted: start a new session');
    const seq = this.nextSeq;
    this.nextSeq = seq + 1n;
    const s = this.send;
    const ad = associatedData(this.sessionId, Direction.CLIENT_TO_BROKER, s.epoch, seq, kind, 0n, 0);
    const ciphertext = await aesGcmSeal(s.key, recordNonce(s.iv, seq), plaintext, ad);
    s.records += 1;
    s.bytes += plaintext.length;
    return { sessionId: this.sessionId, epoch: s.epoch, seq, kind, eventIndex: 0, ciphertext };
  }

  /** Opens a unary reply to the request sealed with `requestSeq` (§8.7). */
  openReply(requestSeq, kind, record) {
    if (record.kind !== kind) return Promise.reject(new EnclaveProtocolError('record', `expected ${RECORD_KIND_NAMES[kind]}, got kind ${record.kind}`));
    if (record.eventIndex !== 0) return Promise.reject(new EnclaveProtocolError('record', 'a unary reply has event_index 0'));
    return this.open(record, kind, requestSeq, 0);
  }

  /**
   * Opens a broker -> client record whose AD is built from the header (session, epoch,
   * seq) and the caller's expectations (kind, request, position).
   */
  open(record, kind, requestSeq, eventIndex) {
    return this.#serial(async () => {
      if (!ctEqual(record.sessionId, this.sessionId)) throw new EnclaveProtocolError('record', 'record from another session');
      if (record.ciphertext.length < 16) throw new EnclaveProtocolError('record', 'record too short');
      if (record.seq >= U64_MAX) throw new EnclaveProtocolError('record', 'invalid sequence number');
      const ad = associatedData(this.sessionId, Direction.BROKER_TO_CLIENT, record.epoch, record.seq, kind, BigInt(requestSeq), eventIndex);
      const current = this.recv;
      const now = Date.now();
      if (this.previous && this.previous.expires <= now) this.previous = null;
      if (record.epoch === current.epoch) {
        return aesGcmOpen(current.key, recordNonce(current.iv, record.seq), record.ciphertext, ad);
      }
      if (record.epoch === current.epoch + 1) {
        const next = await makeEpoch(current.epoch + 1, await nextTrafficSecret(current.secret));
        let plaintext;
        try {
          plaintext = await aesGcmOpen(next.key, recordNonce(next.iv, record.seq), record.ciphertext, ad);
        } catch (e) {
          next.secret.fill(0);
          throw e;
        }
        // Authenticated: the next epoch becomes current, the old one previous for the grace period.
        this.recv = next;
        current.secret.fill(0);
        this.previous = { epoch: current.epoch, key: current.key, iv: current.iv, expires: now + this.graceMs };
        return plaintext;
      }
      if (this.previous && record.epoch === this.previous.epoch) {
        return aesGcmOpen(this.previous.key, recordNonce(this.previous.iv, record.seq), record.ciphertext, ad);
      }
      throw new EnclaveProtocolError('record', `record under unexpected epoch ${record.epoch} (current ${current.epoch})`);
    });
  }
}

/**
 * Opens the records of one ExecuteStream reply (§10.2): indices 0, 1, 2, ... bound to the
 * request's seq, STREAM_EVENT until the single STREAM_FINAL, nothing after it; `finish()`
 * reports a truncated stream.
 */
export class StreamOpener {
  constructor(requestSeq) {
    this.requestSeq = BigInt(requestSeq);
    this.next = 0;
    this.finished = false;
    this.failed = null;
  }

  async open(channel, record) {
    if (this.failed) throw this.failed;
    try {
      if (this.finished) throw new EnclaveProtocolError('stream', 'record after STREAM_FINAL');
      if (record.kind !== RecordKind.STREAM_EVENT && record.kind !== RecordKind.STREAM_FINAL) {
        throw new EnclaveProtocolError('stream', `unexpected record kind ${record.kind} in a stream`);
      }
      if (record.eventIndex !== this.next) {
        throw new EnclaveProtocolError('stream', `stream out of order: expected event ${this.next}, got ${record.eventIndex}`);
      }
      const plaintext = await channel.open(record, record.kind, this.requestSeq, this.next);
      const event = decodeStreamEvent(plaintext);
      const isFinal = event.type === 'final' || event.type === 'error';
      if (isFinal !== (record.kind === RecordKind.STREAM_FINAL)) {
        throw new EnclaveProtocolError('stream', 'stream event content disagrees with its record kind');
      }
      this.next += 1;
      this.finished = isFinal;
      return event;
    } catch (e) {
      this.failed = e;
      throw e;
    }
  }

  /** Throws unless STREAM_FINAL was opened: the stream ended early (truncated). */
  finish(detail = '') {
    if (this.failed) throw this.failed;
    if (!this.finished) {
      throw new EnclaveProtocolError('truncated', `stream truncated: it ended without STREAM_FINAL${detail ? ` (${detail})` : ''}`);
    }
  }
}
