#!/usr/bin/env node
// One `execute` round trip from Node: the median (and p90, mean, min) of N sequential
// `return 1` jobs on one session, after 5 of warm-up, against the broker at --server.
// Prints one JSON line; measures, asserts nothing.
//
//   node js/client/bench/roundtrip.mjs --server http://127.0.0.1:7780 --pin sha256:… [--n 50] [--curve P-256]
//
// `cargo test -p enclave-broker --test js -- --ignored --nocapture roundtrip` runs it next to
// the Rust client (enclave-client, gRPC) against one broker and prints both.

import { parseArgs } from 'node:util';
import { EnclaveClient } from '../src/index.js';

const { values } = parseArgs({
  options: {
    server: { type: 'string', default: 'http://127.0.0.1:7780' },
    pin: { type: 'string' },
    n: { type: 'string', default: '50' },
    curve: { type: 'string', default: 'X25519' },
  },
});
const n = Number(values.n);
const client = new EnclaveClient({ serverUrl: values.server, pin: values.pin, curve: values.curve });
await client.connect();
for (let i = 0; i < 5; i++) await client.execute('return 1');
const samples = [];
for (let i = 0; i < n; i++) {
  const started = process.hrtime.bigint();
  const { value } = await client.execute('return 1');
  samples.push(Number(process.hrtime.bigint() - started) / 1e6);
  if (value !== 1) throw new Error(`got ${value}`);
}
await client.close();
samples.sort((a, b) => a - b);
const at = (q) => samples[Math.min(samples.length - 1, Math.floor(q * samples.length))];
const round = (x) => Math.round(x * 1000) / 1000;
console.log(
  JSON.stringify({
    client: '@enclave-vm/client',
    node: process.version,
    curve: values.curve,
    n,
    median_ms: round(at(0.5)),
    p90_ms: round(at(0.9)),
    mean_ms: round(samples.reduce((a, b) => a + b, 0) / n),
    min_ms: round(samples[0]),
  }),
);
