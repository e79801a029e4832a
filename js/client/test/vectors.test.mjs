// The protocol code against proto/testdata/vectors-*.json (test/vectors-check.mjs).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as lib from '../src/protocol.js';
import { makeChecks } from './vectors-check.mjs';
import { repoRoot } from './support/paths.mjs';

const vectors = (file) => JSON.parse(readFileSync(`${repoRoot}/proto/testdata/${file}`, 'utf8'));

test('pieces: HKDF, pins, protobuf, JSON mapping, NDJSON, events', async () => {
  const checks = makeChecks(lib);
  await checks.checkPieces();
  assert.ok(checks.count() > 50, `${checks.count()} checks`);
});

for (const file of ['vectors-x25519.json', 'vectors-p256.json']) {
  test(`known-answer vectors: ${file}`, async () => {
    const checks = makeChecks(lib);
    const summary = await checks.checkVectorFile(file, vectors(file));
    assert.ok(checks.count() > 100, `${summary}: ${checks.count()} checks`);
  });
}
