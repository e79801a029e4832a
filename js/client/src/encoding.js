// Bytes: concatenation, hex, base64, UTF-8, big-endian integers, constant-time compare.

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

/** A Uint8Array view of any BufferSource (ArrayBuffer, typed array, DataView, Node Buffer). */
export function toBytes(value, what = 'value') {
  if (value instanceof Uint8Array) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  throw new TypeError(`${what} must be bytes (Uint8Array or ArrayBuffer)`);
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

export function isAllZero(bytes) {
  let acc = 0;
  for (const b of bytes) acc |= b;
  return acc === 0;
}
