// The hand-written types: `tsc` (Debian's node-typescript) checks them, strict, with a typed
// usage file that must compile and @ts-expect-error lines that must not; and every value
// the modules export is declared, and every declared value exists.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { clientRoot, reactRoot } from './support/paths.mjs';

const tsc = process.env.TSC || 'tsc';

function typecheck(dir) {
  const run = spawnSync(tsc, ['-p', dir], { encoding: 'utf8' });
  if (run.error) assert.fail(`running ${tsc}: ${run.error.message} (Debian: apt-get install node-typescript)`);
  assert.equal(run.status, 0, `tsc -p ${dir}:\n${run.stdout}${run.stderr}`);
}

test('tsc -p js/client: the declarations and the typed usage compile, the mistakes do not', () => {
  typecheck(clientRoot);
});

test('tsc -p js/react: the React declarations and a typed TSX usage', () => {
  typecheck(reactRoot);
});

/** Value names a .d.ts exports: `export declare class|function|const X` and `export { a, b } from`. */
function declaredValues(file) {
  const text = readFileSync(file, 'utf8');
  const names = new Set();
  for (const m of text.matchAll(/^export declare (?:class|function|const) (\w+)/gm)) names.add(m[1]);
  for (const m of text.matchAll(/^export \{([^}]*)\} from/gm)) {
    for (const name of m[1].split(',').map((s) => s.trim()).filter(Boolean)) names.add(name);
  }
  return names;
}

for (const [dts, module] of [
  ['index.d.ts', '../src/index.js'],
  ['protocol.d.ts', '../src/protocol.js'],
]) {
  test(`${dts} declares exactly what ${module.slice(3)} exports`, async () => {
    const runtime = new Set(Object.keys(await import(module)));
    const declared = declaredValues(join(clientRoot, dts));
    assert.deepEqual([...runtime].filter((n) => !declared.has(n)).sort(), [], 'exported but not declared');
    assert.deepEqual([...declared].filter((n) => !runtime.has(n)).sort(), [], 'declared but not exported');
  });
}
