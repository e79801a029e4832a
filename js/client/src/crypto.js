// WebCrypto primitives and the key schedule: SHA-256, HMAC, HKDF (RFC 5869),
// HKDF-Expand-Label and the epoch keys (§7), ephemeral ECDH (§4), AES-256-GCM (§8).
// Private keys are non-extractable CryptoKeys except where a test vector imports fixed
// bytes; derived secrets are Uint8Arrays, wiped (`fill(0)`) once they are no longer needed.

import { Suite } from './constants.js';
import { EnclaveProtocolError } from './errors.js';
import { concat, fromBase64, fromHex, isAllZero, u8, u16, utf8 } from './encoding.js';

export function subtle() {
  const s = globalThis.crypto && globalThis.crypto.subtle;
  if (!s) {
    throw new EnclaveProtocolError('config', 'WebCrypto is not available (a browser page must come from a secure context: https or localhost; Node must be 20 or newer)');
  }
  return s;
}

// ---------------------------------------------------------------------------------------
// Hashes, HMAC, HKDF and HKDF-Expand-Label (§7)

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

/** key_n and iv_n of one direction's epoch n. */
export async function deriveEpochKeys(trafficSecret) {
  const empty = new Uint8Array(0);
  return {
    key: await hkdfExpandLabel(trafficSecret, 'key', empty, 32),
    iv: await hkdfExpandLabel(trafficSecret, 'iv', empty, 12),
  };
}

/** traffic_secret_(n+1) from traffic_secret_n. */
export function nextTrafficSecret(trafficSecret) {
  return hkdfExpandLabel(trafficSecret, 'traffic upd', new Uint8Array(0), 32);
}

// ---------------------------------------------------------------------------------------
// Ephemeral ECDH (§4)

const PKCS8_PREFIX = {
  [Suite.X25519]: fromHex('302e020100300506032b656e04220420'),
  [Suite.P256]: fromHex('3041020100301306072a8648ce3d020106082a8648ce3d030107042730250201010420'),
};
export const PKCS8_ED25519_PREFIX = fromHex('302e020100300506032b657004220420');

function ecdhAlgorithm(suite) {
  if (suite === Suite.X25519) return { name: 'X25519' };
  if (suite === Suite.P256) return { name: 'ECDH', namedCurve: 'P-256' };
  throw new EnclaveProtocolError('config', `unknown suite ${suite}`);
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

/** Does this runtime's WebCrypto have the suite's curve? (X25519 in browsers is recent.) */
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
    throw new EnclaveProtocolError('handshake', `invalid key share: X25519 shares are 32 bytes, got ${peerShare.length}`);
  }
  if (suite === Suite.P256 && (peerShare.length !== 65 || peerShare[0] !== 0x04)) {
    throw new EnclaveProtocolError('handshake', 'invalid key share: P-256 shares are 65-byte uncompressed points');
  }
  const algorithm = ecdhAlgorithm(suite);
  let shared;
  try {
    const peer = await subtle().importKey('raw', peerShare, algorithm, false, []);
    shared = new Uint8Array(await subtle().deriveBits({ name: algorithm.name, public: peer }, ephemeral.privateKey, 256));
  } catch (e) {
    throw new EnclaveProtocolError('handshake', `invalid key share (${e && e.message ? e.message : e})`);
  }
  if (isAllZero(shared)) throw new EnclaveProtocolError('handshake', 'invalid key share: all-zero shared secret');
  return shared;
}

// ---------------------------------------------------------------------------------------
// AES-256-GCM (§8): the key stays inside WebCrypto once imported.

export async function aesKey(key) {
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
    throw new EnclaveProtocolError('record', 'record authentication failed');
  }
}
