// Types of @enclave-vm/client/protocol (src/protocol.js): the building blocks of protocol
// v1 (docs/PROTOCOL.md), for tests, tools and other transports. Byte strings are
// Uint8Array; 64-bit sequence numbers are bigint. Applications want EnclaveClient.

export {
  EnclaveError,
  EnclaveHttpError,
  EnclaveJobError,
  EnclaveProtocolError,
  ClientKey,
  generateClientKey,
  importClientKey,
  fingerprintOf,
  ERROR_CODES,
  PROTOCOL_VERSION,
  REKEY_POLICY,
} from './index.js';
import type { ClientKey, ConsoleLine, EnclaveEvent, JobStats, KeyProvider, RekeyPolicy } from './index.js';

// constants.js
export declare const Suite: Readonly<{ X25519: 1; P256: 2 }>;
export type SuiteId = 1 | 2;
export declare const SUITE_NAMES: Readonly<Record<SuiteId, string>>;
export declare const CURVES: Readonly<Record<SuiteId, 'X25519' | 'P-256'>>;
export declare const RecordKind: Readonly<{
  EXECUTE_REQUEST: 1;
  EXECUTE_RESULT: 2;
  STREAM_REQUEST: 3;
  STREAM_EVENT: 4;
  STREAM_FINAL: 5;
  CLOSE_REQUEST: 6;
  CLOSE_RESULT: 7;
  REKEY_REQUEST: 8;
  REKEY_RESULT: 9;
  LIST_TOOLS_REQUEST: 10;
  LIST_TOOLS_RESULT: 11;
  TOOL_RESULT: 12;
  TOOL_RESULT_ACK: 13;
}>;
export declare const RECORD_KIND_NAMES: Readonly<Record<number, string>>;
export declare const CLIENT_KINDS: ReadonlySet<number>;
export declare const Direction: Readonly<{ CLIENT_TO_BROKER: 1; BROKER_TO_CLIENT: 2 }>;
export declare const SecurityLevel: Readonly<{ UNSPECIFIED: 0; STRICT: 1; SECURE: 2; STANDARD: 3; PERMISSIVE: 4 }>;
export declare const CONSOLE_LEVELS: readonly string[];
export declare const MAX_PLAINTEXT: number;
export declare const U64_MAX: bigint;
export declare const U32_MAX: number;
export declare const RECEIVE_GRACE_MS: number;
export declare const NEVER_ROTATE: Readonly<Required<RekeyPolicy>>;

// encoding.js
export declare function concat(...parts: Uint8Array[]): Uint8Array;
export declare function toBytes(value: Uint8Array | ArrayBuffer | ArrayBufferView, what?: string): Uint8Array;
export declare function toHex(bytes: Uint8Array): string;
export declare function fromHex(text: string): Uint8Array;
export declare function toBase64(bytes: Uint8Array): string;
export declare function fromBase64(text: string): Uint8Array;
export declare function utf8(text: string): Uint8Array;
export declare function u8(n: number): Uint8Array;
export declare function u16(n: number): Uint8Array;
export declare function u32(n: number): Uint8Array;
export declare function u64(n: number | bigint): Uint8Array;
export declare function ctEqual(a: Uint8Array, b: Uint8Array): boolean;
export declare function isAllZero(bytes: Uint8Array): boolean;

// crypto.js
export interface Ephemeral {
  suite: SuiteId;
  privateKey: CryptoKey;
  share: Uint8Array;
}
export declare function subtle(): SubtleCrypto;
export declare function sha256(...parts: Uint8Array[]): Promise<Uint8Array>;
export declare function hmacSha256(key: Uint8Array, data: Uint8Array): Promise<Uint8Array>;
export declare function hmacSha256Verify(key: Uint8Array, data: Uint8Array, mac: Uint8Array): Promise<boolean>;
export declare function hkdfExtract(salt: Uint8Array, ikm: Uint8Array): Promise<Uint8Array>;
export declare function hkdfExpand(prk: Uint8Array, info: Uint8Array, length: number): Promise<Uint8Array>;
export declare const LABEL_PREFIX: string;
export declare function hkdfLabel(label: string, context: Uint8Array, length: number): Uint8Array;
export declare function hkdfExpandLabel(secret: Uint8Array, label: string, context: Uint8Array, length: number): Promise<Uint8Array>;
export declare function deriveEpochKeys(trafficSecret: Uint8Array): Promise<{ key: Uint8Array; iv: Uint8Array }>;
export declare function nextTrafficSecret(trafficSecret: Uint8Array): Promise<Uint8Array>;
export declare const PKCS8_ED25519_PREFIX: Uint8Array;
export declare function generateEphemeral(suite: SuiteId): Promise<Ephemeral>;
export declare function importEphemeral(suite: SuiteId, secret: Uint8Array): Promise<Ephemeral>;
export declare function suiteSupported(suite: SuiteId): Promise<boolean>;
export declare function deriveShared(ephemeral: Ephemeral, peerShare: Uint8Array): Promise<Uint8Array>;
export declare function aesKey(key: Uint8Array | CryptoKey): Promise<CryptoKey>;
export declare function aesGcmSeal(key: Uint8Array | CryptoKey, nonce: Uint8Array, plaintext: Uint8Array, ad: Uint8Array): Promise<Uint8Array>;
export declare function aesGcmOpen(key: Uint8Array | CryptoKey, nonce: Uint8Array, ciphertext: Uint8Array, ad: Uint8Array): Promise<Uint8Array>;

// keys.js
export declare const PIN_HELP: string;
export declare function parsePin(text: string): Uint8Array;
export declare function importEd25519Seed(seed: Uint8Array): Promise<ClientKey>;
export declare function publicKeyBytes(value: Uint8Array | ArrayBuffer | CryptoKey): Promise<Uint8Array>;
export declare function checkKeyProvider(provider: KeyProvider | null | undefined): KeyProvider | null;

// handshake.js
export interface ClientHello {
  version: number;
  suite: SuiteId;
  clientShare: Uint8Array;
}
export interface ServerHello {
  version: number;
  suite: number;
  sessionId: Uint8Array;
  serverShare: Uint8Array;
  serverIdentity: Uint8Array;
  clientAuthRequired: boolean;
  signature: Uint8Array;
  finished: Uint8Array;
}
export interface ClientAuth {
  sessionId: Uint8Array;
  clientIdentity: Uint8Array;
  signature: Uint8Array;
  finished: Uint8Array;
}
export interface HandshakeState {
  readonly pin: Uint8Array;
  readonly suite: SuiteId;
}
export declare function encodeClientHello(hello: ClientHello): Uint8Array;
export declare function encodeServerHello(hello: Omit<ServerHello, 'signature' | 'finished'>): Uint8Array;
export declare function encodeServerSignature(signature: Uint8Array): Uint8Array;
export declare function encodeServerFinished(finished: Uint8Array): Uint8Array;
export declare function encodeClientIdentity(identity: Uint8Array): Uint8Array;
export declare function encodeClientSignature(signature: Uint8Array): Uint8Array;
export declare function signingInput(role: 'server' | 'client', hash: Uint8Array): Uint8Array;
export declare function startHandshake(options: {
  pin: string | Uint8Array;
  suite?: SuiteId;
  ephemeral?: Ephemeral | null;
  trace?: boolean;
}): Promise<{ state: HandshakeState; hello: ClientHello }>;
export declare function finishHandshake(state: HandshakeState, serverHello: ServerHello, options?: { policy?: Required<RekeyPolicy> }): Promise<HandshakeResult>;
export declare class HandshakeResult {
  readonly suite: SuiteId;
  readonly sessionId: Uint8Array;
  readonly serverIdentity: Uint8Array;
  readonly fingerprint: string;
  readonly clientAuthRequired: boolean;
  readonly channel: Channel;
  /** The intermediate values, when startHandshake was asked for a trace (test vectors). */
  readonly trace: Record<string, Uint8Array> | null;
  authenticate(keyProvider: KeyProvider): Promise<ClientAuth>;
  skipAuthentication(): void;
}

// channel.js
export interface SealedRecord {
  sessionId: Uint8Array;
  epoch: number;
  seq: bigint;
  kind: number;
  eventIndex: number;
  ciphertext: Uint8Array;
}
export declare function recordNonce(iv: Uint8Array, seq: bigint | number): Uint8Array;
export declare function associatedData(
  sessionId: Uint8Array,
  direction: number,
  epoch: number,
  seq: bigint,
  kind: number,
  requestSeq: bigint,
  eventIndex: number,
): Uint8Array;
export declare class Channel {
  static create(
    sessionId: Uint8Array,
    clientTrafficSecret: Uint8Array,
    serverTrafficSecret: Uint8Array,
    options?: { policy?: Required<RekeyPolicy>; graceMs?: number },
  ): Promise<Channel>;
  readonly sessionId: Uint8Array;
  readonly nextSeq: bigint;
  readonly send: { readonly epoch: number };
  readonly recv: { readonly epoch: number };
  rotateSend(): Promise<void>;
  sealRequest(kind: number, plaintext: Uint8Array): Promise<SealedRecord>;
  sealRekeyRequest(): Promise<SealedRecord>;
  openReply(requestSeq: bigint, kind: number, record: SealedRecord): Promise<Uint8Array>;
  open(record: SealedRecord, kind: number, requestSeq: bigint, eventIndex: number): Promise<Uint8Array>;
}
export declare class StreamOpener {
  constructor(requestSeq: bigint | number);
  readonly finished: boolean;
  open(channel: Channel, record: SealedRecord): Promise<DecodedStreamEvent>;
  /** Throws (kind 'truncated') unless STREAM_FINAL was opened. */
  finish(detail?: string): void;
}

// messages.js
export declare const LIMIT_FIELDS: ReadonlyArray<readonly [string, number]>;
export declare function encodeExecuteRequest(job?: {
  code?: string;
  level?: number;
  limits?: Record<string, number | bigint | undefined> | null;
  inputJson?: string;
}): Uint8Array;
/** A StreamEvent as decoded: field names of the .proto in camelCase, 64-bit integers as bigint. */
export interface DecodedStreamEvent {
  type: 'console' | 'toolCall' | 'toolResult' | 'final' | 'error' | null;
  value: any;
}
export declare function decodeStreamEvent(bytes: Uint8Array): DecodedStreamEvent;
export declare function decodeExecuteResult(bytes: Uint8Array): { outcome: 'final' | 'error' | null; final?: any; error?: any; console: any[] };

// wire.js
export declare function handshakeRequestJson(hello: ClientHello): object;
export declare function clientAuthRequestJson(auth: ClientAuth): object;
export declare function serverHelloFromJson(json: unknown): ServerHello;
export declare function clientAuthAccepted(json: unknown): void;
export declare function recordToJson(record: SealedRecord): object;
export declare function recordFromJson(json: unknown): SealedRecord;

// http.js
export declare function postJson(fetch: (url: string, init: RequestInit) => Promise<Response>, url: string, body: unknown, signal?: AbortSignal): Promise<Response>;
export declare function transportError(error: unknown, signal?: AbortSignal, url?: string): unknown;
export declare function httpError(response: Response): Promise<Error>;
export declare function ndjsonLines(body: ReadableStream<Uint8Array>): AsyncGenerator<string, void, undefined>;
export declare function raceAbort<T>(promise: Promise<T>, signal?: AbortSignal): Promise<T>;

// events.js
export declare function codeName(code: number): string;
export declare function consoleLevelName(level: number): string;
export declare function statsFrom(stats: unknown): JobStats;
export declare function failureFrom(error: unknown): { code: string; message: string; errorName: string | null; line: number | null; stack: string | null };
export declare function consoleLineFrom(event: unknown): ConsoleLine;
export declare function finalEventFrom(event: unknown): EnclaveEvent;
export declare function eventFrom(decoded: DecodedStreamEvent): EnclaveEvent;
