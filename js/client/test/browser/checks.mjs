// What browser.test.mjs runs inside the page (headless Chromium): the package as the
// browser loads it, ES modules from /client/, against the broker behind the test server.
// Each function resolves with a JSON-able summary the Node side asserts on.

import * as lib from '/client/protocol.js';
import { EnclaveClient, EnclaveJobError, EnclaveProtocolError, curveSupported, importClientKey } from '/client/index.js';
import { makeChecks } from '/test/vectors-check.mjs';

const here = location.origin;

export async function vectors() {
  const checks = makeChecks(lib);
  const summaries = [await checks.checkPieces()];
  for (const file of ['vectors-x25519.json', 'vectors-p256.json']) {
    const v = await (await fetch(`/vectors/${file}`)).json();
    summaries.push(await checks.checkVectorFile(file, v));
  }
  return { checks: checks.count(), summaries };
}

export async function flows({ pin, curve }) {
  const client = new EnclaveClient({ serverUrl: here, pin, curve });
  const info = await client.connect();
  const run = await client.execute("console.log('in', input.n);\nreturn { doubled: input.n * 2 };", { input: { n: 21 } });
  const events = [];
  for await (const event of client.executeStreaming("console.info('a');\nconst r = await callTool('echo', { w: 'x' });\nreturn r.w;")) events.push(event);
  let jobError = null;
  try {
    await client.execute('const a = 1;\nnull.boom;\nreturn a;');
  } catch (e) {
    jobError = { isJobError: e instanceof EnclaveJobError, code: e.code, line: e.line, errorName: e.errorName };
  }
  const concurrent = await Promise.all([1, 2, 3, 4].map((n) => client.execute(`return ${n}`).then((r) => r.value)));
  await client.rekey();
  const afterRekey = (await client.execute('return "rekeyed"')).value;
  const session = client.session;
  await client.close();
  return { supported: await curveSupported(curve), info, run, events, jobError, concurrent, afterRekey, session };
}

export async function refusals({ pin }) {
  const out = {};
  try {
    new EnclaveClient({ serverUrl: here, pin: '' });
  } catch (e) {
    out.noPin = { kind: e.kind, message: e.message };
  }
  const wrong = `sha256:${'0'.repeat(64)}`;
  try {
    await new EnclaveClient({ serverUrl: here, pin: wrong }).connect();
  } catch (e) {
    out.wrongPin = { isProtocolError: e instanceof EnclaveProtocolError, kind: e.kind, message: e.message };
  }
  // The attacker on the path cuts the stream after its first record.
  const cut = async (url, init) => {
    const response = await fetch(url, init);
    if (!url.endsWith('/v1/execute/stream')) return response;
    const first = (await response.text()).split('\n')[0];
    return new Response(`${first}\n`, { status: 200, headers: { 'content-type': 'application/x-ndjson' } });
  };
  const seen = [];
  try {
    for await (const event of new EnclaveClient({ serverUrl: here, pin, fetch: cut }).executeStreaming("console.log('one'); console.log('two'); return 3")) seen.push(event.text);
  } catch (e) {
    out.truncated = { kind: e.kind, message: e.message, seen };
  }
  return out;
}

/** Aborts a long job on a broker that runs one job per session, then runs the next one. */
export async function abort({ pin, prefix }) {
  const client = new EnclaveClient({ serverUrl: `${here}${prefix}`, pin });
  const controller = new AbortController();
  const long = client.execute('const until = Date.now() + 20000;\nwhile (Date.now() < until) {}', { signal: controller.signal });
  await new Promise((r) => setTimeout(r, 300));
  const out = {};
  try {
    await client.execute('return 0');
  } catch (e) {
    out.whileRunning = e.code; // the one slot is taken
  }
  controller.abort();
  try {
    await long;
  } catch (e) {
    out.aborted = e.name;
  }
  // The broker let go of the job: the session's one slot is free again (within a few polls).
  for (let i = 0; i < 100 && out.next === undefined; i++) {
    try {
      out.next = (await client.execute('return "next"')).value;
    } catch (e) {
      if (e.code !== 'RESOURCE_EXHAUSTED') throw e;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  await client.close();
  return out;
}

export async function clientAuth({ pin, pem, prefix }) {
  const key = await importClientKey(pem);
  const client = new EnclaveClient({ serverUrl: `${here}${prefix}`, pin, keyProvider: key, curve: 'P-256' });
  const value = (await client.execute("return await callTool('echo', { ok: true })")).value;
  const out = { value, extractable: key.privateKey.extractable, fingerprint: key.fingerprint, session: client.session };
  await client.close();
  try {
    await new EnclaveClient({ serverUrl: `${here}${prefix}`, pin }).connect();
  } catch (e) {
    out.anonymous = { kind: e.kind };
  }
  return out;
}
