// Typed uses of the package, as the README shows them: must compile under `tsc -p js/client`
// (strict). Each @ts-expect-error line must NOT compile: tsc fails if one does.
import {
  EnclaveClient,
  EnclaveHttpError,
  EnclaveJobError,
  EnclaveProtocolError,
  generateClientKey,
  importClientKey,
  curveSupported,
  type EnclaveEvent,
  type ErrorCode,
  type KeyProvider,
  type SessionInfo,
} from '@enclave-vm/client';
import { Suite, startHandshake, toHex } from '@enclave-vm/client/protocol';

export async function basics(pin: string): Promise<number> {
  const client = new EnclaveClient({ serverUrl: 'http://127.0.0.1:7780', pin, curve: 'X25519' });
  const info: SessionInfo = await client.connect();
  const handshakes: number = info.handshakes;

  const { value, console: lines, stats } = await client.execute<{ sum: number }>('return { sum: 1 + 1 }', {
    input: { a: 1 },
    level: 'STRICT',
    limits: { timeoutMs: 1000, memoryBytes: 16n << 20n, maxToolCalls: 3 },
    signal: new AbortController().signal,
  });
  const sum: number = value.sum;
  const first: string | undefined = lines[0]?.text;
  void first;

  for await (const ev of client.executeStreaming('console.log(1); return 2')) {
    switch (ev.type) {
      case 'console':
        void (ev.level === 'warn' ? ev.text : '');
        break;
      case 'tool_call':
        void (ev.name + ev.argsJson + ev.callId);
        break;
      case 'tool_result':
        void (ev.isError ? ev.callId : 0);
        break;
      case 'final':
        void ev.value;
        break;
      case 'error': {
        const code: ErrorCode = ev.code;
        const line: number | null = ev.line;
        void [code, line, ev.stats?.durationUs];
        break;
      }
    }
  }
  await client.close();
  return sum + handshakes + stats.durationUs;
}

export async function errors(client: EnclaveClient): Promise<string> {
  try {
    await client.execute('while (true) {}', { limits: { timeoutMs: 100 } });
    return 'ran';
  } catch (e) {
    if (e instanceof EnclaveJobError) return `${e.code} at ${e.line ?? '?'} (${e.errorName ?? ''}) ${e.console.length}`;
    if (e instanceof EnclaveProtocolError) return e.kind === 'truncated' || e.kind === 'pin' ? e.message : e.kind;
    if (e instanceof EnclaveHttpError) return `${e.status} ${e.code}`;
    throw e;
  }
}

export async function keys(pin: string, pem: string): Promise<void> {
  const generated = await generateClientKey();
  const fromFile = await importClientKey(pem);
  const external: KeyProvider = {
    getPublicKey: () => new Uint8Array(32),
    sign: async (data: Uint8Array) => data.slice(0, 64),
  };
  for (const keyProvider of [generated, fromFile, external]) {
    const c = new EnclaveClient({ serverUrl: '', pin, curve: 'P-256', keyProvider, fetch: (url, init) => fetch(url, init) });
    await c.rekey();
  }
  const fp: string = generated.fingerprint;
  void fp;
  void (await curveSupported('X25519'));
}

export function events(e: EnclaveEvent<number>): number {
  return e.type === 'final' ? e.value : 0;
}

export async function lowLevel(pin: string): Promise<string> {
  const { hello } = await startHandshake({ pin, suite: Suite.P256 });
  return toHex(hello.clientShare);
}

// What must not compile.
export function mistakes(pin: string): void {
  // @ts-expect-error: the pin is required
  new EnclaveClient({ serverUrl: 'http://127.0.0.1:7780' });
  // @ts-expect-error: no such curve
  new EnclaveClient({ serverUrl: 'http://127.0.0.1:7780', pin, curve: 'P-384' });
  // @ts-expect-error: serverUrl is required
  new EnclaveClient({ pin });
  const client = new EnclaveClient({ serverUrl: '', pin });
  // @ts-expect-error: no such level
  void client.execute('return 1', { level: 'LOOSE' });
  // @ts-expect-error: no such limit
  void client.execute('return 1', { limits: { timeout: 5 } });
  // @ts-expect-error: code is a string
  void client.execute(() => 1);
  // @ts-expect-error: a keyProvider signs
  new EnclaveClient({ serverUrl: '', pin, keyProvider: { getPublicKey: () => new Uint8Array(32) } });
  // @ts-expect-error: the session is read-only
  client.session = null;
  const ev = {} as EnclaveEvent;
  // @ts-expect-error: only final events have a value
  void ev.value;
}
