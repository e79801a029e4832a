// The errors the package throws. Every one is an EnclaveError:
// - EnclaveJobError: the job ran (or the broker could not run it) and failed; `code` is
//   the job error code (SCRIPT_ERROR, TIMEOUT, MEMORY_LIMIT, ...), `line` the script line.
// - EnclaveProtocolError: something the client detected itself and refuses to go on with
//   (pin mismatch, downgrade, a record that does not authenticate, a truncated stream).
// - EnclaveHttpError: the broker, or the network, answered with an error before any
//   sealed answer (docs/HTTP.md): `status` is the HTTP status (0: no answer at all),
//   `code` the gRPC code name the broker gave.
// An AbortSignal that fires rejects with the signal's reason (an AbortError by default),
// as fetch does.

export class EnclaveError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = 'EnclaveError';
  }
}

/**
 * `kind`: 'pin' | 'downgrade' | 'handshake' | 'client-auth' | 'record' | 'stream' |
 * 'truncated' | 'decode' | 'config' | 'exhausted'.
 */
export class EnclaveProtocolError extends EnclaveError {
  constructor(kind, message, options) {
    super(message, options);
    this.name = 'EnclaveProtocolError';
    this.kind = kind;
  }
}

export class EnclaveHttpError extends EnclaveError {
  constructor(status, code, message, options) {
    super(`${code} (${status ? `HTTP ${status}` : 'no answer'}): ${message}`, options);
    this.name = 'EnclaveHttpError';
    this.status = status;
    this.code = code;
    this.brokerMessage = message;
  }
}

/** A failed job: what the `error` event of a stream says, as an exception of `execute()`. */
export class EnclaveJobError extends EnclaveError {
  constructor(failure, { console = [] } = {}) {
    const where = failure.line ? ` (line ${failure.line})` : '';
    super(`${failure.code}: ${failure.errorName ? `${failure.errorName}: ` : ''}${failure.message}${where}`);
    this.name = 'EnclaveJobError';
    this.code = failure.code;
    this.jobMessage = failure.message;
    this.errorName = failure.errorName ?? null;
    this.line = failure.line ?? null;
    this.scriptStack = failure.stack ?? null;
    this.stats = failure.stats ?? null;
    this.console = console;
  }
}
