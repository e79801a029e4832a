// The React test page's app (bundled by esbuild in react.browser.test.mjs, with Debian's
// React 18): `<SecureCodeEditor>` with the options of the page's query string, or, with
// `?probe=1`, a small component built on `useEnclave`.

import * as React from 'react';
import { createRoot } from 'react-dom/client';
import { SecureCodeEditor, useEnclave } from '@enclave-vm/react';

const h = React.createElement;
const query = new URLSearchParams(location.search);
const options = { serverUrl: location.origin, pin: query.get('pin') ?? '', curve: query.get('curve') ?? 'X25519' };
window.editorEvents = [];

function Probe() {
  const enclave = useEnclave(options);
  const [out, setOut] = React.useState('');
  const run = async () => {
    try {
      const { value } = await enclave.execute("return { sum: input.a + input.b }", { input: { a: 40, b: 2 } });
      const types = [];
      for await (const event of enclave.executeStreaming("console.log('x'); return 1")) types.push(event.type);
      setOut(JSON.stringify({ value, types, session: enclave.client.session }));
    } catch (e) {
      setOut(`error: ${e.message}`);
    }
  };
  return h(
    'div',
    { id: 'probe', 'data-status': enclave.status },
    h('span', { id: 'probe-session' }, enclave.session ? `${enclave.session.curve} ${enclave.session.fingerprint}` : ''),
    h('button', { id: 'probe-run', disabled: !enclave.connected, onClick: run }, 'run'),
    h('button', { id: 'probe-reconnect', onClick: enclave.reconnect }, 'reconnect'),
    h('pre', { id: 'probe-out' }, out),
  );
}

const app =
  query.get('probe') === '1'
    ? h(Probe)
    : h(SecureCodeEditor, {
        ...options,
        initialCode: "console.log('Hello from the sandbox');\nconst reply = await callTool('echo', { n: 21 });\nreturn { doubled: reply.n * 2 };",
        onEvent: (event) => window.editorEvents.push(event.type),
        onResult: (event) => {
          window.lastResult = event.value;
        },
        onError: (error) => {
          window.lastError = { name: error.name, code: error.code ?? null, line: error.line ?? null };
        },
      });

createRoot(document.getElementById('root')).render(h(React.StrictMode, null, app));
