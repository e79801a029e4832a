// The seed documentation's client (crypto.ts, encryption.ts and EncryptedEnclaveClient),
// verbatim except for what plain JavaScript cannot say: the TypeScript types are stripped
// (annotations, `interface EncryptedPayload`, `!`, and the `private` parameter property
// becomes an assignment), and the three files are one module, so the client's
// `import … from './crypto'` is gone. Below it, a small driver that runs it against the
// broker at process.argv[2] and prints what it saw as one JSON line. Node 20: global
// fetch, crypto.subtle and Buffer (Node 18: see the shim in the driver).
//
// Run by broker/tests/http/seed.rs; by hand: node seed_client.mjs http://127.0.0.1:7780

// ---- crypto.ts ------------------------------------------------------------------------

export async function generateKeyPair() {
return crypto.subtle.generateKey(
{
name: 'ECDH',
namedCurve: 'P-256',
},
true,
['deriveKey', 'deriveBits']
);
}
export async function deriveSharedSecret(
privateKey,
publicKey
) {
return crypto.subtle.deriveKey(
{
name: 'ECDH',
public: publicKey,
},
privateKey,
{
name: 'AES-GCM',
length: 256,
},
true,
['encrypt', 'decrypt']
);
}
export async function exportPublicKey(key) {
const exported = await crypto.subtle.exportKey('spki', key);
return Buffer.from(exported).toString('base64');
}
export async function importPublicKey(base64) {
const keyData = Buffer.from(base64, 'base64');
return crypto.subtle.importKey(
'spki',
keyData,
{
name: 'ECDH',
namedCurve: 'P-256',
},
true,
[]
);
}

// ---- encryption.ts --------------------------------------------------------------------

export async function encrypt(
key,
data
) {
const iv = crypto.getRandomValues(new Uint8Array(12));
const encoded = new TextEncoder().encode(data);
const ciphertext = await crypto.subtle.encrypt(
{
name: 'AES-GCM',
iv,
},
key,
encoded
);
return {
iv: Buffer.from(iv).toString('base64'),
ciphertext: Buffer.from(ciphertext).toString('base64'),
};
}
export async function decrypt(
key,
payload
) {
const iv = Buffer.from(payload.iv, 'base64');
const ciphertext = Buffer.from(payload.ciphertext, 'base64');
const decrypted = await crypto.subtle.decrypt(
{
name: 'AES-GCM',
iv,
},
key,
ciphertext
);
return new TextDecoder().decode(decrypted);
}

// ---- Encrypted Client -----------------------------------------------------------------

class EncryptedEnclaveClient {
keyPair = null;
sharedSecret = null;
sessionId = null;
constructor(serverUrl) { this.serverUrl = serverUrl; }
async connect() {
// Generate client key pair
this.keyPair = await generateKeyPair();
const clientPublicKey = await exportPublicKey(this.keyPair.publicKey);
// Send ClientHello
const response = await fetch(`${this.serverUrl}/handshake`, {
method: 'POST',
headers: { 'Content-Type': 'application/json' },
body: JSON.stringify({
type: 'ClientHello',
publicKey: clientPublicKey,
}),
});
const serverHello = await response.json();
// Import server public key
const serverPublicKey = await importPublicKey(serverHello.publicKey);
// Derive shared secret
this.sharedSecret = await deriveSharedSecret(
this.keyPair.privateKey,
serverPublicKey
);
this.sessionId = serverHello.sessionId;
}
async execute(code) {
if (!this.sharedSecret || !this.sessionId) {
throw new Error('Not connected. Call connect() first.');
}
// Encrypt code
const encryptedCode = await encrypt(this.sharedSecret, code);
// Send encrypted request
const response = await fetch(`${this.serverUrl}/execute`, {
method: 'POST',
headers: {
'Content-Type': 'application/json',
'X-Session-Id': this.sessionId,
},
body: JSON.stringify({
encrypted: true,
...encryptedCode,
}),
});
// Decrypt response
const encryptedResult = await response.json();
const decryptedResult = await decrypt(this.sharedSecret, encryptedResult);
return JSON.parse(decryptedResult);
}
async *executeStreaming(
code
) {
if (!this.sharedSecret || !this.sessionId) {
throw new Error('Not connected. Call connect() first.');
}
// Encrypt code
const encryptedCode = await encrypt(this.sharedSecret, code);
// Open streaming connection
const response = await fetch(`${this.serverUrl}/execute/stream`, {
method: 'POST',
headers: {
'Content-Type': 'application/json',
'X-Session-Id': this.sessionId,
},
body: JSON.stringify({
encrypted: true,
...encryptedCode,
}),
});
if (!response.body) {
throw new Error('Response body is null');
}
const reader = response.body.getReader();
const decoder = new TextDecoder();
let buffer = '';
while (true) {
const { done, value } = await reader.read();
if (done) break;
buffer += decoder.decode(value, { stream: true });
const lines = buffer.split('\n');
buffer = lines.pop() || '';
for (const line of lines) {
if (!line.trim()) continue;
const encryptedEvent = JSON.parse(line);
const decryptedEvent = await decrypt(
this.sharedSecret,
encryptedEvent
);
yield JSON.parse(decryptedEvent);
}
}
}
}

// ---- Driver (not from the seed) -------------------------------------------------------

// Node 18 (Debian's `nodejs`) has WebCrypto only as a module, not as the global the
// seed's code (written for browsers and Node 19+) uses. The seed code reads `crypto`
// when called, so providing the global here, before any call, is enough.
if (!globalThis.crypto) {
  globalThis.crypto = (await import('node:crypto')).webcrypto;
}

const serverUrl = process.argv[2];
if (!serverUrl) {
  console.error('usage: node seed_client.mjs http://HOST:PORT');
  process.exit(2);
}

const client = new EncryptedEnclaveClient(serverUrl);
await client.connect();

const result = await client.execute(`
  console.log('hello from the seed client');
  const r = await callTool('echo', { n: 41 });
  return { n: r.n + 1 };
`);

const thrown = await client.execute(`
  const a = 1;
  throw new RangeError('out of range');
`);

const events = [];
for await (const event of client.executeStreaming(`
  console.log('one');
  const r = await callTool('echo', { x: 'y' });
  console.warn('two');
  return r;
`)) {
  events.push(event);
}

// A second client: every connect() is its own session with its own key.
const other = new EncryptedEnclaveClient(serverUrl);
await other.connect();
const otherResult = await other.execute('return 7');

console.log(JSON.stringify({
  sessionId: client.sessionId,
  otherSessionId: other.sessionId,
  result,
  thrown,
  events,
  otherResult,
}));
