// Decoded sealed messages -> the package's typed events, results and failures
// (the shapes of index.d.ts; the same as the Rust client's `Event`, in camelCase).

import { CONSOLE_LEVELS, ERROR_CODES } from './constants.js';
import { EnclaveProtocolError } from './errors.js';

export const codeName = (n) => ERROR_CODES[n] ?? `ERROR_${n}`;
export const consoleLevelName = (n) => CONSOLE_LEVELS[n] ?? 'log';

export function statsFrom(s) {
  if (!s) return { durationUs: 0, toolCalls: 0, consoleBytes: 0, memoryBytes: 0 };
  return {
    durationUs: Number(s.durationUs),
    toolCalls: s.toolCalls,
    consoleBytes: Number(s.consoleBytes),
    memoryBytes: Number(s.memoryBytes),
  };
}

/** JobError -> { code, message, errorName, line, stack } (null for what is not known). */
export function failureFrom(e) {
  return {
    code: codeName(e.code),
    message: e.message,
    errorName: e.name || null,
    line: e.line || null,
    stack: e.stack || null,
  };
}

export function consoleLineFrom(c) {
  return { level: consoleLevelName(c.level), text: c.text };
}

function parseResult(json) {
  try {
    return JSON.parse(json);
  } catch {
    throw new EnclaveProtocolError('decode', 'the job\'s result is not JSON');
  }
}

/** FinalEvent -> a 'final' or an 'error' event (a script error, with its stats). */
export function finalEventFrom(f) {
  const stats = statsFrom(f.stats);
  if (f.outcome === 'resultJson') return { type: 'final', value: parseResult(f.resultJson), resultJson: f.resultJson, stats };
  if (f.outcome === 'error') return { type: 'error', ...failureFrom(f.error), stats };
  throw new EnclaveProtocolError('decode', 'final event without an outcome');
}

/** A decoded StreamEvent -> EnclaveEvent. */
export function eventFrom(decoded) {
  const v = decoded.value;
  switch (decoded.type) {
    case 'console':
      return { type: 'console', ...consoleLineFrom(v) };
    case 'toolCall': {
      let args = null;
      if (v.argsJson !== '') {
        try {
          args = JSON.parse(v.argsJson);
        } catch {
          args = v.argsJson; // for display: the broker may redact arguments
        }
      }
      return { type: 'tool_call', callId: Number(v.callId), name: v.name, args, argsJson: v.argsJson };
    }
    case 'toolResult':
      return { type: 'tool_result', callId: Number(v.callId), name: v.name, isError: v.isError };
    case 'final':
      return finalEventFrom(v);
    case 'error':
      return { type: 'error', ...failureFrom(v), stats: null };
    default:
      throw new EnclaveProtocolError('decode', 'stream event without content');
  }
}
