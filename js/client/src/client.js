// EnclaveClient: one session with a broker over the HTTP v1 API, shared by every request,
// with the Rust client's guarantees (client/src/lib.rs):
// - the broker is the pinned one (the pin is mandatory; a wrong one refuses to connect);
// - nothing is lost silently (replies open only as the answer to their own request; a
//   stream that ends without its final event throws);
// - one session, many requests: sealing and opening are serialised per session, the HTTP
//   requests run concurrently;
// - retries never run a job twice: UNAUTHENTICATED (the broker forgot the session: expired,
//   restarted) gets one new handshake and one more attempt, ABORTED (replay window, key
//   epoch) up to two re-sealed attempts; both statuses mean nothing ran, and nothing is
//   retried once the broker accepted a request;
// - keys rotate: when the rekey policy says so (records, bytes or age), the next request
//   first calls the Rekey RPC, which moves both directions to new keys.

import { CURVES, NEVER_ROTATE, REKEY_POLICY, RecordKind, SecurityLevel, Suite } from './constants.js';
import { EnclaveHttpError, EnclaveJobError, EnclaveProtocolError } from './errors.js';
import { toHex } from './encoding.js';
import { suiteSupported } from './crypto.js';
import { finishHandshake, startHandshake } from './handshake.js';
import { StreamOpener } from './channel.js';
import { decodeExecuteResult, encodeExecuteRequest, LIMIT_FIELDS } from './messages.js';
import { clientAuthAccepted, clientAuthRequestJson, handshakeRequestJson, recordFromJson, recordToJson, serverHelloFromJson } from './wire.js';
import { httpError, ndjsonLines, postJson, raceAbort, transportError } from './http.js';
import { checkKeyProvider, fingerprintOf, parsePin, PIN_HELP } from './keys.js';
import { consoleLineFrom, eventFrom, failureFrom, finalEventFrom } from './events.js';

/** A handshake that takes longer than this fails (DEADLINE_EXCEEDED), so that waiting requests do not hang. */
export const HANDSHAKE_TIMEOUT_MS = 30_000;
/** One new session per request: a second UNAUTHENTICATED on a fresh session is a configuration problem. */
const NEW_SESSIONS = 1;
/** ABORTED needs concurrent requests racing a key update; two re-seals outlast any realistic race. */
const RESEALS = 2;

const LEVELS = Object.freeze({ STRICT: SecurityLevel.STRICT, SECURE: SecurityLevel.SECURE, STANDARD: SecurityLevel.STANDARD, PERMISSIVE: SecurityLevel.PERMISSIVE });

/** 'X25519' | 'P-256' (case and the dash do not matter) -> suite number. */
export function suiteOfCurve(curve) {
  const c = String(curve).toUpperCase().replace(/-/g, '');
  if (c === 'X25519') return Suite.X25519;
  if (c === 'P256') return Suite.P256;
  throw new TypeError(`curve must be 'X25519' or 'P-256', not ${JSON.stringify(curve)}`);
}

/** Whether this runtime's WebCrypto has the curve (X25519 arrived in browsers in 2024-2025). */
export function curveSupported(curve) {
  return suiteSupported(suiteOfCurve(curve));
}

function levelOf(level) {
  if (level === undefined || level === null) return SecurityLevel.UNSPECIFIED;
  const n = LEVELS[String(level).toUpperCase()];
  if (n === undefined) throw new TypeError(`level must be one of ${Object.keys(LEVELS).join(', ')}, not ${JSON.stringify(level)}`);
  return n;
}

function limitsOf(limits) {
  if (limits === undefined || limits === null) return null;
  if (typeof limits !== 'object') throw new TypeError('limits must be an object');
  const known = new Set(LIMIT_FIELDS.map(([name]) => name));
  for (const [name, value] of Object.entries(limits)) {
    if (!known.has(name)) throw new TypeError(`unknown limit ${JSON.stringify(name)} (known: ${[...known].join(', ')})`);
    if (value === undefined) continue;
    const ok = typeof value === 'bigint' ? value >= 0n && value < 1n << 64n : Number.isSafeInteger(value) && value >= 0;
    if (!ok) throw new TypeError(`limits.${name} must be a non-negative integer`);
  }
  return limits;
}

async function readJson(response, signal) {
  let text;
  try {
    text = await response.text();
  } catch (e) {
    throw transportError(e, signal, response.url);
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new EnclaveProtocolError('decode', 'the broker\'s answer is not JSON');
  }
}

/** The live session: its channel, and the clock that decides when to call Rekey. */
class Session {
  constructor(handshake, generation, clientFingerprint, startedAt) {
    this.generation = generation;
    this.handshake = handshake;
    this.channel = handshake.channel;
    this.clientFingerprint = clientFingerprint;
    this.clock = { records: 0, bytes: 0, since: startedAt, inFlight: false };
    this.rekeys = 0;
  }
}

export class EnclaveClient {
  #url;
  #pin;
  #suite;
  #keyProvider;
  #fetch;
  #level;
  #policy;
  #session = null;
  #handshaking = null;
  #handshakes = 0;

  constructor(options) {
    if (!options || typeof options !== 'object') throw new TypeError('new EnclaveClient({ serverUrl, pin }): options are required');
    const { serverUrl, pin, curve = 'X25519', keyProvider = null, fetch: fetchImpl = null, level = null, rekey = null } = options;
    if (typeof serverUrl !== 'string') throw new TypeError('serverUrl must be the broker\'s HTTP address, such as "http://127.0.0.1:7780" ("" for this page\'s origin)');
    if (pin === undefined || pin === null || (typeof pin === 'string' && pin.trim() === '')) {
      throw new EnclaveProtocolError('pin', `EnclaveClient needs a pin, and will not connect without one: ${PIN_HELP}`);
    }
    this.#url = serverUrl.replace(/\/+$/, '');
    this.#pin = parsePin(pin);
    this.#suite = suiteOfCurve(curve);
    this.#keyProvider = checkKeyProvider(keyProvider);
    const f = fetchImpl ?? globalThis.fetch;
    if (typeof f !== 'function') throw new TypeError('no fetch: pass options.fetch (Node 20+ and browsers have one)');
    // Called unbound: a browser's fetch refuses any `this` but the window.
    this.#fetch = (url, init) => f(url, init);
    this.#level = levelOf(level);
    if (rekey !== null && typeof rekey !== 'object') throw new TypeError('rekey must be { maxRecords?, maxBytes?, maxAgeMs? }');
    this.#policy = { ...REKEY_POLICY };
    for (const [name, value] of Object.entries(rekey ?? {})) {
      if (!(name in REKEY_POLICY)) throw new TypeError(`unknown rekey setting ${JSON.stringify(name)} (known: ${Object.keys(REKEY_POLICY).join(', ')})`);
      if (value === undefined) continue;
      if (typeof value !== 'number' || !(value >= 0)) throw new TypeError(`rekey.${name} must be a non-negative number`);
      this.#policy[name] = value;
    }
  }

  /** The broker's HTTP address, as given (without trailing slashes). */
  get serverUrl() {
    return this.#url;
  }

  get curve() {
    return CURVES[this.#suite];
  }

  /** The current session, or null before the first handshake and after close(). */
  get session() {
    const s = this.#session;
    if (!s) return null;
    return {
      sessionId: toHex(s.handshake.sessionId),
      fingerprint: s.handshake.fingerprint,
      curve: CURVES[s.handshake.suite],
      clientFingerprint: s.clientFingerprint,
      handshakes: s.generation,
      sendEpoch: s.channel.send.epoch,
      recvEpoch: s.channel.recv.epoch,
      rekeys: s.rekeys,
    };
  }

  /** Handshakes now (requests do it themselves when needed) and resolves with the session. */
  async connect({ signal } = {}) {
    await this.#currentSession(signal);
    return this.session;
  }

  /** Runs `code` and resolves with its value, console output and statistics; a failed job rejects with EnclaveJobError. */
  async execute(code, options = {}) {
    const { signal } = options;
    const request = this.#request(code, options);
    const { session, seq, response } = await this.#send(RecordKind.EXECUTE_REQUEST, request, '/v1/execute', signal);
    const reply = recordFromJson(await readJson(response, signal));
    const result = decodeExecuteResult(await session.channel.openReply(seq, RecordKind.EXECUTE_RESULT, reply));
    const console = result.console.map(consoleLineFrom);
    if (result.outcome === 'final') {
      const event = finalEventFrom(result.final);
      if (event.type === 'final') return { value: event.value, resultJson: event.resultJson, console, stats: event.stats };
      throw new EnclaveJobError(event, { console });
    }
    if (result.outcome === 'error') throw new EnclaveJobError({ ...failureFrom(result.error), stats: null }, { console });
    throw new EnclaveProtocolError('decode', 'ExecuteResult without an outcome');
  }

  /**
   * Runs `code` and yields its events as they happen: `console`, `tool_call`,
   * `tool_result`, then exactly one `final` or `error`. Throws EnclaveProtocolError
   * (kind 'truncated') if the stream ends without its final event. Breaking out of the
   * loop, or the signal, cancels the job.
   */
  executeStreaming(code, options = {}) {
    return this.#stream(code, options);
  }

  async *#stream(code, options) {
    const { signal } = options;
    const request = this.#request(code, options);
    const { session, seq, response } = await this.#send(RecordKind.STREAM_REQUEST, request, '/v1/execute/stream', signal);
    if (!response.body) throw new EnclaveProtocolError('stream', 'the answer has no body');
    const opener = new StreamOpener(seq);
    const lines = ndjsonLines(response.body);
    let ended = '';
    try {
      for (;;) {
        let next;
        try {
          next = await lines.next();
        } catch (e) {
          if (signal && signal.aborted) throw signal.reason;
          ended = `the connection failed: ${e && e.message ? e.message : e}`;
          break;
        }
        if (next.done) break;
        let json;
        try {
          json = JSON.parse(next.value);
        } catch {
          throw new EnclaveProtocolError('stream', 'malformed line in the stream');
        }
        if (json && typeof json.error === 'object' && json.error !== null && json.ciphertext === undefined) {
          // The broker's unauthenticated last line: the stream failed after it started.
          ended = `the broker ended it with ${json.error.code}: ${json.error.message}`;
          break;
        }
        yield eventFrom(await opener.open(session.channel, recordFromJson(json)));
      }
    } finally {
      await lines.return();
    }
    opener.finish(ended);
  }

  /** New keys in both directions now (the client does this by itself at the policy's limits). */
  async rekey({ signal } = {}) {
    const session = await this.#currentSession(signal);
    Object.assign(session.clock, { records: 0, bytes: 0, since: Date.now() });
    try {
      await raceAbort(this.#rekeyRpc(session), signal);
      session.rekeys += 1;
    } catch (e) {
      if (!(e instanceof EnclaveHttpError && e.status === 401)) throw e;
      // The broker forgot the session: a new handshake gives new keys too.
      this.#invalidate(session);
      await this.#currentSession(signal);
    }
  }

  /** Ends the session on the broker (a sealed CloseSession). The next request starts a new one. */
  async close() {
    if (this.#handshaking) await this.#handshaking.catch(() => {});
    const session = this.#session;
    this.#session = null;
    if (!session) return;
    const record = await session.channel.sealRequest(RecordKind.CLOSE_REQUEST, new Uint8Array(0));
    const response = await postJson(this.#fetch, `${this.#url}/v1/session/close`, recordToJson(record));
    if (response.status === 401) return; // already forgotten (expired, restarted)
    if (!response.ok) throw await httpError(response);
    await session.channel.openReply(record.seq, RecordKind.CLOSE_RESULT, recordFromJson(await readJson(response)));
  }

  // -------------------------------------------------------------------------------------

  #request(code, { level, limits, input } = {}) {
    if (typeof code !== 'string') throw new TypeError('code must be a string of JavaScript');
    const inputJson = input === undefined ? '' : JSON.stringify(input) ?? '';
    return encodeExecuteRequest({ code, level: level === undefined ? this.#level : levelOf(level), limits: limitsOf(limits), inputJson });
  }

  #currentSession(signal) {
    if (this.#session) return Promise.resolve(this.#session);
    if (!this.#handshaking) {
      const running = this.#handshake()
        .then((session) => {
          this.#session = session;
          return session;
        })
        .finally(() => {
          if (this.#handshaking === running) this.#handshaking = null;
        });
      running.catch(() => {}); // reported to the callers below, not as unhandled
      this.#handshaking = running;
    }
    return raceAbort(this.#handshaking, signal);
  }

  #invalidate(session) {
    if (this.#session === session) this.#session = null;
  }

  async #handshake() {
    const started = Date.now();
    const timeout = AbortSignal.timeout(HANDSHAKE_TIMEOUT_MS);
    try {
      const { state, hello } = await startHandshake({ pin: this.#pin, suite: this.#suite });
      const reply = await this.#postOk('/v1/handshake', handshakeRequestJson(hello), timeout);
      const handshake = await finishHandshake(state, serverHelloFromJson(await readJson(reply, timeout)), { policy: NEVER_ROTATE });
      let clientFingerprint = null;
      if (this.#keyProvider) {
        const auth = await handshake.authenticate(this.#keyProvider);
        clientFingerprint = await fingerprintOf(auth.clientIdentity);
        const accepted = await this.#postOk('/v1/handshake', clientAuthRequestJson(auth), timeout);
        clientAuthAccepted(await readJson(accepted, timeout));
      } else {
        handshake.skipAuthentication();
        if (handshake.clientAuthRequired) {
          throw new EnclaveProtocolError(
            'client-auth',
            'this broker serves only clients that authenticate: pass a keyProvider whose key is on its allow-list (enclave-broker --allow-client sha256:…)',
          );
        }
      }
      this.#handshakes += 1;
      return new Session(handshake, this.#handshakes, clientFingerprint, started);
    } catch (e) {
      if (timeout.aborted && e === timeout.reason) {
        throw new EnclaveHttpError(0, 'DEADLINE_EXCEEDED', `the handshake did not complete within ${HANDSHAKE_TIMEOUT_MS / 1000} s`);
      }
      throw e;
    }
  }

  async #postOk(path, body, signal) {
    const response = await postJson(this.#fetch, `${this.#url}${path}`, body, signal);
    if (!response.ok) throw await httpError(response);
    return response;
  }

  /**
   * Seals `plaintext` as `kind` and POSTs it, retrying the statuses that guarantee nothing
   * ran. Once the broker accepted the request (2xx), nothing is retried.
   */
  async #send(kind, plaintext, path, signal) {
    let newSessions = NEW_SESSIONS;
    let reseals = RESEALS;
    for (;;) {
      if (signal && signal.aborted) throw signal.reason;
      const session = await this.#currentSession(signal);
      const rekeying = this.#rekeyIfDue(session);
      if (rekeying) await raceAbort(rekeying, signal);
      // Counted before sealing (which is asynchronous), so concurrent requests see each other.
      session.clock.records += 1;
      session.clock.bytes += plaintext.length;
      const record = await session.channel.sealRequest(kind, plaintext);
      const response = await postJson(this.#fetch, `${this.#url}${path}`, recordToJson(record), signal);
      if (response.ok) return { session, seq: record.seq, response };
      const error = await httpError(response);
      if (error.code === 'UNAUTHENTICATED' && newSessions > 0) {
        newSessions -= 1;
        this.#invalidate(session);
        continue;
      }
      if (error.code === 'ABORTED' && reseals > 0) {
        reseals -= 1;
        continue;
      }
      throw error;
    }
  }

  #due(clock) {
    const p = this.#policy;
    return clock.records >= p.maxRecords || clock.bytes >= p.maxBytes || Date.now() - clock.since >= p.maxAgeMs;
  }

  /**
   * Runs the Rekey RPC when the clock says so; one at a time, the others keep sealing
   * under the current key meanwhile. A failure is kept, not thrown: the request that
   * noticed the clock still goes out, and its own status tells if the session is gone.
   */
  #rekeyIfDue(session) {
    // Decided synchronously, so that concurrent requests see one another's counts.
    const clock = session.clock;
    if (clock.inFlight || !this.#due(clock)) return null;
    clock.inFlight = true;
    Object.assign(clock, { records: 0, bytes: 0, since: Date.now() });
    return this.#rekeyRpc(session).then(
      () => {
        session.rekeys += 1;
        clock.inFlight = false;
      },
      (e) => {
        session.lastRekeyError = e;
        clock.inFlight = false;
      },
    );
  }

  async #rekeyRpc(session) {
    const record = await session.channel.sealRekeyRequest();
    const response = await postJson(this.#fetch, `${this.#url}/v1/session/rekey`, recordToJson(record));
    if (!response.ok) throw await httpError(response);
    await session.channel.openReply(record.seq, RecordKind.REKEY_RESULT, recordFromJson(await readJson(response)));
  }
}
