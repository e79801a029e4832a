// EnclaveClient against the real broker binary, on both curves: results, events, job
// errors with their codes and lines, limits and levels, concurrency, rekeying, close,
// abort, and what an attacker on the path can do to answers (cut, drop, repeat, flip).

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  EnclaveClient, EnclaveError, EnclaveHttpError, EnclaveJobError, EnclaveProtocolError, ERROR_CODES,
} from '../src/index.js';
import { Broker } from './support/broker.mjs';
import { editingFetch, flipCiphertext, recordingFetch } from './support/fetch.mjs';

let broker;
before(async () => {
  broker = await Broker.start();
});
after(async () => {
  await broker?.stop();
});

const client = (options = {}) => new EnclaveClient({ serverUrl: broker.url, pin: broker.fingerprint, ...options });

async function collect(iterable) {
  const events = [];
  for await (const event of iterable) events.push(event);
  return events;
}

async function rejects(promise, check) {
  try {
    await promise;
  } catch (e) {
    check(e);
    return e;
  }
  assert.fail('expected a rejection');
}


for (const curve of ['X25519', 'P-256']) {
  describe(`over ${curve}`, () => {
    let c;
    before(() => {
      c = client({ curve });
    });
    after(() => c.close());

    test('connect: the pinned broker, a session over the chosen curve', async () => {
      const info = await c.connect();
      assert.equal(info.fingerprint, broker.fingerprint);
      assert.equal(info.curve, curve);
      assert.equal(c.curve, curve);
      assert.match(info.sessionId, /^[0-9a-f]{32}$/);
      assert.equal(info.handshakes, 1);
      assert.equal(info.clientFingerprint, null);
      assert.deepEqual([info.sendEpoch, info.recvEpoch], [0, 0]);
    });

    test('execute: value, console lines in order, statistics; input reaches the script', async () => {
      const r = await c.execute("console.log('sum', 1 + 2);\nconsole.warn('careful');\nreturn { sum: input.a + input.b, echoed: input };", {
        input: { a: 40, b: 2, s: 'é' },
      });
      assert.deepEqual(r.value, { sum: 42, echoed: { a: 40, b: 2, s: 'é' } });
      assert.equal(JSON.parse(r.resultJson).sum, 42);
      assert.deepEqual(r.console, [
        { level: 'log', text: 'sum 3' },
        { level: 'warn', text: 'careful' },
      ]);
      assert.ok(r.stats.durationUs > 0, JSON.stringify(r.stats));
      assert.equal(r.stats.toolCalls, 0);
      assert.equal(r.stats.consoleBytes > 0, true);
      assert.equal((await c.execute('return undefined')).value, null, 'undefined comes back as null');
    });

    test('executeStreaming: console, tool_call, tool_result, then exactly one final', async () => {
      const events = await collect(
        c.executeStreaming("console.log('before');\nconst r = await callTool('echo', { word: 'sealed', n: 20 });\nconsole.info('after', r.word);\nreturn r.n + 1;"),
      );
      assert.deepEqual(
        events.map((e) => e.type),
        ['console', 'tool_call', 'tool_result', 'console', 'final'],
      );
      assert.deepEqual(events[0], { type: 'console', level: 'log', text: 'before' });
      const [call, result] = [events[1], events[2]];
      assert.equal(call.name, 'echo');
      assert.deepEqual(call.args, { word: 'sealed', n: 20 });
      assert.equal(typeof call.callId, 'number');
      assert.deepEqual(result, { type: 'tool_result', callId: call.callId, name: 'echo', isError: false });
      assert.deepEqual(events[3], { type: 'console', level: 'info', text: 'after sealed' });
      assert.equal(events[4].value, 21);
      assert.equal(events[4].stats.toolCalls, 1);
    });

    test('a script error: EnclaveJobError with its code, line and name; the stream ends with an error event', async () => {
      const code = "console.log('reached');\nconst o = null;\no.boom;\nreturn 1;";
      const e = await rejects(c.execute(code), (e) => assert.ok(e instanceof EnclaveJobError, String(e)));
      assert.ok(e instanceof EnclaveError);
      assert.equal(e.name, 'EnclaveJobError');
      assert.equal(e.code, 'SCRIPT_ERROR');
      assert.equal(e.line, 3);
      assert.equal(e.errorName, 'TypeError');
      assert.match(e.message, /^SCRIPT_ERROR: TypeError: .*\(line 3\)$/);
      assert.deepEqual(e.console, [{ level: 'log', text: 'reached' }]);
      assert.ok(e.stats && e.stats.durationUs > 0);

      const events = await collect(c.executeStreaming(code));
      assert.deepEqual(events.map((ev) => ev.type), ['console', 'error']);
      const last = events[1];
      assert.equal(last.code, 'SCRIPT_ERROR');
      assert.equal(last.line, 3);
      assert.equal(last.errorName, 'TypeError');
      assert.ok(last.stats);
    });

    test('limits and codes: TIMEOUT, MEMORY_LIMIT, TOOL_CALL_LIMIT, SYNTAX_ERROR', async () => {
      const timeout = await rejects(c.execute('while (true) {}', { limits: { timeoutMs: 300 } }), () => {});
      assert.equal(timeout.code, 'TIMEOUT', String(timeout));
      const memory = await rejects(
        c.execute('const keep = [];\nfor (;;) keep.push(new Array(1 << 16).fill(7));', { limits: { memoryBytes: 8 << 20 } }),
        () => {},
      );
      assert.equal(memory.code, 'MEMORY_LIMIT', String(memory));
      const tools = await rejects(c.execute("await callTool('echo', {});\nawait callTool('echo', {});", { limits: { maxToolCalls: 1 } }), () => {});
      assert.equal(tools.code, 'TOOL_CALL_LIMIT', String(tools));
      const syntax = await rejects(c.execute('return (;'), () => {});
      assert.equal(syntax.code, 'SYNTAX_ERROR', String(syntax));
      assert.ok(ERROR_CODES.includes(syntax.code));
    });
  });
}

test('the level reaches the broker: 11 tool calls are over STRICT (10) and within SECURE (50)', async () => {
  const c = client();
  const code = "for (let i = 0; i < 11; i++) await callTool('echo', { i });\nreturn 'done';";
  const strict = await rejects(c.execute(code, { level: 'STRICT' }), () => {});
  assert.equal(strict.code, 'TOOL_CALL_LIMIT');
  assert.equal((await c.execute(code, { level: 'SECURE' })).value, 'done');
  const strictByDefault = client({ level: 'STRICT' });
  assert.equal((await rejects(strictByDefault.execute(code), () => {})).code, 'TOOL_CALL_LIMIT');
  assert.throws(() => client({ level: 'LOOSE' }), /level must be one of/);
  await assert.rejects(c.execute('return 1', { limits: { timeoutMs: -1 } }), /non-negative integer/);
  await assert.rejects(c.execute('return 1', { limits: { timeout: 5 } }), /unknown limit/);
  await c.close();
});

test('concurrent requests share one session', async () => {
  const c = client();
  const units = Array.from({ length: 8 }, (_, i) => c.execute(`return ${i} * 2`).then((r) => r.value));
  const streams = Array.from({ length: 4 }, (_, i) =>
    collect(c.executeStreaming(`console.log('s${i}'); return await callTool('echo', { i: ${i} });`)).then((events) => events.at(-1).value.i),
  );
  assert.deepEqual(await Promise.all(units), [0, 2, 4, 6, 8, 10, 12, 14]);
  assert.deepEqual(await Promise.all(streams), [0, 1, 2, 3]);
  assert.equal(c.session.handshakes, 1, 'one handshake for all of them');
  await c.close();
});

test('no pin, no connection: the error says where the fingerprint comes from', () => {
  for (const pin of [undefined, null, '', '   ']) {
    assert.throws(
      () => new EnclaveClient({ serverUrl: broker.url, pin }),
      (e) => e instanceof EnclaveProtocolError && e.kind === 'pin' && /fingerprint/.test(e.message) && /enclave-broker fingerprint/.test(e.message),
    );
  }
  assert.throws(() => new EnclaveClient({ serverUrl: broker.url, pin: 'sha256:abc' }), /invalid pin/);
  assert.throws(() => new EnclaveClient({ serverUrl: broker.url, pin: broker.fingerprint, curve: 'P-384' }), /curve must be/);
  assert.throws(() => new EnclaveClient({ pin: broker.fingerprint }), /serverUrl/);
  assert.throws(() => new EnclaveClient({ serverUrl: broker.url, pin: broker.fingerprint, keyProvider: {} }), /keyProvider/);
  assert.throws(() => new EnclaveClient({ serverUrl: broker.url, pin: broker.fingerprint, rekey: { records: 3 } }), /unknown rekey setting/);
  assert.throws(() => new EnclaveClient({ serverUrl: broker.url, pin: broker.fingerprint, rekey: { maxRecords: -1 } }), /non-negative/);
});

test('a wrong pin is refused before anything is sent', async () => {
  const fetch = recordingFetch();
  const wrong = `sha256:${'0'.repeat(64)}`;
  const c = new EnclaveClient({ serverUrl: broker.url, pin: wrong, fetch });
  const e = await rejects(c.execute('return 1'), () => {});
  assert.ok(e instanceof EnclaveProtocolError, String(e));
  assert.equal(e.kind, 'pin');
  assert.ok(e.message.includes(broker.fingerprint) && e.message.includes(wrong), e.message);
  assert.equal(c.session, null);
  assert.deepEqual(fetch.calls.map((call) => call.path), ['/v1/handshake'], 'only the ClientHello went out');
  // Upper-case hex is the same pin.
  const upper = client({ pin: `sha256:${broker.fingerprint.slice(7).toUpperCase()}` });
  assert.equal((await upper.execute('return 7')).value, 7);
});

test('automatic rekey at the policy limits, under concurrent requests', async () => {
  const c = client({ rekey: { maxRecords: 3 } });
  for (let i = 0; i < 10; i++) assert.equal((await c.execute(`return ${i}`)).value, i);
  const info = c.session;
  assert.equal(info.handshakes, 1);
  assert.ok(info.rekeys >= 3, JSON.stringify(info));
  assert.equal(info.sendEpoch, info.rekeys, 'each rekey moved the sending key once');
  assert.equal(info.recvEpoch, info.rekeys, 'and the broker moved its own');

  const busy = client({ rekey: { maxRecords: 2 } });
  const values = await Promise.all(
    Array.from({ length: 16 }, (_, i) => (i % 4 === 0 ? collect(busy.executeStreaming(`return ${i}`)).then((e) => e.at(-1).value) : busy.execute(`return ${i}`).then((r) => r.value))),
  );
  assert.deepEqual(values, Array.from({ length: 16 }, (_, i) => i));
  assert.equal(busy.session.handshakes, 1);
  assert.ok(busy.session.rekeys >= 1);

  const byAge = client({ rekey: { maxAgeMs: 0 } });
  await byAge.execute('return 1');
  await byAge.execute('return 2');
  assert.ok(byAge.session.rekeys >= 2, 'an epoch older than maxAgeMs is rotated');
  for (const x of [c, busy, byAge]) await x.close();
});

test('rekey() moves both directions now', async () => {
  const c = client();
  await c.execute('return 1');
  await c.rekey();
  await c.rekey();
  assert.deepEqual([c.session.sendEpoch, c.session.recvEpoch, c.session.rekeys], [2, 2, 2]);
  assert.equal((await c.execute('return 2')).value, 2);
  await c.close();
});

test('close() ends the session at the broker; the next request starts a new one', async () => {
  const fetch = recordingFetch();
  const c = client({ fetch });
  await c.execute('return 1');
  const sealed = fetch.calls.find((call) => call.path === '/v1/execute').body;
  const before = c.session.sessionId;
  await c.close();
  assert.equal(c.session, null);
  // A request of the closed session (here: the same record again) is now an unknown session,
  // not a replay: the broker forgot it.
  const replay = await globalThis.fetch(`${broker.url}/v1/execute`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(sealed) });
  assert.equal(replay.status, 401);
  assert.equal((await replay.json()).code, 'UNAUTHENTICATED');
  assert.equal((await c.execute('return 2')).value, 2);
  assert.notEqual(c.session.sessionId, before);
  assert.equal(c.session.handshakes, 2);
  await c.close();
  await c.close(); // twice is fine
});

test('a request the broker refuses as a replay (ABORTED) is re-sealed, and runs once', async () => {
  let first = null;
  let replayed = false;
  const fetch = recordingFetch(async (url, init) => {
    if (new URL(url).pathname === '/v1/execute') {
      if (!first) first = init.body;
      else if (!replayed) {
        replayed = true;
        init = { ...init, body: first }; // the attacker's replay goes out instead of the request
      }
    }
    return globalThis.fetch(url, init);
  });
  const c = client({ fetch });
  assert.equal((await c.execute('return "one"')).value, 'one');
  assert.equal((await c.execute('return "two"')).value, 'two');
  assert.deepEqual(fetch.calls.filter((call) => call.path === '/v1/execute').map((call) => call.status), [200, 409, 200]);
  assert.equal(c.session.handshakes, 1);
  await c.close();
});

describe('abort', () => {
  // One job per session at a time: a second job runs only once the broker has let go of
  // the first, which is how these tests see that an abort stopped the job at the broker.
  let single;
  before(async () => {
    single = await Broker.start({ args: ['--max-jobs-per-session', '1'] });
  });
  after(() => single?.stop());
  const long = "console.log('started');\nconst until = Date.now() + 20000;\nwhile (Date.now() < until) {}\nreturn 1;";

  /** Runs `return "next"` on `c` as soon as the broker frees the session's job slot (within 5 s). */
  async function nextJob(c) {
    const deadline = Date.now() + 5_000;
    for (;;) {
      try {
        return (await c.execute('return "next"')).value;
      } catch (e) {
        if (!(e instanceof EnclaveHttpError && e.code === 'RESOURCE_EXHAUSTED') || Date.now() > deadline) throw e;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  test('an aborted signal sends nothing', async () => {
    const fetch = recordingFetch();
    const c = new EnclaveClient({ serverUrl: single.url, pin: single.fingerprint, fetch });
    const controller = new AbortController();
    controller.abort();
    await assert.rejects(c.execute('return 1', { signal: controller.signal }), { name: 'AbortError' });
    await assert.rejects(collect(c.executeStreaming('return 1', { signal: controller.signal })), { name: 'AbortError' });
    assert.equal(fetch.calls.length, 0);
    const reason = new Error('mine');
    await assert.rejects(c.execute('return 1', { signal: AbortSignal.abort(reason) }), (e) => e === reason);
  });

  test('abort during execute: rejects at once, and the broker drops the job', async () => {
    const c = new EnclaveClient({ serverUrl: single.url, pin: single.fingerprint });
    await c.connect();
    const controller = new AbortController();
    const run = c.execute(long, { signal: controller.signal });
    await new Promise((r) => setTimeout(r, 300));
    // The limit holds while the long job runs (so the check below can fail).
    const refused = await rejects(c.execute('return 2'), () => {});
    assert.equal(refused.code, 'RESOURCE_EXHAUSTED', String(refused));
    assert.equal(refused.status, 429);
    controller.abort();
    await assert.rejects(run, { name: 'AbortError' });
    assert.equal(await nextJob(c), 'next', 'the session runs the next job long before the aborted one would have ended');
    assert.equal(c.session.handshakes, 1);
    await c.close();
  });

  test('abort during a stream, and leaving the loop early, stop the job', async () => {
    const c = new EnclaveClient({ serverUrl: single.url, pin: single.fingerprint });
    const controller = new AbortController();
    const seen = [];
    await assert.rejects(
      (async () => {
        for await (const event of c.executeStreaming(long, { signal: controller.signal })) {
          seen.push(event.type);
          controller.abort();
        }
      })(),
      { name: 'AbortError' },
    );
    assert.deepEqual(seen, ['console']);
    assert.equal(await nextJob(c), 'next');

    for await (const event of c.executeStreaming(long)) {
      assert.deepEqual(event, { type: 'console', level: 'log', text: 'started' });
      break;
    }
    assert.equal(await nextJob(c), 'next');
    await c.close();
  });
});

describe('an attacker on the path', () => {
  const stream = "console.log('one');\nconsole.log('two');\nreturn 3;";

  test('a stream cut before its final event throws (truncated), after the events it had', async () => {
    const c = client({ fetch: editingFetch('/v1/execute/stream', (lines) => ({ lines: lines.slice(0, 2) })) });
    const seen = [];
    const e = await rejects(
      (async () => {
        for await (const event of c.executeStreaming(stream)) seen.push(event.text);
      })(),
      () => {},
    );
    assert.ok(e instanceof EnclaveProtocolError, String(e));
    assert.equal(e.kind, 'truncated');
    assert.match(e.message, /without STREAM_FINAL/);
    assert.deepEqual(seen, ['one', 'two']);
  });

  test('a connection that breaks mid-stream, or the broker\'s error line, is truncation too', async () => {
    const broken = client({ fetch: editingFetch('/v1/execute/stream', (lines) => ({ lines: lines.slice(0, 1), fail: new TypeError('terminated') })) });
    await assert.rejects(collect(broken.executeStreaming(stream)), (e) => e.kind === 'truncated' && /connection failed: terminated/.test(e.message));
    const errorLine = JSON.stringify({ error: { code: 'UNAVAILABLE', message: 'gone' } });
    const ended = client({ fetch: editingFetch('/v1/execute/stream', (lines) => ({ lines: [lines[0], errorLine] })) });
    await assert.rejects(collect(ended.executeStreaming(stream)), (e) => e.kind === 'truncated' && /UNAVAILABLE: gone/.test(e.message));
  });

  test('dropped, repeated or altered records are refused', async () => {
    const dropped = client({ fetch: editingFetch('/v1/execute/stream', (lines) => ({ lines: [lines[0], ...lines.slice(2)] })) });
    await assert.rejects(collect(dropped.executeStreaming(stream)), (e) => e.kind === 'stream' && /out of order/.test(e.message));
    const repeated = client({ fetch: editingFetch('/v1/execute/stream', (lines) => ({ lines: [...lines, lines.at(-1)] })) });
    await assert.rejects(collect(repeated.executeStreaming(stream)), (e) => e.kind === 'stream' && /after STREAM_FINAL/.test(e.message));
    const flipped = client({ fetch: editingFetch('/v1/execute/stream', (lines) => ({ lines: [flipCiphertext(lines[0]), ...lines.slice(1)] })) });
    await assert.rejects(collect(flipped.executeStreaming(stream)), (e) => e instanceof EnclaveProtocolError && e.kind === 'record');
    const unary = client({ fetch: editingFetch('/v1/execute', (lines) => ({ lines: [flipCiphertext(lines[0])] })) });
    await assert.rejects(unary.execute('return 1'), (e) => e instanceof EnclaveProtocolError && e.kind === 'record' && /authentication failed/.test(e.message));
    // Another request's answer (here: the first answer again for the second request).
    let kept = null;
    const swapped = client({
      fetch: editingFetch('/v1/execute', (lines, n) => {
        if (n === 0) kept = lines;
        return { lines: n === 1 ? kept : lines };
      }),
    });
    assert.equal((await swapped.execute('return 1')).value, 1);
    await assert.rejects(swapped.execute('return 2'), (e) => e.kind === 'record');
  });
});

test('HTTP and network failures keep their status', async () => {
  const missing = new EnclaveClient({ serverUrl: `${broker.url}/nowhere`, pin: broker.fingerprint });
  const notFound = await rejects(missing.connect(), () => {});
  assert.ok(notFound instanceof EnclaveHttpError, String(notFound));
  assert.equal(notFound.status, 404);
  assert.equal(notFound.code, 'NOT_FOUND');
  assert.match(notFound.message, /^NOT_FOUND \(HTTP 404\): /);

  const net = await import('node:net');
  const port = await new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
  const closed = new EnclaveClient({ serverUrl: `http://127.0.0.1:${port}`, pin: broker.fingerprint });
  const unreachable = await rejects(closed.execute('return 1'), () => {});
  assert.ok(unreachable instanceof EnclaveHttpError, String(unreachable));
  assert.equal(unreachable.status, 0);
  assert.equal(unreachable.code, 'UNAVAILABLE');
});
