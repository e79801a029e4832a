// @enclave-vm/react: `useEnclave(options)` and `<SecureCodeEditor>` over @enclave-vm/client.
//
// Plain `React.createElement`, no JSX: the package ships its sources as they are (no build
// step between this file and what a bundler or a browser loads), like @enclave-vm/client.
// Styles are inline (so the component looks right with no stylesheet, and inline style
// *properties* pass a strict Content-Security-Policy); every element also has a class
// (`enclave-…`) and data attributes to style it or test it.

import * as React from 'react';
import { EnclaveClient, EnclaveJobError } from '@enclave-vm/client';

const { createElement: h, useCallback, useEffect, useRef, useState } = React;

/**
 * One EnclaveClient for the component's lifetime, connected at once. It is made again when
 * `serverUrl`, `pin`, `curve` or `level` change (the old session is closed); `keyProvider`,
 * `fetch` and `rekey` are read when it is made, so passing new objects on each render does
 * not reconnect (call `reconnect()` for that).
 */
export function useEnclave(options) {
  const { serverUrl, pin, curve = 'X25519', level = null } = options;
  const latest = useRef(options);
  latest.current = options;
  const [generation, setGeneration] = useState(0);
  const [state, setState] = useState({ status: 'connecting', client: null, session: null, error: null });

  useEffect(() => {
    let live = true;
    let client;
    try {
      const { keyProvider = null, fetch = null, rekey = null } = latest.current;
      client = new EnclaveClient({ serverUrl, pin, curve, level, keyProvider, fetch, rekey });
    } catch (error) {
      setState({ status: 'error', client: null, session: null, error });
      return undefined;
    }
    setState({ status: 'connecting', client, session: null, error: null });
    client.connect().then(
      (session) => {
        if (live) setState({ status: 'connected', client, session, error: null });
      },
      (error) => {
        if (live) setState({ status: 'error', client, session: null, error });
      },
    );
    return () => {
      live = false;
      client.close().catch(() => {});
    };
  }, [serverUrl, pin, curve, level, generation]);

  const reconnect = useCallback(() => setGeneration((g) => g + 1), []);
  const { client } = state;
  const execute = useCallback(
    (code, opts) => (client ? client.execute(code, opts) : Promise.reject(new Error('not connected to the broker'))),
    [client],
  );
  const executeStreaming = useCallback(
    (code, opts) => {
      if (client) return client.executeStreaming(code, opts);
      return (async function* notConnected() {
        throw new Error('not connected to the broker');
      })();
    },
    [client],
  );
  return { ...state, connected: state.status === 'connected', reconnect, execute, executeStreaming };
}

// ---------------------------------------------------------------------------------------
// <SecureCodeEditor>

const COLORS = { connected: '#22c55e', connecting: '#f59e0b', error: '#ef4444' };
const MONO = 'ui-monospace, "SF Mono", Menlo, Consolas, monospace';
const S = {
  root: { display: 'grid', gap: '10px', fontFamily: 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif', fontSize: '14px' },
  status: { display: 'flex', alignItems: 'center', gap: '8px', fontWeight: 500 },
  dot: { width: '10px', height: '10px', borderRadius: '50%', flex: 'none' },
  code: { width: '100%', minHeight: '180px', boxSizing: 'border-box', fontFamily: MONO, fontSize: '13px', padding: '10px', tabSize: 2, whiteSpace: 'pre', resize: 'vertical' },
  actions: { display: 'flex', gap: '8px', alignItems: 'center' },
  console: { fontFamily: MONO, fontSize: '12.5px', minHeight: '2em', maxHeight: '320px', overflow: 'auto', whiteSpace: 'pre-wrap', overflowWrap: 'anywhere' },
  line: { display: 'flex', gap: '10px' },
  tag: { flex: 'none', width: '4.5em', opacity: 0.7 },
  pre: { margin: 0, fontFamily: MONO, fontSize: '12.5px', whiteSpace: 'pre-wrap', overflowWrap: 'anywhere' },
};
const LINE_COLORS = { warn: '#b45309', error: '#dc2626', info: '#0369a1', tool: '#7c3aed' };

function statusText(enclave) {
  if (enclave.status === 'connected') return 'Encrypted Connection';
  if (enclave.status === 'error') return `Connection failed: ${enclave.error && enclave.error.message ? enclave.error.message : String(enclave.error)}`;
  return 'Connecting…';
}

function formatValue(value) {
  return JSON.stringify(value, null, 2) ?? 'undefined';
}

function toolLine(event) {
  return event.type === 'tool_call'
    ? `→ callTool(${JSON.stringify(event.name)}, ${event.argsJson || 'null'})`
    : `← ${event.name || 'tool'} ${event.isError ? 'failed' : 'answered'}`;
}

/**
 * The seed's editor: a connection indicator (green "Encrypted Connection", red with the
 * error), the code, "Execute Securely", the console lines as they stream, then the result
 * or the error. Props: the EnclaveClient options (serverUrl, pin, curve, keyProvider,
 * fetch, level, rekey), and `initialCode`, `limits`, `input`, `onEvent(event)`,
 * `onResult(finalEvent)`, `onError(error)`, `className`, `rows`.
 */
export function SecureCodeEditor(props) {
  const { initialCode = '', limits, input, onEvent, onResult, onError, className, rows = 12 } = props;
  const enclave = useEnclave(props);
  const [code, setCode] = useState(initialCode);
  const [running, setRunning] = useState(false);
  const [lines, setLines] = useState([]);
  const [result, setResult] = useState(null);
  const controller = useRef(null);
  const callbacks = useRef({ onEvent, onResult, onError });
  callbacks.current = { onEvent, onResult, onError };

  // A job still running when the component goes away is cancelled.
  useEffect(() => () => controller.current && controller.current.abort(), []);

  const run = useCallback(async () => {
    if (!enclave.connected || controller.current) return;
    const abort = new AbortController();
    controller.current = abort;
    setRunning(true);
    setLines([]);
    setResult(null);
    const { onEvent: onEv, onResult: onRes, onError: onErr } = callbacks.current;
    try {
      for await (const event of enclave.client.executeStreaming(code, { limits, input, signal: abort.signal })) {
        if (onEv) onEv(event);
        switch (event.type) {
          case 'console':
            setLines((l) => [...l, { kind: 'console', level: event.level, text: event.text }]);
            break;
          case 'tool_call':
          case 'tool_result':
            setLines((l) => [...l, { kind: 'tool', level: 'tool', text: toolLine(event) }]);
            break;
          case 'final':
            setResult({ state: 'ok', text: formatValue(event.value), stats: event.stats });
            if (onRes) onRes(event);
            break;
          case 'error': {
            const where = event.line ? `\nat line ${event.line}` : '';
            setResult({ state: 'error', code: event.code, line: event.line, text: `${event.code}: ${event.errorName ? `${event.errorName}: ` : ''}${event.message}${where}`, stats: event.stats });
            if (onErr) onErr(new EnclaveJobError(event));
            break;
          }
          default:
            break;
        }
      }
    } catch (e) {
      if (abort.signal.aborted) {
        setResult({ state: 'cancelled', code: 'CANCELLED', text: 'Cancelled: the job was stopped.' });
      } else {
        setResult({ state: 'error', code: e.code || e.kind || 'CLIENT', text: e && e.message ? e.message : String(e) });
        if (onErr) onErr(e);
      }
    } finally {
      controller.current = null;
      setRunning(false);
    }
  }, [enclave.connected, enclave.client, code, limits, input]);

  const cancel = useCallback(() => controller.current && controller.current.abort(), []);

  const color = COLORS[enclave.status];
  const status = h(
    'div',
    { className: 'enclave-status', role: 'status', 'aria-live': 'polite', 'data-state': enclave.status, style: { ...S.status, color } },
    h('span', { className: 'enclave-dot', style: { ...S.dot, background: color, boxShadow: enclave.status === 'connecting' ? 'none' : `0 0 8px ${color}` } }),
    h('span', { className: 'enclave-status-text', style: { overflowWrap: 'anywhere' } }, statusText(enclave)),
    enclave.status === 'error' ? h('button', { type: 'button', className: 'enclave-retry', onClick: enclave.reconnect }, 'Retry') : null,
  );
  const editor = h('textarea', {
    className: 'enclave-code',
    'aria-label': 'Code',
    value: code,
    rows,
    spellCheck: false,
    autoComplete: 'off',
    autoCapitalize: 'off',
    style: S.code,
    onChange: (e) => setCode(e.target.value),
    onKeyDown: (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        run();
      }
    },
  });
  const actions = h(
    'div',
    { className: 'enclave-actions', style: S.actions },
    h('button', { type: 'button', className: 'enclave-execute', disabled: !enclave.connected || running, onClick: run }, running ? 'Executing…' : 'Execute Securely'),
    running ? h('button', { type: 'button', className: 'enclave-cancel', onClick: cancel }, 'Cancel') : null,
  );
  const output = h(
    'div',
    { className: 'enclave-console', role: 'log', 'aria-live': 'polite', style: S.console },
    lines.map((line, i) =>
      h(
        'div',
        { key: i, className: `enclave-line enclave-${line.kind}`, 'data-kind': line.kind, 'data-level': line.level, style: { ...S.line, color: LINE_COLORS[line.level] } },
        h('span', { className: 'enclave-tag', style: S.tag }, line.level),
        h('span', { className: 'enclave-text' }, line.text),
      ),
    ),
  );
  const resultView = result
    ? h(
        'div',
        {
          className: 'enclave-result',
          'aria-live': 'polite',
          'data-state': result.state,
          'data-code': result.code,
          'data-line': result.line ?? undefined,
        },
        h(
          'div',
          { className: 'enclave-result-head', style: { fontWeight: 600, color: result.state === 'ok' ? COLORS.connected : COLORS.error } },
          result.state === 'ok' ? 'Result' : result.state === 'cancelled' ? 'Cancelled' : 'Error',
          result.stats ? h('span', { className: 'enclave-stats', style: { fontWeight: 400, opacity: 0.7, marginLeft: '8px' } }, `${(result.stats.durationUs / 1000).toFixed(1)} ms · ${result.stats.toolCalls} tool call${result.stats.toolCalls === 1 ? '' : 's'}`) : null,
        ),
        h('pre', { className: 'enclave-result-body', style: S.pre }, result.text),
      )
    : h('div', { className: 'enclave-result', 'data-state': running ? 'running' : 'empty' });

  return h(
    'div',
    { className: ['enclave-editor', className].filter(Boolean).join(' '), 'data-status': enclave.status, style: S.root },
    status,
    editor,
    actions,
    output,
    resultView,
  );
}
