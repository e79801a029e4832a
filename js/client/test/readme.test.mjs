// The README's example, for real: a broker whose `secrets:get` holds an API key bound to one
// host as an Authorization header, and `http:post` allowed to that host (a local server here).
// The script gets a handle; the host gets the value; the caller sees neither the value in
// events nor anything the broker did not scrub.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { EnclaveClient } from '../src/index.js';
import { Broker, tempDir } from './support/broker.mjs';

const SECRET = 'sk-live-0123456789abcdef';
let api;
let seen = [];
let broker;

before(async () => {
  api = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      seen.push({ method: req.method, url: req.url, authorization: req.headers.authorization, body: JSON.parse(body || 'null') });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ summary: `${body.length} bytes summarised` }));
    });
  });
  await new Promise((r) => api.listen(0, '127.0.0.1', r));
  const host = `127.0.0.1:${api.address().port}`;
  const dir = tempDir('readme');
  writeFileSync(join(dir, 'secrets.toml'), `api_key = "${SECRET}"\n`);
  writeFileSync(
    join(dir, 'broker.toml'),
    `[tools."secrets:get"]
file = "${join(dir, 'secrets.toml')}"

[tools."secrets:get".secrets.api_key]
hosts = ["${host}"]
inject = { header = "Authorization", format = "Bearer {}" }

[tools."http:fetch"]
allow_hosts = ["${host}"]
allow_private_ips = true
`,
  );
  broker = await Broker.start({ args: ['--config', join(dir, 'broker.toml')] });
});

after(async () => {
  await broker?.stop();
  await new Promise((r) => api.close(r));
});

const code = `
  const apiKey = await callTool('secrets:get', { key: 'api_key' });
  const response = await callTool('http:post', {
    url: input.url,
    headers: { Authorization: apiKey },
    body: { text: input.text },
  });
  console.log('status', response.status);
  return response.body;
`;

test("the README's example: secrets:get, then http:post with the handle", async () => {
  const client = new EnclaveClient({ serverUrl: broker.url, pin: broker.fingerprint, curve: 'X25519' });
  const input = { url: `http://127.0.0.1:${api.address().port}/v1/summaries`, text: 'hello' };
  const { value, console: lines, stats } = await client.execute(code, { input, level: 'SECURE', limits: { timeoutMs: 10_000 } });
  assert.deepEqual(value, { summary: '16 bytes summarised' });
  assert.deepEqual(lines, [{ level: 'log', text: 'status 200' }]);
  assert.equal(stats.toolCalls, 2);
  assert.deepEqual(seen.at(-1), { method: 'POST', url: '/v1/summaries', authorization: `Bearer ${SECRET}`, body: { text: 'hello' } });

  const events = [];
  for await (const event of client.executeStreaming(code, { input })) events.push(event);
  assert.deepEqual(events.map((e) => e.type), ['tool_call', 'tool_result', 'tool_call', 'tool_result', 'console', 'final']);
  assert.deepEqual([events[0].name, events[2].name], ['secrets:get', 'http:post']);
  const handle = events[2].args.headers.Authorization;
  assert.match(handle, /^enclave-secret:/, 'the caller sees the handle');
  assert.ok(!JSON.stringify(events).includes(SECRET), 'and never the value');
  assert.equal(seen.at(-1).authorization, `Bearer ${SECRET}`, 'while the bound host got the value');
  await client.close();
});
