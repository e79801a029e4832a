// <SecureCodeEditor> and useEnclave in headless Chromium, with Debian's React 18 bundled by
// Debian's esbuild, against the real broker: the indicator, the editor, "Execute Securely",
// console lines streamed while the job runs, the result, a job error with its line,
// cancel, a wrong or missing pin (red, with the reason), and the hook on its own.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { Broker, tempDir } from '../../client/test/support/broker.mjs';
import { startServer } from '../../client/test/support/server.mjs';
import { Browser, rgb } from '../../client/test/support/webdriver.mjs';
import { repoRoot } from '../../client/test/support/paths.mjs';

const GREEN = [34, 197, 94];
const RED = [239, 68, 68];

let broker;
let server;
let browser;
let shots;

/** esbuild (Debian's) bundles the test app with React from /usr/share/nodejs, as an application would. */
function bundle(outDir) {
  const esbuild = process.env.ESBUILD || 'esbuild';
  const run = spawnSync(
    esbuild,
    [
      'js/react/test/browser/app.js',
      '--bundle',
      '--format=esm',
      '--minify',
      `--outfile=${join(outDir, 'react-app.js')}`,
      '--define:process.env.NODE_ENV="production"',
      '--alias:@enclave-vm/react=./js/react/src/index.js',
      '--alias:@enclave-vm/client=./js/client/src/index.js',
      '--log-level=warning',
    ],
    { cwd: repoRoot, encoding: 'utf8', env: { ...process.env, NODE_PATH: process.env.REACT_NODE_PATH || '/usr/share/nodejs' } },
  );
  if (run.error) assert.fail(`running ${esbuild}: ${run.error.message} (Debian: apt-get install esbuild node-react node-react-dom)`);
  assert.equal(run.status, 0, `esbuild failed:\n${run.stdout}${run.stderr}`);
}

before(async () => {
  const out = tempDir('react-bundle');
  shots = tempDir('react-screenshots');
  bundle(out);
  // One job per session: the Cancel test sees the broker let go of the cancelled job.
  broker = await Broker.start({ args: ['--max-jobs-per-session', '1'] });
  server = await startServer({ brokers: { default: broker.url }, bundleDir: out });
  browser = await Browser.start();
});

after(async () => {
  await browser?.quit();
  await server?.close();
  await broker?.stop();
});

async function open(query) {
  await browser.goto(`${server.url}/react.html?${new URLSearchParams(query)}`);
}

async function waitStatus(state) {
  return browser.waitFor(`the indicator to be ${state}`, async () => {
    const now = await browser.attribute('.enclave-status', 'data-state');
    if (now === state) return browser.text('.enclave-status-text');
    if (now === 'error' && state !== 'error') throw new Error(`error: ${await browser.text('.enclave-status-text')}`);
    return undefined;
  });
}

const OUTPUT = "return [...document.querySelectorAll('.enclave-line')].map((l) => ({ kind: l.dataset.kind, level: l.dataset.level, text: l.querySelector('.enclave-text').textContent }));";

/** Types `code`, clicks Execute Securely, waits for the result; notes whether console lines showed while it ran. */
async function runCode(code) {
  await browser.typeInto('.enclave-code', code);
  assert.equal(await browser.property('.enclave-code', 'value'), code, 'the editor holds what was typed');
  await browser.click('.enclave-execute');
  let streamed = false;
  const state = await browser.waitFor('the result', async () => {
    const s = await browser.attribute('.enclave-result', 'data-state');
    if (s === 'running' && (await browser.run(OUTPUT)).some((l) => l.kind === 'console')) streamed = true;
    return ['ok', 'error', 'cancelled'].includes(s) ? s : undefined;
  }, 60_000);
  return { state, text: await browser.text('.enclave-result-body'), lines: await browser.run(OUTPUT), streamed };
}

test('SecureCodeEditor: green "Encrypted Connection", then the sample runs', async () => {
  await open({ pin: broker.fingerprint });
  assert.equal(await waitStatus('connected'), 'Encrypted Connection');
  assert.deepEqual(rgb(await browser.css('.enclave-dot', 'background-color')), GREEN);
  assert.equal(await browser.text('.enclave-execute'), 'Execute Securely');
  assert.equal(await browser.property('.enclave-execute', 'disabled'), false);
  await browser.click('.enclave-execute');
  const state = await browser.waitFor('the sample result', async () => {
    const s = await browser.attribute('.enclave-result', 'data-state');
    return s === 'ok' || s === 'error' ? s : undefined;
  });
  assert.equal(state, 'ok', await browser.text('.enclave-result'));
  assert.deepEqual(JSON.parse(await browser.text('.enclave-result-body')), { doubled: 42 });
  assert.deepEqual(await browser.run('return window.lastResult;'), { doubled: 42 });
  assert.deepEqual(await browser.run('return window.editorEvents;'), ['console', 'tool_call', 'tool_result', 'final']);
  await browser.screenshot(join(shots, 'editor.png'));
});

test('console lines stream while the job runs; tool calls show; the result is pretty-printed', async () => {
  const code = [
    "console.log('first line', 1 + 1);",
    "const echoed = await callTool('echo', { word: 'sealed' });",
    "console.warn('second line:', echoed.word);",
    'const until = Date.now() + 1500;',
    'while (Date.now() < until) {}',
    'return { echoed, n: 21 };',
  ].join('\n');
  const { state, text, lines, streamed } = await runCode(code);
  assert.equal(state, 'ok', text);
  assert.deepEqual(JSON.parse(text), { echoed: { word: 'sealed' }, n: 21 });
  assert.match(text, /\n {2}"echoed"/, 'pretty-printed');
  assert.deepEqual(
    lines.filter((l) => l.kind === 'console').map((l) => [l.level, l.text]),
    [
      ['log', 'first line 2'],
      ['warn', 'second line: sealed'],
    ],
  );
  const tools = lines.filter((l) => l.kind === 'tool').map((l) => l.text);
  assert.equal(tools.length, 2);
  assert.match(tools[0], /callTool\("echo", \{"word":"sealed"\}\)/);
  assert.match(tools[1], /echo answered/);
  assert.ok(streamed, 'console lines appeared before the result (streamed, not buffered)');
});

test('a job error shows its code, name and line; onError gets an EnclaveJobError', async () => {
  const { state, text } = await runCode('const a = 1;\nnull.boom;\nreturn a;');
  assert.equal(state, 'error');
  assert.equal(await browser.attribute('.enclave-result', 'data-code'), 'SCRIPT_ERROR');
  assert.equal(await browser.attribute('.enclave-result', 'data-line'), '2');
  assert.match(text, /^SCRIPT_ERROR: TypeError: .*\nat line 2$/s);
  assert.deepEqual(await browser.run('return window.lastError;'), { name: 'EnclaveJobError', code: 'SCRIPT_ERROR', line: 2 });
});

test('Cancel stops a running job', async () => {
  await browser.typeInto('.enclave-code', "console.log('working');\nconst until = Date.now() + 20000;\nwhile (Date.now() < until) {}");
  await browser.click('.enclave-execute');
  await browser.waitFor('the job to start', async () => ((await browser.run(OUTPUT)).length ? true : undefined));
  assert.equal(await browser.text('.enclave-execute'), 'Executing…');
  assert.equal(await browser.property('.enclave-execute', 'disabled'), true);
  await browser.click('.enclave-cancel');
  const state = await browser.waitFor('cancelled', async () => ((await browser.attribute('.enclave-result', 'data-state')) === 'cancelled' ? 'cancelled' : undefined));
  assert.equal(state, 'cancelled');
  assert.equal(await browser.text('.enclave-result-body'), 'Cancelled: the job was stopped.');
  assert.equal(await browser.property('.enclave-execute', 'disabled'), false, 'ready for the next run');
  // The broker runs one job per session here: the next run works only once it dropped the
  // cancelled one (a few tries, for the moment it takes to notice the closed request).
  let next;
  for (let i = 0; i < 50; i++) {
    next = await runCode('return "next"');
    if (next.state === 'ok' || !/RESOURCE_EXHAUSTED/.test(next.text)) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(next.state, 'ok', next.text);
  assert.equal(JSON.parse(next.text), 'next');
});

test('P-256 works the same', async () => {
  await open({ pin: broker.fingerprint, curve: 'P-256' });
  await waitStatus('connected');
  const { state, text } = await runCode("console.info('over P-256');\nreturn [1, 2, 3];");
  assert.equal(state, 'ok', text);
  assert.deepEqual(JSON.parse(text), [1, 2, 3]);
});

test('a wrong pin: red, with the reason, and no executing', async () => {
  const wrong = `sha256:${'0'.repeat(64)}`;
  await open({ pin: wrong });
  const text = await waitStatus('error');
  assert.match(text, /pin mismatch/);
  assert.ok(text.includes(broker.fingerprint) && text.includes(wrong), text);
  assert.deepEqual(rgb(await browser.css('.enclave-dot', 'background-color')), RED);
  assert.deepEqual(rgb(await browser.css('.enclave-status', 'color')), RED);
  assert.equal(await browser.property('.enclave-execute', 'disabled'), true);
  await browser.screenshot(join(shots, 'wrong-pin.png'));
});

test('no pin: red at once, saying where the fingerprint comes from', async () => {
  await open({ pin: '' });
  const text = await waitStatus('error');
  assert.match(text, /needs a pin/);
  assert.match(text, /enclave-broker fingerprint/);
  assert.equal(await browser.property('.enclave-execute', 'disabled'), true);
});

test('useEnclave on its own: status, session, execute and executeStreaming', async () => {
  await open({ pin: broker.fingerprint, probe: '1' });
  await browser.waitFor('the hook to connect', async () => ((await browser.attribute('#probe', 'data-status')) === 'connected' ? true : undefined));
  assert.equal(await browser.text('#probe-session'), `X25519 ${broker.fingerprint}`);
  await browser.click('#probe-run');
  const out = JSON.parse(await browser.waitFor('the probe output', async () => (await browser.text('#probe-out')) || undefined));
  assert.deepEqual(out.value, { sum: 42 });
  assert.deepEqual(out.types, ['console', 'final']);
  assert.equal(out.session.handshakes, 1);
  // reconnect() makes a new client and a new session.
  const before = out.session.sessionId;
  await browser.click('#probe-reconnect');
  await browser.waitFor('the hook to reconnect', async () => ((await browser.attribute('#probe', 'data-status')) === 'connected' ? true : undefined));
  await browser.click('#probe-run');
  const again = await browser.waitFor('the second output', async () => {
    const o = JSON.parse((await browser.text('#probe-out')) || '{}');
    return o.session && o.session.sessionId !== before ? o : undefined;
  });
  assert.deepEqual(again.value, { sum: 42 });
});

test('no errors in the page (React, CSP)', async () => {
  const severe = (await browser.log()).filter((e) => e.level === 'SEVERE' && !/favicon\.ico/.test(e.message));
  // A run refused while the broker still held a cancelled job (the Cancel test) is a failed
  // load, not an error of the page.
  assert.deepEqual(severe.filter((e) => !/the server responded with a status of 429/.test(e.message)), []);
});
