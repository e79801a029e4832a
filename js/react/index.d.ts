// Types of @enclave-vm/react (src/index.js). Hand-written; checked by `tsc -p js/react`
// against test/types/usage.tsx.

import type { ReactElement } from 'react';
import type {
  EnclaveClient,
  EnclaveClientOptions,
  EnclaveEvent,
  ErrorEvent,
  ExecuteOptions,
  ExecutionResult,
  FinalEvent,
  Limits,
  SessionInfo,
} from '@enclave-vm/client';

export type EnclaveStatus = 'connecting' | 'connected' | 'error';

export interface UseEnclaveResult {
  status: EnclaveStatus;
  connected: boolean;
  /** null until the options are valid (a missing pin is an error status at once). */
  client: EnclaveClient | null;
  /** The session of the first handshake; `client.session` follows later ones. */
  session: SessionInfo | null;
  /** Why it is not connected (status 'error'). */
  error: Error | null;
  /** Makes a new client (and session) with the current options. */
  reconnect(): void;
  /** `client.execute`, rejecting while there is no client. */
  execute<T = unknown>(code: string, options?: ExecuteOptions): Promise<ExecutionResult<T>>;
  /** `client.executeStreaming`, throwing while there is no client. */
  executeStreaming<T = unknown>(code: string, options?: ExecuteOptions): AsyncGenerator<EnclaveEvent<T>, void, undefined>;
}

/**
 * One EnclaveClient, connected at once; made again when serverUrl, pin, curve or level
 * change. keyProvider, fetch and rekey are read when it is made.
 */
export declare function useEnclave(options: EnclaveClientOptions): UseEnclaveResult;

export interface SecureCodeEditorProps extends EnclaveClientOptions {
  /** The editor's code at first. */
  initialCode?: string;
  limits?: Limits;
  /** The script's global `input`. */
  input?: unknown;
  /** Every event of a run, as it comes. */
  onEvent?: (event: EnclaveEvent) => void;
  /** The job returned a value. */
  onResult?: (event: FinalEvent) => void;
  /** The job failed (an EnclaveJobError built from its ErrorEvent), or the run did (protocol, network). */
  onError?: (error: Error) => void;
  className?: string;
  /** Rows of the editor; default 12. */
  rows?: number;
}

export declare function SecureCodeEditor(props: SecureCodeEditorProps): ReactElement;

export type { ErrorEvent };
