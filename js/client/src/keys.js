// Identity keys, fingerprints and pins (§3), and client keys for client authentication
// (§5.4): a `keyProvider` is any object with `getPublicKey()` and `sign(data)`, so the
// private key can live in a hardware token, a KMS or a non-extractable CryptoKey (which a
// browser can keep in IndexedDB) and never be exported. ClientKey is the WebCrypto one.

import { EnclaveProtocolError } from './errors.js';
import { concat, fromBase64, fromHex, toBytes, toHex } from './encoding.js';
import { PKCS8_ED25519_PREFIX, sha256, subtle } from './crypto.js';

/** `sha256:<64 hex>` of an Ed25519 public key: what a broker or a client key is pinned by. */
export async function fingerprintOf(publicKey) {
  return `sha256:${toHex(await sha256(toBytes(publicKey, 'public key')))}`;
}

export const PIN_HELP =
  'the pin is the broker\'s fingerprint, sha256:<64 hex digits>: the broker logs it when it starts ' +
  '("broker serving … fingerprint=sha256:…"), and `enclave-broker fingerprint` (or ' +
  '`docker compose exec broker /enclave-broker fingerprint`) prints it; get it from the broker\'s ' +
  'operator, not from the network you are about to trust';

/** `sha256:<64 hex>` (upper-case hex accepted, surrounding whitespace ignored) -> 32 bytes. */
export function parsePin(text) {
  const s = typeof text === 'string' ? text.trim() : '';
  if (s === '' || s.includes('{{')) throw new EnclaveProtocolError('pin', `no pin: ${PIN_HELP}`);
  if (!s.startsWith('sha256:')) throw new EnclaveProtocolError('pin', `invalid pin: a fingerprint starts with "sha256:" (${PIN_HELP})`);
  const hex = s.slice('sha256:'.length);
  if (!/^[0-9a-fA-F]{64}$/.test(hex)) throw new EnclaveProtocolError('pin', 'invalid pin: "sha256:" must be followed by 64 hex digits');
  return fromHex(hex);
}

const ED25519 = { name: 'Ed25519' };

/** An Ed25519 client key held by WebCrypto; usable as a `keyProvider`. */
export class ClientKey {
  /** Use generateClientKey(), importClientKey() or ClientKey.fromCryptoKeys(). */
  constructor(privateKey, publicKey, fingerprint) {
    this.privateKey = privateKey;
    this.publicKey = publicKey;
    this.fingerprint = fingerprint;
  }

  /** From an Ed25519 private CryptoKey (with usage 'sign') and its public key (CryptoKey or 32 bytes). */
  static async fromCryptoKeys(privateKey, publicKey) {
    const raw = await publicKeyBytes(publicKey);
    return new ClientKey(privateKey, raw, await fingerprintOf(raw));
  }

  async getPublicKey() {
    return this.publicKey;
  }

  async sign(data) {
    return new Uint8Array(await subtle().sign(ED25519, this.privateKey, toBytes(data, 'data')));
  }
}

/** A new Ed25519 client key; its private half cannot be exported. */
export async function generateClientKey() {
  const pair = await subtle().generateKey(ED25519, false, ['sign', 'verify']);
  return ClientKey.fromCryptoKeys(pair.privateKey, pair.publicKey);
}

/**
 * An Ed25519 private key in PKCS#8: PEM text ("-----BEGIN PRIVATE KEY-----", what
 * `enclave keygen` and OpenSSL write) or DER bytes. The key ends up non-extractable unless
 * `extractable` is true (its public half is read once from an extractable import, which is
 * dropped at once).
 */
export async function importClientKey(pkcs8, { extractable = false } = {}) {
  let der;
  if (typeof pkcs8 === 'string') {
    const body = pkcs8.replace(/-----BEGIN PRIVATE KEY-----|-----END PRIVATE KEY-----|\s+/g, '');
    try {
      der = fromBase64(body);
    } catch {
      throw new EnclaveProtocolError('config', 'not a PEM private key');
    }
  } else {
    der = toBytes(pkcs8, 'key');
  }
  let publicKey;
  let privateKey;
  try {
    const readable = await subtle().importKey('pkcs8', der, ED25519, true, ['sign']);
    publicKey = fromBase64((await subtle().exportKey('jwk', readable)).x);
    privateKey = extractable ? readable : await subtle().importKey('pkcs8', der, ED25519, false, ['sign']);
  } catch (e) {
    throw new EnclaveProtocolError('config', `not an Ed25519 private key in PKCS#8 (${e && e.message ? e.message : e})`);
  }
  return new ClientKey(privateKey, publicKey, await fingerprintOf(publicKey));
}

/** An Ed25519 key from its 32-byte RFC 8032 seed (test vectors, tools); extractable. */
export async function importEd25519Seed(seed) {
  return importClientKey(concat(PKCS8_ED25519_PREFIX, seed), { extractable: true });
}

/** 32 raw bytes of an Ed25519 public key given as bytes or as a CryptoKey. */
export async function publicKeyBytes(value) {
  let raw;
  if (value && typeof value === 'object' && value.type === 'public' && value.algorithm) {
    raw = new Uint8Array(await subtle().exportKey('raw', value));
  } else {
    raw = toBytes(value, 'keyProvider.getPublicKey()');
  }
  if (raw.length !== 32) throw new EnclaveProtocolError('client-auth', `keyProvider.getPublicKey() gave ${raw.length} bytes, not a 32-byte Ed25519 public key`);
  return raw;
}

/** Checks the shape of a `keyProvider` option. */
export function checkKeyProvider(provider) {
  if (provider == null) return null;
  if (typeof provider.getPublicKey !== 'function' || typeof provider.sign !== 'function') {
    throw new TypeError('keyProvider must have getPublicKey() and sign(data) methods (an Ed25519 key; see generateClientKey())');
  }
  return provider;
}
