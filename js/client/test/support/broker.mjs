// Starts the real `enclave-broker` binary for the tests, as the Rust tests do
// (broker/tests/playground/main.rs): loopback ports, a fresh identity key, the log line
// "broker serving … http_addr=… fingerprint=…". The binary is $ENCLAVE_BROKER_BIN (the
// cargo test that runs these tests sets it) or target/debug/enclave-broker.

import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { repoRoot } from './paths.mjs';

export function brokerBinary() {
  const bin = process.env.ENCLAVE_BROKER_BIN || join(repoRoot, 'target', 'debug', 'enclave-broker');
  if (!existsSync(bin)) {
    throw new Error(`no broker binary at ${bin}: build it (cargo build -p enclave-broker) or set ENCLAVE_BROKER_BIN`);
  }
  return bin;
}

export function tempDir(name) {
  return mkdtempSync(join(tmpdir(), `enclave-js-${name}-`));
}

const live = new Set();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

/** `enclave-broker keygen PATH`: an Ed25519 key file (PEM PKCS#8) and its fingerprint. */
export function keygen(name = 'client') {
  const path = join(tempDir('key'), `${name}.key`);
  const fingerprint = execFileSync(brokerBinary(), ['keygen', path], { encoding: 'utf8' }).trim();
  return { path, pem: readFileSync(path, 'utf8'), fingerprint };
}

export class Broker {
  /** Starts a broker; `args` are extra flags (`--allow-client`, `--session-idle-secs`, …). */
  static async start({ args = [], identity = null, httpListen = '127.0.0.1:0' } = {}) {
    const broker = new Broker();
    broker.args = args;
    broker.identity = identity ?? join(tempDir('broker'), 'broker.key');
    await broker.#spawn(httpListen);
    return broker;
  }

  async #spawn(httpListen) {
    const snapshots = process.env.ENCLAVE_SNAPSHOT_DIR || join(repoRoot, 'target', 'tmp', 'snapshots');
    const child = spawn(
      brokerBinary(),
      ['--listen', '127.0.0.1:0', '--http-listen', httpListen, '--identity', this.identity, ...this.args],
      {
        env: { ...process.env, NO_COLOR: '1', ENCLAVE_LOG: 'info', ENCLAVE_SNAPSHOT_DIR: snapshots },
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    live.add(child);
    this.child = child;
    this.lines = this.lines ?? [];
    this.exited = new Promise((resolve) => child.once('exit', resolve));
    child.once('exit', () => live.delete(child));
    const serving = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the broker did not start within 120 s:\n${this.log()}`)), 120_000);
      createInterface({ input: child.stderr }).on('line', (line) => {
        this.lines.push(line);
        if (line.includes('broker serving')) {
          const field = (name) => (line.match(new RegExp(`(?:^|\\s)${name}=("?)([^\\s"]+)\\1`)) || [])[2];
          clearTimeout(timer);
          resolve({ http: field('http_addr'), grpc: field('addr'), fingerprint: field('fingerprint') });
        }
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`the broker exited (${code}) before serving:\n${this.log()}`));
      });
    });
    const { http, grpc, fingerprint } = await serving;
    this.httpAddr = http;
    this.grpcAddr = grpc;
    this.url = `http://${http}`;
    this.fingerprint = fingerprint;
  }

  log() {
    return (this.lines ?? []).join('\n');
  }

  /** Waits (up to `ms`) for a log line matching `pattern`. */
  async waitForLog(pattern, ms = 10_000) {
    const deadline = Date.now() + ms;
    for (;;) {
      const line = this.lines.find((l) => pattern.test(l));
      if (line) return line;
      if (Date.now() > deadline) throw new Error(`no log line matching ${pattern} within ${ms} ms:\n${this.log()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async stop() {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5_000);
    await this.exited;
    clearTimeout(timer);
  }

  /** Stops the broker and starts it again: same identity, same HTTP address, no sessions. */
  async restart() {
    await this.stop();
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        await this.#spawn(this.httpAddr);
        return;
      } catch (e) {
        if (Date.now() > deadline) throw e;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }
}
