// The outer messages (HandshakeRequest/Response, SealedRecord) in the proto3 JSON mapping
// that the HTTP API speaks (docs/HTTP.md): lowerCamelCase (snake_case accepted), bytes as
// base64, enums by name or number, 64-bit integers as decimal strings, defaults omitted.

import { RECORD_KIND_NAMES, SUITE_NAMES, U32_MAX, U64_MAX } from './constants.js';
import { EnclaveProtocolError } from './errors.js';
import { fromBase64, toBase64 } from './encoding.js';

function jsonField(obj, camel, snake) {
  if (obj == null || typeof obj !== 'object') return undefined;
  return obj[camel] !== undefined ? obj[camel] : obj[snake];
}

function jsonU32(value, name) {
  if (value === undefined || value === null) return 0;
  const n = typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : value;
  if (!Number.isInteger(n) || n < 0 || n > U32_MAX) throw new EnclaveProtocolError('decode', `${name}: not a u32`);
  return n;
}

function jsonU64(value, name) {
  if (value === undefined || value === null) return 0n;
  if (typeof value === 'string' && /^\d+$/.test(value)) {
    const n = BigInt(value);
    if (n > U64_MAX) throw new EnclaveProtocolError('decode', `${name}: not a u64`);
    return n;
  }
  if (Number.isSafeInteger(value) && value >= 0) return BigInt(value);
  throw new EnclaveProtocolError('decode', `${name}: not a u64`);
}

function jsonEnum(value, names, name) {
  if (value === undefined || value === null) return 0;
  if (typeof value === 'number' && Number.isInteger(value)) return value;
  for (const [n, label] of Object.entries(names)) if (label === value) return Number(n);
  throw new EnclaveProtocolError('decode', `${name}: unknown value ${JSON.stringify(value)}`);
}

function jsonBytes(value, name) {
  if (value === undefined || value === null) return new Uint8Array(0);
  try {
    return fromBase64(value);
  } catch {
    throw new EnclaveProtocolError('decode', `${name}: invalid base64`);
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
  if (!sh || typeof sh !== 'object') throw new EnclaveProtocolError('handshake', 'the broker did not answer with a ServerHello');
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

/** HandshakeResponse JSON to a ClientAuth: `{"clientAuthAccepted":{}}` or a refusal. */
export function clientAuthAccepted(json) {
  const accepted = jsonField(json, 'clientAuthAccepted', 'client_auth_accepted');
  if (!accepted || typeof accepted !== 'object') {
    throw new EnclaveProtocolError('client-auth', 'the broker did not answer the ClientAuth with ClientAuthAccepted');
  }
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
  if (!json || typeof json !== 'object') throw new EnclaveProtocolError('decode', 'not a SealedRecord');
  return {
    sessionId: jsonBytes(jsonField(json, 'sessionId', 'session_id'), 'sessionId'),
    epoch: jsonU32(json.epoch, 'epoch'),
    seq: jsonU64(json.seq, 'seq'),
    kind: jsonEnum(json.kind, RECORD_KIND_NAMES, 'kind'),
    eventIndex: jsonU32(jsonField(json, 'eventIndex', 'event_index'), 'eventIndex'),
    ciphertext: jsonBytes(json.ciphertext, 'ciphertext'),
  };
}
