// `@enclave-vm/client/protocol`: the building blocks of protocol v1, each checked against
// the known-answer vectors of proto/testdata/ (test/vectors.test.mjs). For tests, tools and
// other transports; applications want EnclaveClient (./index.js).

export * from './constants.js';
export * from './errors.js';
export * from './encoding.js';
export * from './crypto.js';
export * from './keys.js';
export * from './handshake.js';
export * from './channel.js';
export * from './messages.js';
export * from './wire.js';
export * from './http.js';
export * from './events.js';
