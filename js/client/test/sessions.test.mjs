// A session the broker forgot (expired, or the broker restarted) is replaced by a new
// handshake, transparently and once; nothing runs twice.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { EnclaveClient, EnclaveHttpError } from '../src/index.js';
import { Broker } from './support/broker.mjs';
import { recordingFetch } from './support/fetch.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let brief;
before(async () => {
  // Sessions expire after a second of rest (the sweeper or the next lookup drops them).
  brief = await Broker.start({ args: ['--session-idle-secs', '1', '--unused-session-secs', '1'] });
});
after(() => brief?.stop());

test('an expired session is replaced by a new handshake, for execute and for streams', async () => {
  const fetch = recordingFetch();
  const c = new EnclaveClient({ serverUrl: brief.url, pin: brief.fingerprint, fetch });
  assert.equal((await c.execute('return 1')).value, 1);
  const first = c.session.sessionId;
  await sleep(2_500);
  assert.equal((await c.execute('return 2')).value, 2);
  assert.equal(c.session.handshakes, 2);
  assert.notEqual(c.session.sessionId, first);
  // The expired request was refused (401) and nothing else: one retry on the new session.
  assert.deepEqual(
    fetch.calls.map((call) => `${call.path} ${call.status}`),
    ['/v1/handshake 200', '/v1/execute 200', '/v1/execute 401', '/v1/handshake 200', '/v1/execute 200'],
  );

  await sleep(2_500);
  const events = [];
  for await (const event of c.executeStreaming("console.log('again'); return 3")) events.push(event);
  assert.deepEqual(events.map((e) => e.type), ['console', 'final']);
  assert.equal(events[1].value, 3);
  assert.equal(c.session.handshakes, 3);

  // Many requests at once after an expiry share one new handshake.
  await sleep(2_500);
  const values = await Promise.all(Array.from({ length: 6 }, (_, i) => c.execute(`return ${i}`).then((r) => r.value)));
  assert.deepEqual(values, [0, 1, 2, 3, 4, 5]);
  assert.equal(c.session.handshakes, 4, 'one new handshake for all of them');
  await c.close();
});

test('a broker restart (same key, same address) is a new handshake, transparently', async () => {
  const broker = await Broker.start();
  try {
    const c = new EnclaveClient({ serverUrl: broker.url, pin: broker.fingerprint });
    assert.equal((await c.execute('return "before"')).value, 'before');
    const fingerprint = broker.fingerprint;
    await broker.restart();
    assert.equal(broker.fingerprint, fingerprint, 'the same identity');
    assert.equal((await c.execute('return "after"')).value, 'after');
    assert.equal(c.session.handshakes, 2);
    await c.rekey(); // on the new session
    assert.equal(c.session.sendEpoch, 1);
    await c.close();
  } finally {
    await broker.stop();
  }
});

test('UNAUTHENTICATED again on the new session is not retried further', async () => {
  // A path that answers every sealed request with 401: one new handshake, then the error.
  const fetch = recordingFetch(async (url, init) => {
    if (new URL(url).pathname === '/v1/execute') {
      return new Response(JSON.stringify({ code: 'UNAUTHENTICATED', message: 'unknown or expired session' }), { status: 401 });
    }
    return globalThis.fetch(url, init);
  });
  const c = new EnclaveClient({ serverUrl: brief.url, pin: brief.fingerprint, fetch });
  await assert.rejects(c.execute('return 1'), (e) => e instanceof EnclaveHttpError && e.status === 401 && e.code === 'UNAUTHENTICATED');
  assert.deepEqual(fetch.calls.map((call) => call.path), ['/v1/handshake', '/v1/execute', '/v1/handshake', '/v1/execute']);
});
