// fetch wrappers for the tests: they record what the client sends and play the attacker on
// the path (cut, drop, repeat or flip what the broker answers).

/** fetch that records every call: `calls` holds { path, body (parsed JSON), status }. */
export function recordingFetch(inner = globalThis.fetch) {
  const calls = [];
  const f = async (url, init) => {
    const call = { path: new URL(url).pathname, body: init && init.body ? JSON.parse(init.body) : null, status: null };
    calls.push(call);
    const response = await inner(url, init);
    call.status = response.status;
    return response;
  };
  f.calls = calls;
  f.count = (path) => calls.filter((c) => c.path === path).length;
  return f;
}

async function bodyLines(response) {
  return (await response.text()).split('\n').filter((l) => l.trim() !== '');
}

function ndjsonResponse(response, lines, { fail = null } = {}) {
  const encoder = new TextEncoder();
  const body = new ReadableStream({
    start(controller) {
      for (const line of lines) controller.enqueue(encoder.encode(`${line}\n`));
      if (fail) controller.error(fail);
      else controller.close();
    },
  });
  return new Response(body, { status: response.status, headers: response.headers });
}

/**
 * fetch that rewrites the lines of `path`'s answers: `edit(lines, n)` gets the whole body
 * as lines (n: how many such answers so far) and returns { lines, fail? }; `fail` ends the
 * body with that error instead of a clean end (a connection that breaks).
 */
export function editingFetch(path, edit, inner = globalThis.fetch) {
  let n = 0;
  return async (url, init) => {
    const response = await inner(url, init);
    if (new URL(url).pathname !== path || !response.ok) return response;
    const result = edit(await bodyLines(response), n++);
    return ndjsonResponse(response, result.lines, { fail: result.fail });
  };
}

/** A SealedRecord JSON line with one ciphertext bit flipped. */
export function flipCiphertext(line) {
  const record = JSON.parse(line);
  const bytes = Uint8Array.from(atob(record.ciphertext), (c) => c.charCodeAt(0));
  bytes[bytes.length - 1] ^= 1;
  record.ciphertext = btoa(String.fromCharCode(...bytes));
  return JSON.stringify(record);
}
