// @enclave-vm/client: a client of the enclave broker's protocol v1 over HTTP
// (docs/PROTOCOL.md, docs/HTTP.md), for browsers and Node 20+, with WebCrypto only.
// The protocol's building blocks are in './protocol.js' (`@enclave-vm/client/protocol`).

export { EnclaveClient, curveSupported, HANDSHAKE_TIMEOUT_MS } from './client.js';
export { EnclaveError, EnclaveHttpError, EnclaveJobError, EnclaveProtocolError } from './errors.js';
export { ClientKey, generateClientKey, importClientKey, fingerprintOf } from './keys.js';
export { ERROR_CODES, PROTOCOL_VERSION, REKEY_POLICY } from './constants.js';
