// The sealed (inner) messages, protobuf binary as over gRPC: a small encoder for
// ExecuteRequest and a decoder for StreamEvent and ExecuteResult
// (proto/proto/enclave/v1/{broker,job}.proto). Unknown fields of every wire type are
// skipped, as protobuf requires, so a newer broker's additions do not break this client.

import { EnclaveProtocolError } from './errors.js';
import { concat, utf8 } from './encoding.js';

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
  /** An `optional` scalar: present whenever set, even when 0. */
  optionalUint(field, value) {
    if (value !== null && value !== undefined) this.tag(field, 0).varint(value);
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

/** Limits fields by number (all `optional`). */
export const LIMIT_FIELDS = Object.freeze([
  ['timeoutMs', 1],
  ['memoryBytes', 2],
  ['maxToolCalls', 3],
  ['maxConsoleBytes', 4],
  ['maxResultBytes', 5],
  ['maxToolArgsBytes', 6],
]);

/**
 * ExecuteRequest { Job job = 1 { code = 1, level = 2, limits = 3, input_json = 4 } };
 * `limits` is { timeoutMs?, memoryBytes?, maxToolCalls?, maxConsoleBytes?, maxResultBytes?,
 * maxToolArgsBytes? } (non-negative integers; absent ones are the level's).
 */
export function encodeExecuteRequest({ code = '', level = 0, limits = null, inputJson = '' } = {}) {
  const job = new PbWriter().string(1, code).uint(2, level);
  if (limits) {
    const w = new PbWriter();
    for (const [name, field] of LIMIT_FIELDS) w.optionalUint(field, limits[name]);
    job.bytes(3, w.finish(), true);
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
    if (this.p + n > this.b.length) throw new EnclaveProtocolError('decode', 'truncated protobuf message');
  }
  varint() {
    let result = 0n;
    for (let i = 0; i < 10; i++) {
      this.need(1);
      const byte = this.b[this.p++];
      if (i === 9 && byte > 1) throw new EnclaveProtocolError('decode', 'varint overflows 64 bits');
      result |= BigInt(byte & 0x7f) << BigInt(7 * i);
      if (byte < 0x80) return result;
    }
    throw new EnclaveProtocolError('decode', 'varint too long');
  }
  tag() {
    const key = this.varint();
    if (key > 0xffffffffn) throw new EnclaveProtocolError('decode', 'invalid field key');
    const field = Number(key >> 3n);
    const wireType = Number(key & 7n);
    if (field === 0) throw new EnclaveProtocolError('decode', 'field number 0');
    return [field, wireType];
  }
  lengthDelimited() {
    const n = this.varint();
    if (n > BigInt(this.b.length - this.p)) throw new EnclaveProtocolError('decode', 'truncated protobuf message');
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
        if (depth > 64) throw new EnclaveProtocolError('decode', 'groups nested too deeply');
        for (;;) {
          if (this.eof()) throw new EnclaveProtocolError('decode', 'unterminated group');
          const [f, wt] = this.tag();
          if (wt === 4) {
            if (f !== field) throw new EnclaveProtocolError('decode', 'mismatched end of group');
            return;
          }
          this.skip(wt, f, depth + 1);
        }
      }
      default:
        throw new EnclaveProtocolError('decode', `invalid wire type ${wireType}`);
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
  if (depth > 32) throw new EnclaveProtocolError('decode', 'messages nested too deeply');
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
    if (wireType !== expected) throw new EnclaveProtocolError('decode', `field ${name}: wire type ${wireType}, expected ${expected}`);
    let value;
    switch (type) {
      case 'string':
        try {
          value = utf8Strict.decode(r.lengthDelimited());
        } catch (e) {
          if (e instanceof EnclaveProtocolError) throw e;
          throw new EnclaveProtocolError('decode', `field ${name}: invalid UTF-8`);
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
