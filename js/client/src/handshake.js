// The handshake (§5, §6): ClientHello, the client's checks of the ServerHello in the
// order §5.3 gives (version and suite, lengths, the pin, the shared secret, the broker's
// signature, Finished), the traffic secrets (§7), and client authentication (§5.4, §6.4).

import { PROTOCOL_VERSION, REKEY_POLICY, SUITE_NAMES, Suite } from './constants.js';
import { EnclaveProtocolError } from './errors.js';
import { concat, ctEqual, toBytes, toHex, u8, u16, utf8 } from './encoding.js';
import { deriveShared, generateEphemeral, hkdfExpandLabel, hkdfExtract, hmacSha256, hmacSha256Verify, sha256, subtle } from './crypto.js';
import { Channel } from './channel.js';
import { parsePin, publicKeyBytes } from './keys.js';

// ---------------------------------------------------------------------------------------
// Transcript encodings (§6.1)

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
// Client side

/** ClientHello with a fresh ephemeral key (or a given one, for test vectors). */
export async function startHandshake({ pin, suite = Suite.X25519, ephemeral = null, trace = false }) {
  const pinBytes = typeof pin === 'string' ? parsePin(pin) : Uint8Array.from(pin);
  if (pinBytes.length !== 32) throw new EnclaveProtocolError('pin', 'a pin is 32 bytes');
  const eph = ephemeral ?? (await generateEphemeral(suite));
  if (eph.suite !== suite) throw new EnclaveProtocolError('config', 'ephemeral key of another suite');
  const hello = { version: PROTOCOL_VERSION, suite, clientShare: eph.share };
  return { state: { pin: pinBytes, suite, ephemeral: eph, hello, trace }, hello };
}

/**
 * The client checks of §5.3, in order, then the key schedule (§7). Returns the session;
 * any failure throws an EnclaveProtocolError (kind 'downgrade', 'handshake' or 'pin').
 * `policy` is the channel's own sender rotation policy (§9.1).
 */
export async function finishHandshake(state, sh, { policy = REKEY_POLICY } = {}) {
  if (!state.ephemeral) throw new EnclaveProtocolError('config', 'handshake already finished');
  // 1. Version and suite are the ones offered.
  if (sh.version !== PROTOCOL_VERSION) throw new EnclaveProtocolError('downgrade', `broker answered protocol version ${sh.version}, not ${PROTOCOL_VERSION}`);
  if (sh.suite !== state.suite) throw new EnclaveProtocolError('downgrade', `broker answered suite ${SUITE_NAMES[sh.suite] ?? sh.suite}, not the offered ${SUITE_NAMES[state.suite]}`);
  // 2. Lengths.
  if (sh.sessionId.length !== 16) throw new EnclaveProtocolError('handshake', 'session id is not 16 bytes');
  if (sh.serverIdentity.length !== 32) throw new EnclaveProtocolError('handshake', 'broker identity is not 32 bytes');
  if (sh.signature.length !== 64 || sh.finished.length !== 32) throw new EnclaveProtocolError('handshake', 'malformed ServerHello');
  // 3. The pin.
  const fingerprint = await sha256(sh.serverIdentity);
  if (!ctEqual(fingerprint, state.pin)) {
    throw new EnclaveProtocolError('pin', `pin mismatch: the broker's key is sha256:${toHex(fingerprint)}, the pin is sha256:${toHex(state.pin)}; refusing to connect`);
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
    throw new EnclaveProtocolError('handshake', 'bad broker signature over the handshake transcript');
  }
  // 6. Finished.
  const handshakeSecret = await hkdfExtract(new Uint8Array(32), shared);
  const serverFinishedKey = await hkdfExpandLabel(handshakeSecret, 's finished', hSh, 32);
  const sv = encodeServerSignature(sh.signature);
  const hSv = await sha256(ch, shEnc, sv);
  if (!(await hmacSha256Verify(serverFinishedKey, hSv, sh.finished))) {
    shared.fill(0);
    handshakeSecret.fill(0);
    throw new EnclaveProtocolError('handshake', 'bad broker Finished');
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
  const channel = await Channel.create(sh.sessionId, clientTrafficSecret, serverTrafficSecret, { policy });
  return new HandshakeResult({
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

/** A finished handshake: the session's channel, and what client authentication needs. */
export class HandshakeResult {
  constructor(fields) {
    Object.assign(this, fields);
  }

  /**
   * ClientAuth (§5.4, §6.4) signed by `keyProvider` ({ getPublicKey(), sign(data) }, an
   * Ed25519 key). Only before the first request. Returns the ClientAuth fields.
   */
  async authenticate(keyProvider) {
    if (this.channel.nextSeq !== 0n || !this.clientFinishedKey) throw new EnclaveProtocolError('config', 'client authentication must come before the first request');
    const publicKey = await publicKeyBytes(await keyProvider.getPublicKey());
    const ca = encodeClientIdentity(publicKey);
    const hCa = await sha256(this.transcript, ca);
    const input = signingInput('client', hCa);
    const signature = toBytes(await keyProvider.sign(Uint8Array.from(input)), 'keyProvider.sign()');
    if (signature.length !== 64) throw new EnclaveProtocolError('client-auth', `keyProvider.sign() gave ${signature.length} bytes, not a 64-byte Ed25519 signature`);
    const hCv = await sha256(this.transcript, ca, encodeClientSignature(signature));
    const finished = await hmacSha256(this.clientFinishedKey, hCv);
    this.clientFinishedKey.fill(0);
    this.clientFinishedKey = null;
    if (this.trace) Object.assign(this.trace, { hCa, clientSigningInput: input, clientSignature: signature, hCv, clientFinished: finished });
    return { sessionId: this.sessionId, clientIdentity: publicKey, signature, finished };
  }

  /** Forgets the client Finished key when the session will not authenticate. */
  skipAuthentication() {
    if (this.clientFinishedKey) this.clientFinishedKey.fill(0);
    this.clientFinishedKey = null;
  }
}
