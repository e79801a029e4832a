// Client authentication with a keyProvider, against a broker that serves only allowed
// client keys (--allow-client): a key made by `enclave-broker keygen` (PEM), a
// non-extractable WebCrypto key, and an external signer that never exposes its key.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { EnclaveClient, EnclaveHttpError, EnclaveProtocolError, generateClientKey, importClientKey } from '../src/index.js';
import { Broker, keygen } from './support/broker.mjs';

let broker;
let fileKey;
let memoryKey;
before(async () => {
  fileKey = keygen('client');
  memoryKey = await generateClientKey();
  broker = await Broker.start({ args: ['--allow-client', `${fileKey.fingerprint},${memoryKey.fingerprint}`] });
  await broker.waitForLog(/client_auth=true/);
});
after(() => broker?.stop());

const client = (keyProvider, options = {}) => new EnclaveClient({ serverUrl: broker.url, pin: broker.fingerprint, keyProvider, ...options });

test('a key from `enclave-broker keygen` (PEM), imported non-extractable', async () => {
  const key = await importClientKey(fileKey.pem);
  assert.equal(key.fingerprint, fileKey.fingerprint, 'the fingerprint the Rust tool printed');
  assert.equal(key.privateKey.extractable, false);
  for (const curve of ['X25519', 'P-256']) {
    const c = client(key, { curve });
    const r = await c.execute("return await callTool('echo', { who: 'allowed' })");
    assert.deepEqual(r.value, { who: 'allowed' });
    assert.equal(c.session.clientFingerprint, fileKey.fingerprint);
    await c.close();
  }
});

test('a generated key (non-extractable) and an external signer (KMS, token) that only signs', async () => {
  assert.equal(memoryKey.privateKey.extractable, false);
  const c = client(memoryKey);
  assert.equal((await c.execute('return 1')).value, 1);
  assert.equal(c.session.clientFingerprint, memoryKey.fingerprint);

  const requests = [];
  const external = {
    async getPublicKey() {
      return memoryKey.publicKey.buffer.slice(0); // an ArrayBuffer is fine too
    },
    async sign(data) {
      requests.push(Uint8Array.from(data));
      return memoryKey.sign(data); // stands for the remote call
    },
  };
  const e = client(external, { curve: 'P-256' });
  const events = [];
  for await (const event of e.executeStreaming("console.log('hi'); return 2")) events.push(event.type);
  assert.deepEqual(events, ['console', 'final']);
  assert.equal(requests.length, 1, 'one signature per handshake');
  assert.equal(requests[0].length, 60);
  assert.equal(new TextDecoder().decode(requests[0].subarray(0, 27)), 'enclave v1 client signature');
  assert.equal(requests[0][27], 0);
  assert.equal(e.session.clientFingerprint, memoryKey.fingerprint);
  for (const x of [c, e]) await x.close();
});

test('no key, an unknown key, or a bad signature: refused', async () => {
  const anonymous = new EnclaveClient({ serverUrl: broker.url, pin: broker.fingerprint });
  await assert.rejects(anonymous.execute('return 1'), (e) => e instanceof EnclaveProtocolError && e.kind === 'client-auth' && /allow-client/.test(e.message));

  const stranger = await generateClientKey();
  await assert.rejects(client(stranger).execute('return 1'), (e) => e instanceof EnclaveHttpError && e.status === 401 && e.code === 'UNAUTHENTICATED');

  const forger = { getPublicKey: () => memoryKey.publicKey, sign: async () => new Uint8Array(64).fill(7) };
  await assert.rejects(client(forger).connect(), (e) => e instanceof EnclaveHttpError && e.status === 401);

  const failing = { getPublicKey: () => memoryKey.publicKey, sign: async () => { throw new Error('token unplugged'); } };
  await assert.rejects(client(failing).connect(), /token unplugged/);
});

test('without an allow-list a client may still authenticate, and is recorded', async () => {
  const open = await Broker.start();
  try {
    const c = new EnclaveClient({ serverUrl: open.url, pin: open.fingerprint, keyProvider: memoryKey });
    assert.equal((await c.execute('return 3')).value, 3);
    assert.equal(c.session.clientFingerprint, memoryKey.fingerprint);
    await c.close();
  } finally {
    await open.stop();
  }
});
