// enclave playground: protocol v1 (docs/PROTOCOL.md) over HTTP (docs/HTTP.md), in the
// browser, with WebCrypto only.
//
// The first part of this module is the protocol itself, as pure exported functions and
// small classes (no DOM), so that broker/tests/playground/vectors.mjs can check every step
// against proto/testdata/*.json in Node. The page wiring at the end runs only when there is
// a `document`.
//
// Outer messages (HandshakeRequest/Response, SealedRecord) travel as proto3 JSON; inner,
// sealed plaintexts are protobuf binary (a tiny encoder for ExecuteRequest and a decoder
// for StreamEvent / ExecuteResult are below).

// ---------------------------------------------------------------------------------------
// Constants

export const PROTOCOL_VERSION = 1;

export const Suite = Object.freeze({ X25519: 1, P256: 2 });
export const SUITE_NAMES = Object.freeze({
  1: 'SUITE_X25519_ED25519_AES256GCM_SHA256',
  2: 'SUITE_P256_ED25519_AES256GCM_SHA256',
});
const SUITE_LABELS = Object.freeze({ 1: 'X25519', 2: 'P-256' });

export const RecordKind = Object.freeze({
  EXECUTE_REQUEST: 1,
  EXECUTE_RESULT: 2,
  STREAM_REQUEST: 3,
  STREAM_EVENT: 4,
  STREAM_FINAL: 5,
  CLOSE_REQUEST: 6,
  CLOSE_RESULT: 7,
  REKEY_REQUEST: 8,
  REKEY_RESULT: 9,
});
export const RECORD_KIND_NAMES = Object.freeze(
  Object.fromEntries(Object.entries(RecordKind).map(([name, value]) => [value, `RECORD_KIND_${name}`])),
);
const CLIENT_KINDS = new Set([
  RecordKind.EXECUTE_REQUEST,
  RecordKind.STREAM_REQUEST,
  RecordKind.CLOSE_REQUEST,
  RecordKind.REKEY_REQUEST,
]);

export const Direction = Object.freeze({ CLIENT_TO_BROKER: 1, BROKER_TO_CLIENT: 2 });

export const SecurityLevel = Object.freeze({ UNSPECIFIED: 0, STRICT: 1, SECURE: 2, STANDARD: 3, PERMISSIVE: 4 });

export const CONSOLE_LEVELS = Object.freeze(['unspecified', 'log', 'info', 'warn', 'error', 'debug']);
export const ERROR_CODES = Object.freeze([
  'UNSPECIFIED',
  'SCRIPT_ERROR',
  'SYNTAX_ERROR',
  'TIMEOUT',
  'MEMORY_LIMIT',
  'STACK_OVERFLOW',
  'TOOL_CALL_LIMIT',
  'OUTPUT_LIMIT',
  'RESULT_TOO_LARGE',
  'CANCELLED',
  'INTERNAL',
  'EXECUTOR_LOST',
  'INVALID_JOB',
  'UNAVAILABLE',
  'OUTPUT_STALLED',
]);

/** Plaintexts are at most 16 MiB (§8.1). */
export const MAX_PLAINTEXT = 1 << 24;
const U64_MAX = (1n << 64n) - 1n;
const U32_MAX = 0xffffffff;

/** Sender rotation policy (§9.1) and receiver grace period (§9.2): the protocol's defaults. */
export const REKEY_POLICY = Object.freeze({ maxRecords: 2 ** 24, maxBytes: 2 ** 36, maxAgeMs: 10 * 60 * 1000 });
export const RECEIVE_GRACE_MS = 60 * 1000;

/** A failure the client detected itself (pin mismatch, downgrade, bad MAC, truncated stream, ...). */
export class ProtocolError extends Error {
  constructor(kind, message) {
    super(message);
    this.name = 'ProtocolError';
    this.kind = kind;
  }
}

/** The broker answered with an HTTP error (docs/HTTP.md): `code` is the gRPC code name. */
export class HttpError extends Error {
  constructor(status, code, message, { started = false } = {}) {
    super(message);
    this.name = 'HttpError';
    this.status = status;
    this.code = code;
    this.started = started;
  }
}

const subtle = () => {
  const s = globalThis.crypto && globalThis.crypto.subtle;
  if (!s) throw new ProtocolError('config', 'WebCrypto is not available (the page must be served from a secure context: https or localhost)');
  return s;
};

// ---------------------------------------------------------------------------------------
// Bytes

export function concat(...parts) {
  let length = 0;
  for (const p of parts) length += p.length;
  const out = new Uint8Array(length);
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}

export function toHex(bytes) {
  let s = '';
  for (const b of bytes) s += b.toString(16).padStart(2, '0');
  return s;
}

export function fromHex(text) {
  if (text.length % 2 !== 0 || /[^0-9a-fA-F]/.test(text)) throw new TypeError('not a hex string');
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.substr(i * 2, 2), 16);
  return out;
}

export function toBase64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

/** Standard base64 with or without padding; the URL-safe alphabet too (proto3 JSON parsers accept both). */
export function fromBase64(text) {
  if (typeof text !== 'string') throw new TypeError('base64 field is not a string');
  let s = text.replace(/-/g, '+').replace(/_/g, '/');
  if (s.length % 4 === 1 || /[^A-Za-z0-9+/=]/.test(s) || /=[^=]/.test(s)) throw new TypeError('invalid base64');
  s = s.replace(/=+$/, '');
  while (s.length % 4 !== 0) s += '=';
  const raw = atob(s);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

const encoder = new TextEncoder();
export const utf8 = (s) => encoder.encode(s);

export const u8 = (n) => Uint8Array.of(n & 0xff);
export function u16(n) {
  const b = new Uint8Array(2);
  new DataView(b.buffer).setUint16(0, n);
  return b;
}
export function u32(n) {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n);
  return b;
}
export function u64(n) {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(n));
  return b;
}

/** Compares without an early exit (as constant-time as JavaScript allows). */
export function ctEqual(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

function isAllZero(bytes) {
  let acc = 0;
  for (const b of bytes) acc |= b;
  return acc === 0;
}

// ---------------------------------------------------------------------------------------
// Hashes, HMAC, HKDF (RFC 5869) and HKDF-Expand-Label (§7)

export async function sha256(...parts) {
  return new Uint8Array(await subtle().digest('SHA-256', concat(...parts)));
}

async function hmacKey(key, usage) {
  return subtle().importKey('raw', key, { name: 'HMAC', hash: 'SHA-256' }, false, [usage]);
}

export async function hmacSha256(key, data) {
  return new Uint8Array(await subtle().sign('HMAC', await hmacKey(key, 'sign'), data));
}

/** WebCrypto's HMAC verify compares in constant time. */
export async function hmacSha256Verify(key, data, mac) {
  return subtle().verify('HMAC', await hmacKey(key, 'verify'), mac, data);
}

export const hkdfExtract = (salt, ikm) => hmacSha256(salt, ikm);

export async function hkdfExpand(prk, info, length) {
  if (length > 255 * 32) throw new RangeError('HKDF-Expand: length too large');
  const out = new Uint8Array(length);
  let t = new Uint8Array(0);
  for (let i = 1, offset = 0; offset < length; i++) {
    t = await hmacSha256(prk, concat(t, info, u8(i)));
    const n = Math.min(t.length, length - offset);
    out.set(t.subarray(0, n), offset);
    offset += n;
  }
  t.fill(0);
  return out;
}

export const LABEL_PREFIX = 'enclave1 ';

/** HkdfLabel = u16 Length || u8 len(prefix||Label) || prefix||Label || u8 len(Context) || Context */
export function hkdfLabel(label, context, length) {
  const full = utf8(LABEL_PREFIX + label);
  return concat(u16(length), u8(full.length), full, u8(context.length), context);
}

export function hkdfExpandLabel(secret, label, context, length) {
  return hkdfExpand(secret, hkdfLabel(label, context, length), length);
}

/** key_n, iv_n and traffic_secret_(n+1) of one direction's epoch n. */
export async function deriveEpochKeys(trafficSecret) {
  const empty = new Uint8Array(0);
  return {
    key: await hkdfExpandLabel(trafficSecret, 'key', empty, 32),
    iv: await hkdfExpandLabel(trafficSecret, 'iv', empty, 12),
  };
}

export function nextTrafficSecret(trafficSecret) {
  return hkdfExpandLabel(trafficSecret, 'traffic upd', new Uint8Array(0), 32);
}

// ---------------------------------------------------------------------------------------
// Fingerprints and pins (§3)

export async function fingerprintOf(identity) {
  return `sha256:${toHex(await sha256(identity))}`;
}

/** `sha256:<64 hex>` (upper-case hex accepted, surrounding whitespace ignored) -> 32 bytes. */
export function parsePin(text) {
  const s = String(text ?? '').trim();
  if (s === '' || s.includes('{{')) throw new ProtocolError('pin', 'no pin: enter the broker\'s fingerprint (sha256:<64 hex digits>)');
  if (!s.startsWith('sha256:')) throw new ProtocolError('pin', 'invalid pin: a fingerprint starts with "sha256:"');
  const hex = s.slice('sha256:'.length);
  if (!/^[0-9a-fA-F]{64}$/.test(hex)) throw new ProtocolError('pin', 'invalid pin: "sha256:" must be followed by 64 hex digits');
  return fromHex(hex);
}

// ---------------------------------------------------------------------------------------
// Transcript encodings (§6)

export function encodeClientHello({ version, suite, clientShare }) {
  return concat(u8(0x01), u16(version), u16(suite), u16(clientShare.length), clientShare);
}

export function encodeServerHello(sh) {
  return concat(
    u8(0x02),
    u16(sh.version),
    u16(sh.suite),
    sh.sessionId,
    u16(sh.serverShare.length),
    sh.serverShare,
    sh.serverIdentity,
    u8(sh.clientAuthRequired ? 1 : 0),
  );
}

export const encodeServerSignature = (signature) => concat(u8(0x03), signature);
export const encodeServerFinished = (finished) => concat(u8(0x04), finished);
export const encodeClientIdentity = (identity) => concat(u8(0x05), identity);
export const encodeClientSignature = (signature) => concat(u8(0x06), signature);

/** "enclave v1 <role> signature" || 0x00 || hash (60 bytes). */
export function signingInput(role, hash) {
  return concat(utf8(`enclave v1 ${role} signature`), u8(0), hash);
}

// ---------------------------------------------------------------------------------------
// Ephemeral ECDH (§4)

const PKCS8_PREFIX = {
  [Suite.X25519]: fromHex('302e020100300506032b656e04220420'),
  [Suite.P256]: fromHex('3041020100301306072a8648ce3d020106082a8648ce3d030107042730250201010420'),
};
const PKCS8_ED25519_PREFIX = fromHex('302e020100300506032b657004220420');

function ecdhAlgorithm(suite) {
  if (suite === Suite.X25519) return { name: 'X25519' };
  if (suite === Suite.P256) return { name: 'ECDH', namedCurve: 'P-256' };
  throw new ProtocolError('config', `unknown suite ${suite}`);
}

/** A fresh ephemeral key pair; the private key is not extractable. */
export async function generateEphemeral(suite) {
  const pair = await subtle().generateKey(ecdhAlgorithm(suite), false, ['deriveBits']);
  const share = new Uint8Array(await subtle().exportKey('raw', pair.publicKey));
  return { suite, privateKey: pair.privateKey, share };
}

/** An ephemeral key from fixed secret bytes (X25519 secret / P-256 big-endian scalar): test vectors only. */
export async function importEphemeral(suite, secret) {
  const privateKey = await subtle().importKey('pkcs8', concat(PKCS8_PREFIX[suite], secret), ecdhAlgorithm(suite), true, ['deriveBits']);
  const jwk = await subtle().exportKey('jwk', privateKey);
  const share = suite === Suite.X25519 ? fromBase64(jwk.x) : concat(u8(0x04), fromBase64(jwk.x), fromBase64(jwk.y));
  return { suite, privateKey, share };
}

/** Does the suite work in this browser? (X25519 in WebCrypto is recent.) */
export async function suiteSupported(suite) {
  try {
    await generateEphemeral(suite);
    return true;
  } catch {
    return false;
  }
}

/**
 * The 32-byte shared secret with the peer's share, validated as §4 requires: exact
 * length, uncompressed on-curve P-256 points, and never an all-zero X25519 output.
 */
export async function deriveShared(ephemeral, peerShare) {
  const { suite } = ephemeral;
  if (suite === Suite.X25519 && peerShare.length !== 32) {
    throw new ProtocolError('handshake', `invalid key share: X25519 shares are 32 bytes, got ${peerShare.length}`);
  }
  if (suite === Suite.P256 && (peerShare.length !== 65 || peerShare[0] !== 0x04)) {
    throw new ProtocolError('handshake', 'invalid key share: P-256 shares are 65-byte uncompressed points');
  }
  const algorithm = ecdhAlgorithm(suite);
  let shared;
  try {
    const peer = await subtle().importKey('raw', peerShare, algorithm, false, []);
    shared = new Uint8Array(await subtle().deriveBits({ name: algorithm.name, public: peer }, ephemeral.privateKey, 256));
  } catch (e) {
    throw new ProtocolError('handshake', `invalid key share (${e && e.message ? e.message : e})`);
  }
  if (isAllZero(shared)) throw new ProtocolError('handshake', 'invalid key share: all-zero shared secret');
  return shared;
}

// ---------------------------------------------------------------------------------------
// Records (§8)

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

async function aesKey(key) {
  return key instanceof Uint8Array ? subtle().importKey('raw', key, 'AES-GCM', false, ['encrypt', 'decrypt']) : key;
}

export async function aesGcmSeal(key, nonce, plaintext, ad) {
  const k = await aesKey(key);
  return new Uint8Array(await subtle().encrypt({ name: 'AES-GCM', iv: nonce, additionalData: ad, tagLength: 128 }, k, plaintext));
}

export async function aesGcmOpen(key, nonce, ciphertext, ad) {
  const k = await aesKey(key);
  try {
    return new Uint8Array(await subtle().decrypt({ name: 'AES-GCM', iv: nonce, additionalData: ad, tagLength: 128 }, k, ciphertext));
  } catch {
    throw new ProtocolError('record', 'record authentication failed');
  }
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
    if (this.send.epoch >= U32_MAX) throw new ProtocolError('exhausted', 'key epochs exhausted: start a new session');
    const next = await nextTrafficSecret(this.send.secret);
    const old = this.send;
    this.send = await makeEpoch(old.epoch + 1, next);
    old.secret.fill(0);
  }

  /** Seals a client -> broker record of `kind` (request_seq and event_index 0). */
  sealRequest(kind, plaintext) {
    return this.#serial(async () => {
      if (!CLIENT_KINDS.has(kind)) throw new ProtocolError('record', `kind ${kind} is not a request`);
      if (plaintext.length > MAX_PLAINTEXT) throw new ProtocolError('record', 'plaintext over 16 MiB');
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
    if (this.nextSeq >= U64_MAX) throw new ProtocolError('exhausted', 'sequence numbers exhausted: start a new session');
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
    if (record.kind !== kind) return Promise.reject(new ProtocolError('record', `expected ${RECORD_KIND_NAMES[kind]}, got kind ${record.kind}`));
    if (record.eventIndex !== 0) return Promise.reject(new ProtocolError('record', 'a unary reply has event_index 0'));
    return this.open(record, kind, requestSeq, 0);
  }

  /**
   * Opens a broker -> client record whose AD is built from the header (session, epoch,
   * seq) and the caller's expectations (kind, request, position).
   */
  open(record, kind, requestSeq, eventIndex) {
    return this.#serial(async () => {
      if (!ctEqual(record.sessionId, this.sessionId)) throw new ProtocolError('record', 'record from another session');
      if (record.ciphertext.length < 16) throw new ProtocolError('record', 'record too short');
      if (record.seq >= U64_MAX) throw new ProtocolError('record', 'invalid sequence number');
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
      throw new ProtocolError('record', `record under unexpected epoch ${record.epoch} (current ${current.epoch})`);
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
      if (this.finished) throw new ProtocolError('stream', 'record after STREAM_FINAL');
      if (record.kind !== RecordKind.STREAM_EVENT && record.kind !== RecordKind.STREAM_FINAL) {
        throw new ProtocolError('stream', `unexpected record kind ${record.kind} in a stream`);
      }
      if (record.eventIndex !== this.next) {
        throw new ProtocolError('stream', `stream out of order: expected event ${this.next}, got ${record.eventIndex}`);
      }
      const plaintext = await channel.open(record, record.kind, this.requestSeq, this.next);
      const event = decodeStreamEvent(plaintext);
      const isFinal = event.type === 'final' || event.type === 'error';
      if (isFinal !== (record.kind === RecordKind.STREAM_FINAL)) {
        throw new ProtocolError('stream', 'stream event content disagrees with its record kind');
      }
      this.next += 1;
      this.finished = isFinal;
      return event;
    } catch (e) {
      this.failed = e;
      throw e;
    }
  }

  finish() {
    if (this.failed) throw this.failed;
    if (!this.finished) throw new ProtocolError('stream', 'stream truncated: it ended without STREAM_FINAL');
  }
}

// ---------------------------------------------------------------------------------------
// Handshake (§5)

/** ClientHello with a fresh ephemeral key (or a given one, for test vectors). */
export async function startHandshake({ pin, suite = Suite.X25519, ephemeral = null, trace = false }) {
  const pinBytes = typeof pin === 'string' ? parsePin(pin) : Uint8Array.from(pin);
  if (pinBytes.length !== 32) throw new ProtocolError('pin', 'a pin is 32 bytes');
  const eph = ephemeral ?? (await generateEphemeral(suite));
  if (eph.suite !== suite) throw new ProtocolError('config', 'ephemeral key of another suite');
  const hello = { version: PROTOCOL_VERSION, suite, clientShare: eph.share };
  return { state: { pin: pinBytes, suite, ephemeral: eph, hello, trace }, hello };
}

/**
 * The client checks of §5.3, in order, then the key schedule (§7). Returns the session;
 * any failure throws a ProtocolError (kind 'downgrade', 'handshake' or 'pin').
 */
export async function finishHandshake(state, sh) {
  if (!state.ephemeral) throw new ProtocolError('config', 'handshake already finished');
  // 1. Version and suite are the ones offered.
  if (sh.version !== PROTOCOL_VERSION) throw new ProtocolError('downgrade', `broker answered protocol version ${sh.version}, not ${PROTOCOL_VERSION}`);
  if (sh.suite !== state.suite) throw new ProtocolError('downgrade', `broker answered suite ${SUITE_NAMES[sh.suite] ?? sh.suite}, not the offered ${SUITE_NAMES[state.suite]}`);
  // 2. Lengths.
  if (sh.sessionId.length !== 16) throw new ProtocolError('handshake', 'session id is not 16 bytes');
  if (sh.serverIdentity.length !== 32) throw new ProtocolError('handshake', 'broker identity is not 32 bytes');
  if (sh.signature.length !== 64 || sh.finished.length !== 32) throw new ProtocolError('handshake', 'malformed ServerHello');
  // 3. The pin.
  const fingerprint = await sha256(sh.serverIdentity);
  if (!ctEqual(fingerprint, state.pin)) {
    throw new ProtocolError('pin', `pin mismatch: the broker's key is sha256:${toHex(fingerprint)}, the pin is sha256:${toHex(state.pin)}; refusing to connect`);
  }
  // 4. The shared secret (validating the broker's share); the ephemeral key is dropped.
  const ephemeral = state.ephemeral;
  state.ephemeral = null;
  const shared = await deriveShared(ephemeral, sh.serverShare);
  // 5. The broker's signature over our own ClientHello and the received ServerHello.
  const ch = encodeClientHello(state.hello);
  const shEnc = encodeServerHello(sh);
  const hSh = await sha256(ch, shEnc);
  const serverSigningInput = signingInput('server', hSh);
  let signatureOk = false;
  try {
    const identity = await subtle().importKey('raw', sh.serverIdentity, { name: 'Ed25519' }, false, ['verify']);
    signatureOk = await subtle().verify({ name: 'Ed25519' }, identity, sh.signature, serverSigningInput);
  } catch {
    signatureOk = false;
  }
  if (!signatureOk) {
    shared.fill(0);
    throw new ProtocolError('handshake', 'bad broker signature over the handshake transcript');
  }
  // 6. Finished.
  const handshakeSecret = await hkdfExtract(new Uint8Array(32), shared);
  const serverFinishedKey = await hkdfExpandLabel(handshakeSecret, 's finished', hSh, 32);
  const sv = encodeServerSignature(sh.signature);
  const hSv = await sha256(ch, shEnc, sv);
  if (!(await hmacSha256Verify(serverFinishedKey, hSv, sh.finished))) {
    shared.fill(0);
    handshakeSecret.fill(0);
    throw new ProtocolError('handshake', 'bad broker Finished');
  }
  // 7. Traffic secrets.
  const sf = encodeServerFinished(sh.finished);
  const hSf = await sha256(ch, shEnc, sv, sf);
  const clientFinishedKey = await hkdfExpandLabel(handshakeSecret, 'c finished', hSh, 32);
  const clientTrafficSecret = await hkdfExpandLabel(handshakeSecret, 'c ap traffic', hSf, 32);
  const serverTrafficSecret = await hkdfExpandLabel(handshakeSecret, 's ap traffic', hSf, 32);
  const trace = state.trace
    ? {
        sharedSecret: Uint8Array.from(shared),
        clientHelloEncoding: ch,
        serverHelloEncoding: shEnc,
        hSh,
        handshakeSecret: Uint8Array.from(handshakeSecret),
        serverFinishedKey: Uint8Array.from(serverFinishedKey),
        clientFinishedKey: Uint8Array.from(clientFinishedKey),
        serverSigningInput,
        hSv,
        hSf,
        clientTrafficSecret0: Uint8Array.from(clientTrafficSecret),
        serverTrafficSecret0: Uint8Array.from(serverTrafficSecret),
      }
    : null;
  shared.fill(0);
  handshakeSecret.fill(0);
  serverFinishedKey.fill(0);
  const channel = await Channel.create(sh.sessionId, clientTrafficSecret, serverTrafficSecret);
  return new ClientSession({
    suite: state.suite,
    sessionId: sh.sessionId,
    serverIdentity: sh.serverIdentity,
    fingerprint: `sha256:${toHex(fingerprint)}`,
    clientAuthRequired: sh.clientAuthRequired,
    transcript: concat(ch, shEnc, sv, sf),
    clientFinishedKey,
    channel,
    trace,
  });
}

export class ClientSession {
  constructor(fields) {
    Object.assign(this, fields);
    this.baseUrl = '';
  }

  /**
   * ClientAuth (§5.4, §6.4) with an Ed25519 identity ({privateKey: CryptoKey, publicKey: 32 bytes}).
   * Only before the first request.
   */
  async authenticate(identity) {
    if (this.channel.nextSeq !== 0n || !this.clientFinishedKey) throw new ProtocolError('config', 'client authentication must come before the first request');
    const ca = encodeClientIdentity(identity.publicKey);
    const hCa = await sha256(this.transcript, ca);
    const input = signingInput('client', hCa);
    const signature = new Uint8Array(await subtle().sign({ name: 'Ed25519' }, identity.privateKey, input));
    const hCv = await sha256(this.transcript, ca, encodeClientSignature(signature));
    const finished = await hmacSha256(this.clientFinishedKey, hCv);
    this.clientFinishedKey.fill(0);
    this.clientFinishedKey = null;
    if (this.trace) Object.assign(this.trace, { hCa, clientSigningInput: input, clientSignature: signature, hCv, clientFinished: finished });
    return { sessionId: this.sessionId, clientIdentity: identity.publicKey, signature, finished };
  }
}

/** An Ed25519 identity from its 32-byte RFC 8032 seed (test vectors, tools). */
export async function importEd25519Seed(seed) {
  const privateKey = await subtle().importKey('pkcs8', concat(PKCS8_ED25519_PREFIX, seed), { name: 'Ed25519' }, true, ['sign']);
  const jwk = await subtle().exportKey('jwk', privateKey);
  return { privateKey, publicKey: fromBase64(jwk.x) };
}

// ---------------------------------------------------------------------------------------
// Protobuf (binary) for the inner messages

class PbWriter {
  constructor() {
    this.chunks = [];
  }
  varint(value) {
    let v = BigInt(value);
    if (v < 0n) v = BigInt.asUintN(64, v);
    const out = [];
    while (v > 0x7fn) {
      out.push(Number(v & 0x7fn) | 0x80);
      v >>= 7n;
    }
    out.push(Number(v));
    this.chunks.push(Uint8Array.from(out));
    return this;
  }
  tag(field, wireType) {
    return this.varint((field << 3) | wireType);
  }
  uint(field, value) {
    if (BigInt(value) !== 0n) this.tag(field, 0).varint(value);
    return this;
  }
  bytes(field, value, always = false) {
    if (value.length > 0 || always) {
      this.tag(field, 2).varint(value.length);
      this.chunks.push(value);
    }
    return this;
  }
  string(field, value) {
    return this.bytes(field, utf8(value ?? ''));
  }
  finish() {
    return concat(...this.chunks);
  }
}

/** ExecuteRequest { Job job = 1 { code = 1, level = 2, limits = 3 { timeout_ms = 1 }, input_json = 4 } } */
export function encodeExecuteRequest({ code = '', level = 0, timeoutMs = null, inputJson = '' } = {}) {
  const job = new PbWriter().string(1, code).uint(2, level);
  if (timeoutMs !== null && timeoutMs !== undefined) {
    // `optional` field: present even when 0.
    const limits = new PbWriter().tag(1, 0).varint(timeoutMs).finish();
    job.bytes(3, limits, true);
  }
  job.string(4, inputJson);
  return new PbWriter().bytes(1, job.finish(), true).finish();
}

const utf8Strict = new TextDecoder('utf-8', { fatal: true });

class PbReader {
  constructor(bytes) {
    this.b = bytes;
    this.p = 0;
  }
  eof() {
    return this.p >= this.b.length;
  }
  need(n) {
    if (this.p + n > this.b.length) throw new ProtocolError('decode', 'truncated protobuf message');
  }
  varint() {
    let result = 0n;
    for (let i = 0; i < 10; i++) {
      this.need(1);
      const byte = this.b[this.p++];
      if (i === 9 && byte > 1) throw new ProtocolError('decode', 'varint overflows 64 bits');
      result |= BigInt(byte & 0x7f) << BigInt(7 * i);
      if (byte < 0x80) return result;
    }
    throw new ProtocolError('decode', 'varint too long');
  }
  tag() {
    const key = this.varint();
    if (key > 0xffffffffn) throw new ProtocolError('decode', 'invalid field key');
    const field = Number(key >> 3n);
    const wireType = Number(key & 7n);
    if (field === 0) throw new ProtocolError('decode', 'field number 0');
    return [field, wireType];
  }
  lengthDelimited() {
    const n = this.varint();
    if (n > BigInt(this.b.length - this.p)) throw new ProtocolError('decode', 'truncated protobuf message');
    const out = this.b.subarray(this.p, this.p + Number(n));
    this.p += Number(n);
    return out;
  }
  /** Skips one field's value of any wire type, groups included (nested to a sane depth). */
  skip(wireType, field, depth = 0) {
    switch (wireType) {
      case 0:
        this.varint();
        return;
      case 1:
        this.need(8);
        this.p += 8;
        return;
      case 2:
        this.lengthDelimited();
        return;
      case 5:
        this.need(4);
        this.p += 4;
        return;
      case 3: {
        if (depth > 64) throw new ProtocolError('decode', 'groups nested too deeply');
        for (;;) {
          if (this.eof()) throw new ProtocolError('decode', 'unterminated group');
          const [f, wt] = this.tag();
          if (wt === 4) {
            if (f !== field) throw new ProtocolError('decode', 'mismatched end of group');
            return;
          }
          this.skip(wt, f, depth + 1);
        }
      }
      default:
        throw new ProtocolError('decode', `invalid wire type ${wireType}`);
    }
  }
}

// Schemas: field number -> [name, type, sub-schema or null, oneof name or null, repeated].
const JOB_ERROR = { 1: ['code', 'enum'], 2: ['message', 'string'], 3: ['name', 'string'], 4: ['line', 'uint32'], 5: ['stack', 'string'] };
const JOB_STATS = { 1: ['durationUs', 'uint64'], 2: ['toolCalls', 'uint32'], 3: ['consoleBytes', 'uint64'], 4: ['memoryBytes', 'uint64'] };
const FINAL_EVENT = {
  1: ['resultJson', 'string', null, 'outcome'],
  2: ['error', 'message', JOB_ERROR, 'outcome'],
  3: ['stats', 'message', JOB_STATS],
};
const CONSOLE_EVENT = { 1: ['level', 'enum'], 2: ['text', 'string'] };
const TOOL_CALL = { 1: ['callId', 'uint64'], 2: ['name', 'string'], 3: ['argsJson', 'string'] };
const TOOL_RESULT_EVENT = { 1: ['callId', 'uint64'], 2: ['isError', 'bool'], 3: ['name', 'string'] };
const STREAM_EVENT = {
  1: ['console', 'message', CONSOLE_EVENT, 'event'],
  2: ['toolCall', 'message', TOOL_CALL, 'event'],
  3: ['toolResult', 'message', TOOL_RESULT_EVENT, 'event'],
  4: ['final', 'message', FINAL_EVENT, 'event'],
  5: ['error', 'message', JOB_ERROR, 'event'],
};
const EXECUTE_RESULT = {
  1: ['final', 'message', FINAL_EVENT, 'outcome'],
  2: ['error', 'message', JOB_ERROR, 'outcome'],
  3: ['console', 'message', CONSOLE_EVENT, null, true],
};

const DEFAULTS = { string: '', enum: 0, uint32: 0, uint64: 0n, bool: false };

function decodeMessage(bytes, schema, depth = 0) {
  if (depth > 32) throw new ProtocolError('decode', 'messages nested too deeply');
  const msg = {};
  for (const [name, type, , oneof, repeated] of Object.values(schema)) {
    if (repeated) msg[name] = [];
    else if (!oneof && type !== 'message') msg[name] = DEFAULTS[type];
    else if (!oneof) msg[name] = null;
    if (oneof) msg[oneof] = null;
  }
  const r = new PbReader(bytes);
  while (!r.eof()) {
    const [field, wireType] = r.tag();
    const spec = Object.prototype.hasOwnProperty.call(schema, field) ? schema[field] : null;
    if (!spec) {
      r.skip(wireType, field); // unknown field
      continue;
    }
    const [name, type, sub, oneof, repeated] = spec;
    const expected = type === 'string' || type === 'message' ? 2 : 0;
    if (wireType !== expected) throw new ProtocolError('decode', `field ${name}: wire type ${wireType}, expected ${expected}`);
    let value;
    switch (type) {
      case 'string':
        try {
          value = utf8Strict.decode(r.lengthDelimited());
        } catch (e) {
          if (e instanceof ProtocolError) throw e;
          throw new ProtocolError('decode', `field ${name}: invalid UTF-8`);
        }
        break;
      case 'message':
        value = decodeMessage(r.lengthDelimited(), sub, depth + 1);
        break;
      case 'uint64':
        value = r.varint();
        break;
      case 'uint32':
        value = Number(BigInt.asUintN(32, r.varint()));
        break;
      case 'enum':
        value = Number(BigInt.asIntN(32, r.varint()));
        break;
      case 'bool':
        value = r.varint() !== 0n;
        break;
      default:
        throw new Error(`schema type ${type}`);
    }
    if (repeated) {
      msg[name].push(value);
    } else if (oneof) {
      if (msg[oneof] && msg[oneof] !== name) delete msg[msg[oneof]];
      msg[oneof] = name;
      msg[name] = value;
    } else {
      msg[name] = value;
    }
  }
  return msg;
}

/** StreamEvent -> { type: 'console' | 'toolCall' | 'toolResult' | 'final' | 'error' | null, value } */
export function decodeStreamEvent(bytes) {
  const m = decodeMessage(bytes, STREAM_EVENT);
  return { type: m.event, value: m.event ? m[m.event] : null };
}

/** ExecuteResult -> { outcome: 'final' | 'error' | null, final?, error?, console: [...] } */
export function decodeExecuteResult(bytes) {
  return decodeMessage(bytes, EXECUTE_RESULT);
}

// ---------------------------------------------------------------------------------------
// Outer messages: proto3 JSON (docs/HTTP.md)

function jsonField(obj, camel, snake) {
  if (obj == null || typeof obj !== 'object') return undefined;
  return obj[camel] !== undefined ? obj[camel] : obj[snake];
}

function jsonU32(value, name) {
  if (value === undefined || value === null) return 0;
  const n = typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : value;
  if (!Number.isInteger(n) || n < 0 || n > U32_MAX) throw new ProtocolError('decode', `${name}: not a u32`);
  return n;
}

function jsonU64(value, name) {
  if (value === undefined || value === null) return 0n;
  if (typeof value === 'string' && /^\d+$/.test(value)) {
    const n = BigInt(value);
    if (n > U64_MAX) throw new ProtocolError('decode', `${name}: not a u64`);
    return n;
  }
  if (Number.isSafeInteger(value) && value >= 0) return BigInt(value);
  throw new ProtocolError('decode', `${name}: not a u64`);
}

function jsonEnum(value, names, name) {
  if (value === undefined || value === null) return 0;
  if (typeof value === 'number' && Number.isInteger(value)) return value;
  for (const [n, label] of Object.entries(names)) if (label === value) return Number(n);
  throw new ProtocolError('decode', `${name}: unknown value ${JSON.stringify(value)}`);
}

function jsonBytes(value, name) {
  if (value === undefined || value === null) return new Uint8Array(0);
  try {
    return fromBase64(value);
  } catch {
    throw new ProtocolError('decode', `${name}: invalid base64`);
  }
}

export function handshakeRequestJson(hello) {
  return {
    clientHello: { version: hello.version, suite: SUITE_NAMES[hello.suite] ?? hello.suite, clientShare: toBase64(hello.clientShare) },
  };
}

export function clientAuthRequestJson(auth) {
  return {
    clientAuth: {
      sessionId: toBase64(auth.sessionId),
      clientIdentity: toBase64(auth.clientIdentity),
      signature: toBase64(auth.signature),
      finished: toBase64(auth.finished),
    },
  };
}

/** HandshakeResponse JSON -> ServerHello fields (defaults for omitted ones, as proto3 JSON allows). */
export function serverHelloFromJson(json) {
  const sh = jsonField(json, 'serverHello', 'server_hello');
  if (!sh || typeof sh !== 'object') throw new ProtocolError('handshake', 'the broker did not answer with a ServerHello');
  const clientAuthRequired = jsonField(sh, 'clientAuthRequired', 'client_auth_required');
  return {
    version: jsonU32(sh.version, 'version'),
    suite: jsonEnum(sh.suite, SUITE_NAMES, 'suite'),
    sessionId: jsonBytes(jsonField(sh, 'sessionId', 'session_id'), 'sessionId'),
    serverShare: jsonBytes(jsonField(sh, 'serverShare', 'server_share'), 'serverShare'),
    serverIdentity: jsonBytes(jsonField(sh, 'serverIdentity', 'server_identity'), 'serverIdentity'),
    clientAuthRequired: clientAuthRequired === true || clientAuthRequired === 'true',
    signature: jsonBytes(sh.signature, 'signature'),
    finished: jsonBytes(sh.finished, 'finished'),
  };
}

export function recordToJson(record) {
  return {
    sessionId: toBase64(record.sessionId),
    epoch: record.epoch,
    seq: record.seq.toString(),
    kind: RECORD_KIND_NAMES[record.kind] ?? record.kind,
    eventIndex: record.eventIndex,
    ciphertext: toBase64(record.ciphertext),
  };
}

export function recordFromJson(json) {
  if (!json || typeof json !== 'object') throw new ProtocolError('decode', 'not a SealedRecord');
  return {
    sessionId: jsonBytes(jsonField(json, 'sessionId', 'session_id'), 'sessionId'),
    epoch: jsonU32(json.epoch, 'epoch'),
    seq: jsonU64(json.seq, 'seq'),
    kind: jsonEnum(json.kind, RECORD_KIND_NAMES, 'kind'),
    eventIndex: jsonU32(jsonField(json, 'eventIndex', 'event_index'), 'eventIndex'),
    ciphertext: jsonBytes(json.ciphertext, 'ciphertext'),
  };
}

// ---------------------------------------------------------------------------------------
// HTTP transport

async function post(baseUrl, path, body, { fetchImpl = globalThis.fetch, signal } = {}) {
  return fetchImpl(`${baseUrl}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, application/x-ndjson' },
    body: JSON.stringify(body),
    cache: 'no-store',
    signal,
  });
}

async function httpError(response) {
  let code = `HTTP_${response.status}`;
  let message = response.statusText || 'request failed';
  try {
    const body = await response.json();
    if (body && typeof body.code === 'string') code = body.code;
    if (body && typeof body.message === 'string') message = body.message;
  } catch {
    // not JSON: keep the status line
  }
  return new HttpError(response.status, code, message);
}

/**
 * Handshake with the broker at `baseUrl` ('' = this page's origin), checking its key
 * against `pin`. Resolves to a ClientSession; rejects with ProtocolError or HttpError.
 */
export async function connect({ baseUrl = '', pin, suite = Suite.X25519, fetchImpl, signal } = {}) {
  const { state, hello } = await startHandshake({ pin, suite });
  const response = await post(baseUrl, '/v1/handshake', handshakeRequestJson(hello), { fetchImpl, signal });
  if (!response.ok) throw await httpError(response);
  const session = await finishHandshake(state, serverHelloFromJson(await response.json()));
  if (session.clientAuthRequired) {
    throw new ProtocolError('config', 'this broker only serves clients that authenticate with an allowed key; the playground has none');
  }
  session.baseUrl = baseUrl;
  session.fetchImpl = fetchImpl;
  return session;
}

/** Yields the lines of an NDJSON body as they arrive. */
export async function* ndjsonLines(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let finished = false;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) {
        finished = true;
        break;
      }
      buffer += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, newline).trim();
        buffer = buffer.slice(newline + 1);
        if (line) yield line;
      }
    }
    buffer += decoder.decode();
    if (buffer.trim()) yield buffer.trim();
  } finally {
    // The consumer stopped early (a refused record): drop the rest of the response.
    if (!finished) await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}

/**
 * Runs `job` over POST /v1/execute/stream, calling `onEvent(event)` for every opened
 * StreamEvent in order. Resolves with the final event ({type: 'final' | 'error', value}).
 */
export async function executeStream(session, job, onEvent = () => {}, { signal } = {}) {
  const record = await session.channel.sealRequest(RecordKind.STREAM_REQUEST, encodeExecuteRequest(job));
  const response = await post(session.baseUrl, '/v1/execute/stream', recordToJson(record), { fetchImpl: session.fetchImpl, signal });
  if (!response.ok) throw await httpError(response);
  if (!response.body) throw new ProtocolError('stream', 'the response has no body');
  const opener = new StreamOpener(record.seq);
  let last = null;
  for await (const line of ndjsonLines(response.body)) {
    let json;
    try {
      json = JSON.parse(line);
    } catch {
      throw new ProtocolError('stream', 'malformed line in the stream');
    }
    if (json && json.error && typeof json.error === 'object' && json.ciphertext === undefined) {
      // Unauthenticated error line: the stream failed after it started.
      throw new HttpError(response.status, String(json.error.code ?? 'UNKNOWN'), `stream failed: ${json.error.message ?? 'unknown error'}`, { started: true });
    }
    const event = await opener.open(session.channel, recordFromJson(json));
    if (event.type === 'final' || event.type === 'error') last = event;
    onEvent(event);
  }
  opener.finish();
  return last;
}

/** Unary Execute over POST /v1/execute: resolves with the decoded ExecuteResult. */
export async function execute(session, job, { signal } = {}) {
  const record = await session.channel.sealRequest(RecordKind.EXECUTE_REQUEST, encodeExecuteRequest(job));
  const response = await post(session.baseUrl, '/v1/execute', recordToJson(record), { fetchImpl: session.fetchImpl, signal });
  if (!response.ok) throw await httpError(response);
  const reply = recordFromJson(await response.json());
  return decodeExecuteResult(await session.channel.openReply(record.seq, RecordKind.EXECUTE_RESULT, reply));
}

/** Sealed CloseSession: the broker forgets the session. */
export async function closeSession(session) {
  const record = await session.channel.sealRequest(RecordKind.CLOSE_REQUEST, new Uint8Array(0));
  const response = await post(session.baseUrl, '/v1/session/close', recordToJson(record), { fetchImpl: session.fetchImpl });
  if (!response.ok) throw await httpError(response);
  await session.channel.openReply(record.seq, RecordKind.CLOSE_RESULT, recordFromJson(await response.json()));
}

/** A person-readable line for an error from any step. */
export function describeError(e) {
  if (e instanceof ProtocolError) return e.message;
  if (e instanceof HttpError) return `${e.code} (HTTP ${e.status}): ${e.message}`;
  if (e && e.name === 'TypeError' && /fetch/i.test(e.message)) return `network error: ${e.message}`;
  return e && e.message ? `${e.name || 'Error'}: ${e.message}` : String(e);
}

// ---------------------------------------------------------------------------------------
// The page (browser only)

const STYLES = `
:root { color-scheme: dark; --bg: #0b1020; --panel: #121a2e; --border: #24304d; --text: #dbe4f5;
  --muted: #8592ad; --accent: #6366f1; --green: #22c55e; --red: #ef4444; --amber: #f59e0b; --blue: #38bdf8; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text);
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
main { max-width: 980px; margin: 0 auto; padding: 24px 20px 40px; display: grid; gap: 16px; }
header { display: flex; align-items: center; justify-content: space-between; gap: 16px; flex-wrap: wrap; }
h1 { font-size: 20px; margin: 0; font-weight: 650; letter-spacing: .2px; }
h1 span { color: var(--muted); font-weight: 400; }
h2 { font-size: 12px; text-transform: uppercase; letter-spacing: .08em; color: var(--muted); margin: 0 0 8px; font-weight: 600; }
.panel { background: var(--panel); border: 1px solid var(--border); border-radius: 10px; padding: 14px 16px; }
#status { display: inline-flex; align-items: center; gap: 8px; padding: 6px 12px; border-radius: 999px;
  border: 1px solid var(--border); background: var(--panel); max-width: 100%; font-weight: 500; }
#status .dot { width: 10px; height: 10px; border-radius: 50%; background: var(--amber); flex: none; }
#status[data-state="ok"] .dot { background: var(--green); box-shadow: 0 0 8px var(--green); }
#status[data-state="ok"] { color: var(--green); border-color: #1f5f3a; }
#status[data-state="error"] .dot { background: var(--red); box-shadow: 0 0 8px var(--red); }
#status[data-state="error"] { color: var(--red); border-color: #6b2530; border-radius: 10px; }
#status-text { overflow-wrap: anywhere; }
.row { display: flex; gap: 12px; align-items: center; flex-wrap: wrap; }
label { color: var(--muted); font-size: 12px; }
input, select, textarea, button { font: inherit; color: inherit; }
input, select { background: var(--bg); border: 1px solid var(--border); border-radius: 6px; padding: 6px 8px; }
#pin { flex: 1 1 480px; font-family: ui-monospace, "SF Mono", Menlo, Consolas, monospace; font-size: 12.5px; }
#pin[aria-invalid="true"] { border-color: var(--red); }
#session { color: var(--muted); font-size: 12px; margin: 8px 0 0; font-family: ui-monospace, Menlo, Consolas, monospace; overflow-wrap: anywhere; }
#code { width: 100%; min-height: 230px; resize: vertical; background: #080c18; border: 1px solid var(--border);
  border-radius: 8px; padding: 12px; tab-size: 2; white-space: pre; overflow: auto;
  font: 13px/1.55 ui-monospace, "SF Mono", Menlo, Consolas, monospace; }
#code:focus, input:focus, select:focus { outline: 2px solid var(--accent); outline-offset: -1px; }
.actions { margin-top: 10px; }
#execute { background: var(--accent); color: white; border: 0; border-radius: 8px; padding: 8px 16px; font-weight: 600; cursor: pointer; }
#execute:disabled { opacity: .45; cursor: not-allowed; }
.hint { color: var(--muted); font-size: 12px; }
#output { background: #080c18; border: 1px solid var(--border); border-radius: 8px; min-height: 60px; max-height: 320px;
  overflow: auto; padding: 8px 0; font: 12.5px/1.6 ui-monospace, "SF Mono", Menlo, Consolas, monospace; }
#output:empty::before { content: "No output yet."; color: var(--muted); padding: 0 12px; }
.line { display: flex; gap: 10px; padding: 0 12px; white-space: pre-wrap; overflow-wrap: anywhere; }
.line .tag { flex: none; width: 5.5em; color: var(--muted); }
.line.console.info .tag { color: var(--blue); }
.line.console.warn { background: rgba(245, 158, 11, .08); } .line.console.warn .tag { color: var(--amber); }
.line.console.error { background: rgba(239, 68, 68, .08); } .line.console.error .tag { color: var(--red); }
.line.tool .tag, .line.tool .text { color: #a78bfa; }
#result pre { margin: 0; background: #080c18; border: 1px solid var(--border); border-radius: 8px; padding: 12px; overflow: auto;
  font: 12.5px/1.55 ui-monospace, "SF Mono", Menlo, Consolas, monospace; white-space: pre-wrap; overflow-wrap: anywhere; }
#result .head { margin-bottom: 8px; font-weight: 600; }
#result[data-state="ok"] .head { color: var(--green); }
#result[data-state="error"] .head { color: var(--red); }
#result[data-state="error"] pre { border-color: #6b2530; }
#result:empty::before { content: "Run a script to see its result."; color: var(--muted); }
#result .stats { color: var(--muted); font-size: 12px; font-weight: 400; margin-left: 8px; }
footer { color: var(--muted); font-size: 12px; }
`;

function initPage(document) {
  const $ = (id) => document.getElementById(id);
  const statusEl = $('status');
  const statusText = $('status-text');
  const pinEl = $('pin');
  const suiteEl = $('suite');
  const levelEl = $('level');
  const codeEl = $('code');
  const executeEl = $('execute');
  const outputEl = $('output');
  const resultEl = $('result');
  const sessionEl = $('session');

  try {
    const sheet = new CSSStyleSheet();
    sheet.replaceSync(STYLES);
    document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
  } catch {
    // Unstyled but working.
  }

  let session = null;
  let generation = 0;
  let running = false;

  const setStatus = (state, text) => {
    statusEl.dataset.state = state;
    statusText.textContent = text;
  };
  const updateButton = () => {
    executeEl.disabled = !session || running;
    executeEl.textContent = running ? 'Executing…' : 'Execute Securely';
  };

  async function connectNow() {
    const gen = ++generation;
    session = null;
    updateButton();
    sessionEl.textContent = '';
    setStatus('connecting', 'Connecting…');
    pinEl.removeAttribute('aria-invalid');
    try {
      const pin = parsePin(pinEl.value);
      let suite = Number(suiteEl.value) || Suite.X25519;
      if (suite === Suite.X25519 && !(await suiteSupported(Suite.X25519))) {
        suite = Suite.P256; // older browsers: no X25519 in WebCrypto
        suiteEl.value = String(Suite.P256);
      }
      const s = await connect({ pin, suite });
      if (gen !== generation) return;
      session = s;
      setStatus('ok', 'Encrypted Connection');
      sessionEl.textContent = `${SUITE_LABELS[s.suite]} + Ed25519, AES-256-GCM · session ${toHex(s.sessionId)} · broker ${s.fingerprint}`;
    } catch (e) {
      if (gen !== generation) return;
      if (e instanceof ProtocolError && e.kind === 'pin') pinEl.setAttribute('aria-invalid', 'true');
      setStatus('error', `Connection failed: ${describeError(e)}`);
    }
    updateButton();
  }

  function addLine(kind, tag, text, extraClass = '') {
    const line = document.createElement('div');
    line.className = `line ${kind} ${extraClass}`.trim();
    line.dataset.kind = kind;
    line.dataset.level = tag;
    const tagEl = document.createElement('span');
    tagEl.className = 'tag';
    tagEl.textContent = tag;
    const textEl = document.createElement('span');
    textEl.className = 'text';
    textEl.textContent = text;
    line.append(tagEl, textEl);
    const atBottom = outputEl.scrollTop + outputEl.clientHeight >= outputEl.scrollHeight - 4;
    outputEl.append(line);
    if (atBottom) outputEl.scrollTop = outputEl.scrollHeight;
  }

  function onEvent(event) {
    const v = event.value;
    switch (event.type) {
      case 'console': {
        const level = CONSOLE_LEVELS[v.level] ?? 'log';
        addLine('console', level, v.text, level);
        break;
      }
      case 'toolCall':
        addLine('tool', 'tool', `→ callTool(${JSON.stringify(v.name)}, ${v.argsJson || 'null'})  #${v.callId}`);
        break;
      case 'toolResult':
        addLine('tool', 'tool', `← ${v.name || 'tool'} #${v.callId} ${v.isError ? 'failed' : 'answered'}`);
        break;
      default:
        break;
    }
  }

  function formatStats(stats) {
    if (!stats) return '';
    const ms = Number(stats.durationUs) / 1000;
    const parts = [`${ms < 10 ? ms.toFixed(2) : Math.round(ms)} ms`, `${stats.toolCalls} tool call${stats.toolCalls === 1 ? '' : 's'}`];
    if (stats.memoryBytes) parts.push(`${(Number(stats.memoryBytes) / (1 << 20)).toFixed(1)} MiB`);
    return parts.join(' · ');
  }

  function showResult(state, head, body, stats = '') {
    resultEl.replaceChildren();
    resultEl.dataset.state = state;
    const headEl = document.createElement('div');
    headEl.className = 'head';
    headEl.textContent = head;
    if (stats) {
      const s = document.createElement('span');
      s.className = 'stats';
      s.textContent = stats;
      headEl.append(s);
    }
    const pre = document.createElement('pre');
    pre.textContent = body;
    resultEl.append(headEl, pre);
  }

  function showJobError(err, stats) {
    const code = ERROR_CODES[err.code] ?? `ERROR_${err.code}`;
    const lines = [`${code}: ${err.name ? `${err.name}: ` : ''}${err.message}`];
    if (err.line) lines.push(`at line ${err.line}`);
    showResult('error', 'Error', lines.join('\n'), stats);
    resultEl.dataset.code = code;
    resultEl.dataset.line = String(err.line || 0);
  }

  function showFinal(event) {
    delete resultEl.dataset.code;
    delete resultEl.dataset.line;
    if (event.type === 'error') {
      showJobError(event.value);
      return;
    }
    const final = event.value;
    const stats = formatStats(final.stats);
    if (final.outcome === 'error') {
      showJobError(final.error, stats);
      return;
    }
    let pretty = final.resultJson;
    try {
      pretty = JSON.stringify(JSON.parse(final.resultJson), null, 2);
    } catch {
      // show as sent
    }
    showResult('ok', 'Result', pretty, stats);
  }

  async function run() {
    if (!session || running) return;
    running = true;
    updateButton();
    outputEl.replaceChildren();
    resultEl.replaceChildren();
    resultEl.dataset.state = 'running';
    const job = { code: codeEl.value, level: Number(levelEl.value) || SecurityLevel.STRICT };
    try {
      for (let attempt = 0; ; attempt++) {
        try {
          showFinal(await executeStream(session, job, onEvent));
          break;
        } catch (e) {
          // An expired session (the broker forgets idle ones) or a request refused before
          // it ran: nothing ran, so reconnect or re-seal once and retry.
          const retriable = e instanceof HttpError && !e.started && (e.status === 401 || e.status === 409);
          if (attempt > 0 || !retriable) throw e;
          if (e.status === 401) {
            await connectNow();
            if (!session) throw e;
            running = true;
            updateButton();
          }
        }
      }
    } catch (e) {
      showResult('error', 'Failed', describeError(e));
      resultEl.dataset.code = e instanceof HttpError ? e.code : 'CLIENT';
    } finally {
      running = false;
      updateButton();
    }
  }

  let pinTimer = null;
  pinEl.addEventListener('input', () => {
    // The old session no longer matches the pin on screen: drop it now, connect once
    // the typing stops.
    generation += 1;
    session = null;
    updateButton();
    sessionEl.textContent = '';
    setStatus('connecting', 'Connecting…');
    clearTimeout(pinTimer);
    pinTimer = setTimeout(connectNow, 300);
  });
  pinEl.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') {
      clearTimeout(pinTimer);
      connectNow();
    }
  });
  suiteEl.addEventListener('change', connectNow);
  executeEl.addEventListener('click', run);
  codeEl.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      run();
    }
  });

  updateButton();
  connectNow();
}

if (typeof document !== 'undefined' && document.getElementById('status')) {
  initPage(document);
}
