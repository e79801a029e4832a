// The HTTP transport (docs/HTTP.md): JSON POSTs, error answers as EnclaveHttpError, NDJSON
// bodies as lines, and AbortSignal plumbing.

import { EnclaveHttpError } from './errors.js';

/** POSTs `body` as JSON; a network failure is EnclaveHttpError status 0, an abort the signal's reason. */
export async function postJson(fetchImpl, url, body, signal) {
  try {
    return await fetchImpl(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json, application/x-ndjson' },
      body: JSON.stringify(body),
      cache: 'no-store',
      signal,
    });
  } catch (e) {
    throw transportError(e, signal, url);
  }
}

/** What a failed fetch (or body read) becomes: the abort reason, or a status-0 EnclaveHttpError. */
export function transportError(e, signal, url = '') {
  if (signal && signal.aborted) return signal.reason;
  if (e && e.name === 'AbortError') return e;
  const cause = e && e.cause && e.cause.message ? `: ${e.cause.message}` : '';
  return new EnclaveHttpError(0, 'UNAVAILABLE', `network error${url ? ` (${url})` : ''}: ${e && e.message ? e.message : e}${cause}`, { cause: e });
}

/** An error answer (`{"code":"…","message":"…"}`, docs/HTTP.md) as an EnclaveHttpError. */
export async function httpError(response) {
  let code = `HTTP_${response.status}`;
  let message = response.statusText || 'request failed';
  try {
    const body = await response.json();
    if (body && typeof body.code === 'string') code = body.code;
    if (body && typeof body.message === 'string') message = body.message;
  } catch {
    // not JSON: keep the status line
  }
  return new EnclaveHttpError(response.status, code, message);
}

/** Yields the lines of an NDJSON body as they arrive; stopping early cancels the body. */
export async function* ndjsonLines(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let finished = false;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) {
        finished = true;
        break;
      }
      buffer += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, newline).trim();
        buffer = buffer.slice(newline + 1);
        if (line) yield line;
      }
    }
    buffer += decoder.decode();
    if (buffer.trim()) yield buffer.trim();
  } finally {
    // The consumer stopped early (a refused record, a break): drop the rest of the response.
    if (!finished) await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}

/** Rejects with the signal's reason as soon as it fires; otherwise settles as `promise` does. */
export function raceAbort(promise, signal) {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}
