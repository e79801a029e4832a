// Types of @enclave-vm/client (src/index.js). Hand-written; checked by `tsc -p js/client`
// against test/types/usage.ts (which must compile) and its @ts-expect-error lines (which
// must not).

/** The key exchange of the session: X25519 (default) or NIST P-256. */
export type Curve = 'X25519' | 'P-256';

/** Job security levels (README.md, "Security levels"); absent: the broker's default (STANDARD). */
export type SecurityLevel = 'STRICT' | 'SECURE' | 'STANDARD' | 'PERMISSIVE';

/** Job error codes (README.md); `ERROR_<n>` for a code this version does not know. */
export type ErrorCode =
  | 'UNSPECIFIED'
  | 'SCRIPT_ERROR'
  | 'SYNTAX_ERROR'
  | 'TIMEOUT'
  | 'MEMORY_LIMIT'
  | 'STACK_OVERFLOW'
  | 'TOOL_CALL_LIMIT'
  | 'OUTPUT_LIMIT'
  | 'RESULT_TOO_LARGE'
  | 'CANCELLED'
  | 'INTERNAL'
  | 'EXECUTOR_LOST'
  | 'INVALID_JOB'
  | 'UNAVAILABLE'
  | 'OUTPUT_STALLED'
  | `ERROR_${number}`;

export type ConsoleLevel = 'log' | 'info' | 'warn' | 'error' | 'debug';

/** Bytes as WebCrypto takes them. */
export type Bytes = Uint8Array | ArrayBuffer;

/**
 * A client key for client authentication: an Ed25519 key that signs the handshake. The
 * private key can live anywhere (a hardware token, a KMS, a non-extractable CryptoKey);
 * the client only ever asks for its public key and one signature per handshake.
 */
export interface KeyProvider {
  /** The 32-byte raw Ed25519 public key, or a public CryptoKey that exports as 'raw'. */
  getPublicKey(): Bytes | CryptoKey | Promise<Bytes | CryptoKey>;
  /** A 64-byte Ed25519 signature of `data` (the 60-byte signing input of PROTOCOL.md §6.4). */
  sign(data: Uint8Array): Bytes | Promise<Bytes>;
}

/** When the client calls the Rekey RPC by itself; defaults are the protocol's (§9.1). */
export interface RekeyPolicy {
  /** Records sealed under one key. Default 2^24. */
  maxRecords?: number;
  /** Plaintext bytes sealed under one key. Default 2^36. */
  maxBytes?: number;
  /** Age of a key, in milliseconds. Default 10 minutes. */
  maxAgeMs?: number;
}

export interface EnclaveClientOptions {
  /** The broker's HTTP address (`--http-listen`), e.g. "http://127.0.0.1:7780"; "" for this page's origin. */
  serverUrl: string;
  /**
   * The broker's fingerprint, `sha256:<64 hex digits>`: required. The broker logs it when
   * it starts (`fingerprint=sha256:…`) and `enclave-broker fingerprint` prints it. A broker
   * proving another key is refused before anything is sent.
   */
  pin: string;
  /** Default 'X25519'. */
  curve?: Curve;
  /** Authenticate with this key (required by brokers started with `--allow-client`). */
  keyProvider?: KeyProvider | null;
  /** The fetch to use (default: the global one). */
  fetch?: (input: string, init: RequestInit) => Promise<Response>;
  /** Level of jobs that do not name one. */
  level?: SecurityLevel | null;
  rekey?: RekeyPolicy | null;
}

/** Per-job overrides of the level's limits, never above the executor's ceilings. */
export interface Limits {
  timeoutMs?: number | bigint;
  memoryBytes?: number | bigint;
  maxToolCalls?: number;
  maxConsoleBytes?: number | bigint;
  maxResultBytes?: number | bigint;
  maxToolArgsBytes?: number | bigint;
}

export interface ExecuteOptions {
  /** Any JSON-serialisable value; the script sees it as the global `input`. */
  input?: unknown;
  level?: SecurityLevel;
  limits?: Limits;
  /** Aborting rejects the call with the signal's reason and cancels the job at the broker. */
  signal?: AbortSignal;
}

export interface JobStats {
  durationUs: number;
  toolCalls: number;
  consoleBytes: number;
  /** Peak size of the sandbox's linear memory. */
  memoryBytes: number;
}

export interface ConsoleLine {
  level: ConsoleLevel;
  text: string;
}

/** What `execute` resolves with when the job returned a value. */
export interface ExecutionResult<T = unknown> {
  /** The returned value (`undefined` comes back as `null`). */
  value: T;
  /** The same value as the JSON the sandbox produced. */
  resultJson: string;
  console: ConsoleLine[];
  stats: JobStats;
}

/** Why a job failed. `stats` is null when the broker could not run it at all. */
export interface JobFailure {
  code: ErrorCode;
  message: string;
  /** The JavaScript error's name ('TypeError', …) for script and syntax errors. */
  errorName: string | null;
  /** 1-based line in the job's own code, when known. */
  line: number | null;
  stack: string | null;
  stats: JobStats | null;
}

export interface ConsoleEvent {
  type: 'console';
  level: ConsoleLevel;
  text: string;
}

/** The script called `await callTool(name, args)`. */
export interface ToolCallEvent {
  type: 'tool_call';
  callId: number;
  name: string;
  /** The arguments (parsed from `argsJson`; the raw text if it is not JSON). */
  args: unknown;
  argsJson: string;
}

/** A tool call came back. Deliberately without the value: tool results may carry secrets. */
export interface ToolResultEvent {
  type: 'tool_result';
  callId: number;
  name: string;
  isError: boolean;
}

export interface FinalEvent<T = unknown> {
  type: 'final';
  value: T;
  resultJson: string;
  stats: JobStats;
}

export interface ErrorEvent extends JobFailure {
  type: 'error';
}

/** One event of `executeStreaming`; the last is always a FinalEvent or an ErrorEvent. */
export type EnclaveEvent<T = unknown> = ConsoleEvent | ToolCallEvent | ToolResultEvent | FinalEvent<T> | ErrorEvent;

export interface SessionInfo {
  /** 16 bytes, hex. */
  sessionId: string;
  /** The broker's fingerprint (the pin). */
  fingerprint: string;
  curve: Curve;
  /** The client key the session authenticated with, if any. */
  clientFingerprint: string | null;
  /** Handshakes this client has completed; this session is the last one. */
  handshakes: number;
  sendEpoch: number;
  recvEpoch: number;
  /** Rekey RPCs completed on this session. */
  rekeys: number;
}

export declare class EnclaveClient {
  /** Throws (EnclaveProtocolError, kind 'pin') without a pin, and TypeError for other bad options. */
  constructor(options: EnclaveClientOptions);
  readonly serverUrl: string;
  readonly curve: Curve;
  /** The current session, or null before the first handshake and after close(). */
  readonly session: SessionInfo | null;
  /** Handshakes now (requests also do it when needed). */
  connect(options?: { signal?: AbortSignal }): Promise<SessionInfo>;
  /** The job's value; a failed job rejects with EnclaveJobError. */
  execute<T = unknown>(code: string, options?: ExecuteOptions): Promise<ExecutionResult<T>>;
  /**
   * The job's events as they happen; throws EnclaveProtocolError (kind 'truncated') if the
   * stream ends before its final event. Leaving the loop early cancels the job.
   */
  executeStreaming<T = unknown>(code: string, options?: ExecuteOptions): AsyncGenerator<EnclaveEvent<T>, void, undefined>;
  /** New keys in both directions now. */
  rekey(options?: { signal?: AbortSignal }): Promise<void>;
  /** Ends the session at the broker; the next request starts a new one. */
  close(): Promise<void>;
}

/** Whether this runtime's WebCrypto has the curve (X25519 is recent in browsers). */
export declare function curveSupported(curve: Curve): Promise<boolean>;

export declare class EnclaveError extends Error {}

export type ProtocolErrorKind =
  | 'pin'
  | 'downgrade'
  | 'handshake'
  | 'client-auth'
  | 'record'
  | 'stream'
  | 'truncated'
  | 'decode'
  | 'config'
  | 'exhausted';

/** A failure the client detected itself and refuses to go on with. */
export declare class EnclaveProtocolError extends EnclaveError {
  constructor(kind: ProtocolErrorKind, message: string, options?: { cause?: unknown });
  readonly kind: ProtocolErrorKind;
}

/** An error answer from the broker (docs/HTTP.md), or none at all (status 0). */
export declare class EnclaveHttpError extends EnclaveError {
  constructor(status: number, code: string, message: string, options?: { cause?: unknown });
  /** The HTTP status; 0 when the broker could not be reached. */
  readonly status: number;
  /** The gRPC code name: 'UNAUTHENTICATED', 'RESOURCE_EXHAUSTED', … */
  readonly code: string;
  readonly brokerMessage: string;
}

/** A job that failed: `execute`'s rejection, the `error` event as an exception. */
export declare class EnclaveJobError extends EnclaveError {
  constructor(failure: Omit<JobFailure, 'stats'> & { stats?: JobStats | null }, options?: { console?: ConsoleLine[] });
  readonly code: ErrorCode;
  readonly jobMessage: string;
  readonly errorName: string | null;
  readonly line: number | null;
  readonly scriptStack: string | null;
  readonly stats: JobStats | null;
  /** Console output up to the failure. */
  readonly console: ConsoleLine[];
}

/** An Ed25519 client key held by WebCrypto; a KeyProvider. */
export declare class ClientKey implements KeyProvider {
  static fromCryptoKeys(privateKey: CryptoKey, publicKey: CryptoKey | Bytes): Promise<ClientKey>;
  readonly privateKey: CryptoKey;
  readonly publicKey: Uint8Array;
  /** `sha256:…`: what a broker's `--allow-client` lists. */
  readonly fingerprint: string;
  getPublicKey(): Promise<Uint8Array>;
  sign(data: Uint8Array): Promise<Uint8Array>;
}

/** A new client key; its private half cannot be exported. */
export declare function generateClientKey(): Promise<ClientKey>;

/** A PKCS#8 Ed25519 key (PEM as `enclave keygen` writes, or DER), non-extractable unless asked. */
export declare function importClientKey(pkcs8: string | Bytes, options?: { extractable?: boolean }): Promise<ClientKey>;

/** `sha256:<hex>` of a 32-byte Ed25519 public key. */
export declare function fingerprintOf(publicKey: Bytes): Promise<string>;

export declare const ERROR_CODES: readonly ErrorCode[];
export declare const PROTOCOL_VERSION: 1;
export declare const REKEY_POLICY: Readonly<Required<RekeyPolicy>>;
export declare const HANDSHAKE_TIMEOUT_MS: number;
