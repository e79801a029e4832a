// Protocol v1 constants (docs/PROTOCOL.md) and the enums of proto/proto/enclave/v1/*.proto.

export const PROTOCOL_VERSION = 1;

export const Suite = Object.freeze({ X25519: 1, P256: 2 });
export const SUITE_NAMES = Object.freeze({
  1: 'SUITE_X25519_ED25519_AES256GCM_SHA256',
  2: 'SUITE_P256_ED25519_AES256GCM_SHA256',
});
/** The `curve` option's values, by suite. */
export const CURVES = Object.freeze({ 1: 'X25519', 2: 'P-256' });

export const RecordKind = Object.freeze({
  EXECUTE_REQUEST: 1,
  EXECUTE_RESULT: 2,
  STREAM_REQUEST: 3,
  STREAM_EVENT: 4,
  STREAM_FINAL: 5,
  CLOSE_REQUEST: 6,
  CLOSE_RESULT: 7,
  REKEY_REQUEST: 8,
  REKEY_RESULT: 9,
  LIST_TOOLS_REQUEST: 10,
  LIST_TOOLS_RESULT: 11,
  TOOL_RESULT: 12,
  TOOL_RESULT_ACK: 13,
});
export const RECORD_KIND_NAMES = Object.freeze(
  Object.fromEntries(Object.entries(RecordKind).map(([name, value]) => [value, `RECORD_KIND_${name}`])),
);
export const CLIENT_KINDS = new Set([
  RecordKind.EXECUTE_REQUEST,
  RecordKind.STREAM_REQUEST,
  RecordKind.CLOSE_REQUEST,
  RecordKind.REKEY_REQUEST,
  RecordKind.LIST_TOOLS_REQUEST,
  RecordKind.TOOL_RESULT,
]);

export const Direction = Object.freeze({ CLIENT_TO_BROKER: 1, BROKER_TO_CLIENT: 2 });

export const SecurityLevel = Object.freeze({ UNSPECIFIED: 0, STRICT: 1, SECURE: 2, STANDARD: 3, PERMISSIVE: 4 });

/** ConsoleLevel by number; 0 (unspecified) is shown as 'log'. */
export const CONSOLE_LEVELS = Object.freeze(['log', 'log', 'info', 'warn', 'error', 'debug']);
/** ErrorCode by number, without the ERROR_CODE_ prefix (the names of README.md). */
export const ERROR_CODES = Object.freeze([
  'UNSPECIFIED',
  'SCRIPT_ERROR',
  'SYNTAX_ERROR',
  'TIMEOUT',
  'MEMORY_LIMIT',
  'STACK_OVERFLOW',
  'TOOL_CALL_LIMIT',
  'OUTPUT_LIMIT',
  'RESULT_TOO_LARGE',
  'CANCELLED',
  'INTERNAL',
  'EXECUTOR_LOST',
  'INVALID_JOB',
  'UNAVAILABLE',
  'OUTPUT_STALLED',
]);

/** Plaintexts are at most 16 MiB (§8.1). */
export const MAX_PLAINTEXT = 1 << 24;
export const U64_MAX = (1n << 64n) - 1n;
export const U32_MAX = 0xffffffff;

/** Sender rotation policy (§9.1) and receiver grace period (§9.2): the protocol's defaults. */
export const REKEY_POLICY = Object.freeze({ maxRecords: 2 ** 24, maxBytes: 2 ** 36, maxAgeMs: 10 * 60 * 1000 });
export const RECEIVE_GRACE_MS = 60 * 1000;
/** A sender policy that never fires: the client's rekey clock calls the Rekey RPC instead. */
export const NEVER_ROTATE = Object.freeze({ maxRecords: Infinity, maxBytes: Infinity, maxAgeMs: Infinity });
