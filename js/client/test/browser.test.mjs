// The package in headless Chromium: loaded as ES modules by a page under a strict
// Content-Security-Policy, talking to the real broker (through the test server's proxy,
// same origin): the vectors, both curves, job errors, concurrency, rekey, refusals,
// truncation, abort and client authentication. test/browser/checks.mjs runs in the page.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { webcrypto } from 'node:crypto';
import { join } from 'node:path';
import { Broker, tempDir } from './support/broker.mjs';
import { startServer } from './support/server.mjs';
import { Browser } from './support/webdriver.mjs';
import { generateClientKey, ClientKey } from '../src/index.js';
import { toBase64 } from '../src/encoding.js';

let broker;
let authBroker;
let singleBroker;
let server;
let browser;
let clientPem;
let clientFingerprint;

before(async () => {
  // A client key the page will import from PEM (made here, so the allow-list can name it).
  const pair = await webcrypto.subtle.generateKey({ name: 'Ed25519' }, true, ['sign', 'verify']);
  const pkcs8 = new Uint8Array(await webcrypto.subtle.exportKey('pkcs8', pair.privateKey));
  clientPem = `-----BEGIN PRIVATE KEY-----\n${toBase64(pkcs8)}\n-----END PRIVATE KEY-----\n`;
  clientFingerprint = (await ClientKey.fromCryptoKeys(pair.privateKey, pair.publicKey)).fingerprint;
  const other = await generateClientKey();
  [broker, authBroker, singleBroker] = await Promise.all([
    Broker.start(),
    Broker.start({ args: ['--allow-client', `${clientFingerprint},${other.fingerprint}`] }),
    Broker.start({ args: ['--max-jobs-per-session', '1'] }),
  ]);
  server = await startServer({ brokers: { default: broker.url, auth: authBroker.url, single: singleBroker.url } });
  browser = await Browser.start();
  await browser.goto(`${server.url}/`);
});

after(async () => {
  await browser?.quit();
  await server?.close();
  await Promise.all([broker?.stop(), authBroker?.stop(), singleBroker?.stop()]);
});

const inPage = (fn, arg) => browser.run(`const m = await import('/test/browser/checks.mjs'); return m.${fn}(args[0]);`, arg ?? null);

test('the package is served as ES modules and loads under default-src \'self\'', async () => {
  const names = await browser.run("const m = await import('/client/index.js'); return Object.keys(m).sort();");
  for (const name of ['EnclaveClient', 'EnclaveJobError', 'EnclaveProtocolError', 'EnclaveHttpError', 'generateClientKey', 'importClientKey']) {
    assert.ok(names.includes(name), `${name} in ${names}`);
  }
  assert.equal(await browser.run('return window.isSecureContext;'), true);
});

test('Chromium agrees with the known-answer vectors', async () => {
  const { checks, summaries } = await inPage('vectors');
  assert.ok(checks > 300, `${checks} checks`);
  assert.equal(summaries.length, 3);
});

for (const curve of ['X25519', 'P-256']) {
  test(`execute, stream, job error, concurrency and rekey over ${curve}`, async () => {
    const r = await inPage('flows', { pin: broker.fingerprint, curve });
    assert.equal(r.supported, true, `${curve} in this Chromium's WebCrypto`);
    assert.equal(r.info.curve, curve);
    assert.equal(r.info.fingerprint, broker.fingerprint);
    assert.deepEqual(r.run.value, { doubled: 42 });
    assert.deepEqual(r.run.console, [{ level: 'log', text: 'in 21' }]);
    assert.deepEqual(r.events.map((e) => e.type), ['console', 'tool_call', 'tool_result', 'final']);
    assert.equal(r.events[3].value, 'x');
    assert.deepEqual(r.jobError, { isJobError: true, code: 'SCRIPT_ERROR', line: 2, errorName: 'TypeError' });
    assert.deepEqual(r.concurrent, [1, 2, 3, 4]);
    assert.equal(r.afterRekey, 'rekeyed');
    assert.deepEqual([r.session.handshakes, r.session.sendEpoch, r.session.recvEpoch], [1, 1, 1]);
  });
}

test('no pin, a wrong pin, a cut stream: refused or reported', async () => {
  const r = await inPage('refusals', { pin: broker.fingerprint });
  assert.equal(r.noPin.kind, 'pin');
  assert.match(r.noPin.message, /enclave-broker fingerprint/);
  assert.equal(r.wrongPin.isProtocolError, true);
  assert.equal(r.wrongPin.kind, 'pin');
  assert.ok(r.wrongPin.message.includes(broker.fingerprint), r.wrongPin.message);
  assert.equal(r.truncated.kind, 'truncated');
  assert.deepEqual(r.truncated.seen, ['one']);
});

test('abort: the call rejects, and the broker drops the job', async () => {
  const r = await inPage('abort', { pin: singleBroker.fingerprint, prefix: '/b/single' });
  assert.equal(r.whileRunning, 'RESOURCE_EXHAUSTED', 'one job per session while the long one runs');
  assert.equal(r.aborted, 'AbortError');
  assert.equal(r.next, 'next', 'the slot is free again long before the job would have ended');
});

test('client authentication with a non-extractable key imported from PEM', async () => {
  const r = await inPage('clientAuth', { pin: authBroker.fingerprint, pem: clientPem, prefix: '/b/auth' });
  assert.deepEqual(r.value, { ok: true });
  assert.equal(r.extractable, false);
  assert.equal(r.fingerprint, clientFingerprint);
  assert.equal(r.session.clientFingerprint, clientFingerprint);
  assert.equal(r.anonymous.kind, 'client-auth');
});

test('nothing went wrong in the page (uncaught errors, CSP violations)', async () => {
  const severe = (await browser.log()).filter((e) => e.level === 'SEVERE' && !/favicon\.ico/.test(e.message));
  // Refused requests the tests made on purpose show up as failed loads, not as errors of the page.
  const unexpected = severe.filter((e) => !/the server responded with a status of (401|404|409|429)/.test(e.message));
  if (unexpected.length) await browser.screenshot(join(tempDir('screenshot'), 'client-page.png'));
  assert.deepEqual(unexpected, []);
});

test('the page ran under a policy in force: an inline script is blocked', async () => {
  // Last, as it leaves a CSP report in the log that the test above must not see.
  const inline = await browser.run("const s = document.createElement('script'); s.textContent = 'window.inlineRan = true'; document.body.append(s); await new Promise((r) => setTimeout(r, 50)); return window.inlineRan === true;");
  assert.equal(inline, false, 'inline scripts are blocked');
  assert.ok((await browser.log()).some((e) => /Content Security Policy/.test(e.message)), 'and reported');
});
