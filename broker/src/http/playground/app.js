// enclave playground: the page wiring. The protocol (v1, docs/PROTOCOL.md, over HTTP,
// docs/HTTP.md) is the @enclave-vm/client package (js/client/), which the broker serves
// to this page as ES modules under /client/: the one JavaScript implementation of protocol
// v1 in the repository. This file only turns the page's inputs into EnclaveClient calls
// and its events into lines on the page.

import { EnclaveClient, EnclaveHttpError, EnclaveProtocolError, curveSupported } from './client/index.js';

const CURVE_OF_SUITE = { 1: 'X25519', 2: 'P-256' };
const SUITE_OF_CURVE = { 'X25519': '1', 'P-256': '2' };

/** A person-readable line for an error from any step. */
function describeError(e) {
  if (e instanceof EnclaveProtocolError || e instanceof EnclaveHttpError) return e.message;
  if (e && e.name === 'TypeError' && /fetch/i.test(e.message)) return `network error: ${e.message}`;
  return e && e.message ? `${e.name || 'Error'}: ${e.message}` : String(e);
}

// ---------------------------------------------------------------------------------------
// The page

const STYLES = `
:root { color-scheme: dark; --bg: #0b1020; --panel: #121a2e; --border: #24304d; --text: #dbe4f5;
  --muted: #8592ad; --accent: #6366f1; --green: #22c55e; --red: #ef4444; --amber: #f59e0b; --blue: #38bdf8; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text);
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
main { max-width: 980px; margin: 0 auto; padding: 24px 20px 40px; display: grid; gap: 16px; }
header { display: flex; align-items: center; justify-content: space-between; gap: 16px; flex-wrap: wrap; }
h1 { font-size: 20px; margin: 0; font-weight: 650; letter-spacing: .2px; }
h1 span { color: var(--muted); font-weight: 400; }
h2 { font-size: 12px; text-transform: uppercase; letter-spacing: .08em; color: var(--muted); margin: 0 0 8px; font-weight: 600; }
.panel { background: var(--panel); border: 1px solid var(--border); border-radius: 10px; padding: 14px 16px; }
#status { display: inline-flex; align-items: center; gap: 8px; padding: 6px 12px; border-radius: 999px;
  border: 1px solid var(--border); background: var(--panel); max-width: 100%; font-weight: 500; }
#status .dot { width: 10px; height: 10px; border-radius: 50%; background: var(--amber); flex: none; }
#status[data-state="ok"] .dot { background: var(--green); box-shadow: 0 0 8px var(--green); }
#status[data-state="ok"] { color: var(--green); border-color: #1f5f3a; }
#status[data-state="error"] .dot { background: var(--red); box-shadow: 0 0 8px var(--red); }
#status[data-state="error"] { color: var(--red); border-color: #6b2530; border-radius: 10px; }
#status-text { overflow-wrap: anywhere; }
.row { display: flex; gap: 12px; align-items: center; flex-wrap: wrap; }
label { color: var(--muted); font-size: 12px; }
input, select, textarea, button { font: inherit; color: inherit; }
input, select { background: var(--bg); border: 1px solid var(--border); border-radius: 6px; padding: 6px 8px; }
#pin { flex: 1 1 480px; font-family: ui-monospace, "SF Mono", Menlo, Consolas, monospace; font-size: 12.5px; }
#pin[aria-invalid="true"] { border-color: var(--red); }
#session { color: var(--muted); font-size: 12px; margin: 8px 0 0; font-family: ui-monospace, Menlo, Consolas, monospace; overflow-wrap: anywhere; }
#code { width: 100%; min-height: 230px; resize: vertical; background: #080c18; border: 1px solid var(--border);
  border-radius: 8px; padding: 12px; tab-size: 2; white-space: pre; overflow: auto;
  font: 13px/1.55 ui-monospace, "SF Mono", Menlo, Consolas, monospace; }
#code:focus, input:focus, select:focus { outline: 2px solid var(--accent); outline-offset: -1px; }
.actions { margin-top: 10px; }
#execute { background: var(--accent); color: white; border: 0; border-radius: 8px; padding: 8px 16px; font-weight: 600; cursor: pointer; }
#execute:disabled { opacity: .45; cursor: not-allowed; }
.hint { color: var(--muted); font-size: 12px; }
#output { background: #080c18; border: 1px solid var(--border); border-radius: 8px; min-height: 60px; max-height: 320px;
  overflow: auto; padding: 8px 0; font: 12.5px/1.6 ui-monospace, "SF Mono", Menlo, Consolas, monospace; }
#output:empty::before { content: "No output yet."; color: var(--muted); padding: 0 12px; }
.line { display: flex; gap: 10px; padding: 0 12px; white-space: pre-wrap; overflow-wrap: anywhere; }
.line .tag { flex: none; width: 5.5em; color: var(--muted); }
.line.console.info .tag { color: var(--blue); }
.line.console.warn { background: rgba(245, 158, 11, .08); } .line.console.warn .tag { color: var(--amber); }
.line.console.error { background: rgba(239, 68, 68, .08); } .line.console.error .tag { color: var(--red); }
.line.tool .tag, .line.tool .text { color: #a78bfa; }
#result pre { margin: 0; background: #080c18; border: 1px solid var(--border); border-radius: 8px; padding: 12px; overflow: auto;
  font: 12.5px/1.55 ui-monospace, "SF Mono", Menlo, Consolas, monospace; white-space: pre-wrap; overflow-wrap: anywhere; }
#result .head { margin-bottom: 8px; font-weight: 600; }
#result[data-state="ok"] .head { color: var(--green); }
#result[data-state="error"] .head { color: var(--red); }
#result[data-state="error"] pre { border-color: #6b2530; }
#result:empty::before { content: "Run a script to see its result."; color: var(--muted); }
#result .stats { color: var(--muted); font-size: 12px; font-weight: 400; margin-left: 8px; }
footer { color: var(--muted); font-size: 12px; }
`;

function initPage(document) {
  const $ = (id) => document.getElementById(id);
  const statusEl = $('status');
  const statusText = $('status-text');
  const pinEl = $('pin');
  const suiteEl = $('suite');
  const levelEl = $('level');
  const codeEl = $('code');
  const executeEl = $('execute');
  const outputEl = $('output');
  const resultEl = $('result');
  const sessionEl = $('session');

  try {
    const sheet = new CSSStyleSheet();
    sheet.replaceSync(STYLES);
    document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
  } catch {
    // Unstyled but working.
  }

  let client = null; // connected EnclaveClient, or null
  let generation = 0;
  let running = false;

  const setStatus = (state, text) => {
    statusEl.dataset.state = state;
    statusText.textContent = text;
  };
  const updateButton = () => {
    executeEl.disabled = !client || running;
    executeEl.textContent = running ? 'Executing…' : 'Execute Securely';
  };
  /** Drops the current client (closing its session unless a job still runs on it). */
  const dropClient = () => {
    if (client && !running) client.close().catch(() => {});
    client = null;
  };

  async function connectNow() {
    const gen = ++generation;
    dropClient();
    updateButton();
    sessionEl.textContent = '';
    setStatus('connecting', 'Connecting…');
    pinEl.removeAttribute('aria-invalid');
    try {
      let curve = CURVE_OF_SUITE[suiteEl.value] ?? 'X25519';
      if (curve === 'X25519' && !(await curveSupported('X25519'))) {
        curve = 'P-256'; // older browsers: no X25519 in WebCrypto
        suiteEl.value = SUITE_OF_CURVE[curve];
      }
      // '' : this page's origin, the broker that served it.
      const candidate = new EnclaveClient({ serverUrl: '', pin: pinEl.value, curve });
      const info = await candidate.connect();
      if (gen !== generation) {
        candidate.close().catch(() => {});
        return;
      }
      client = candidate;
      setStatus('ok', 'Encrypted Connection');
      sessionEl.textContent = `${info.curve} + Ed25519, AES-256-GCM · session ${info.sessionId} · broker ${info.fingerprint}`;
    } catch (e) {
      if (gen !== generation) return;
      if (e instanceof EnclaveProtocolError && e.kind === 'pin') pinEl.setAttribute('aria-invalid', 'true');
      setStatus('error', `Connection failed: ${describeError(e)}`);
    }
    updateButton();
  }

  function addLine(kind, tag, text, extraClass = '') {
    const line = document.createElement('div');
    line.className = `line ${kind} ${extraClass}`.trim();
    line.dataset.kind = kind;
    line.dataset.level = tag;
    const tagEl = document.createElement('span');
    tagEl.className = 'tag';
    tagEl.textContent = tag;
    const textEl = document.createElement('span');
    textEl.className = 'text';
    textEl.textContent = text;
    line.append(tagEl, textEl);
    const atBottom = outputEl.scrollTop + outputEl.clientHeight >= outputEl.scrollHeight - 4;
    outputEl.append(line);
    if (atBottom) outputEl.scrollTop = outputEl.scrollHeight;
  }

  function onEvent(event) {
    switch (event.type) {
      case 'console':
        addLine('console', event.level, event.text, event.level);
        break;
      case 'tool_call':
        addLine('tool', 'tool', `→ callTool(${JSON.stringify(event.name)}, ${event.argsJson || 'null'})  #${event.callId}`);
        break;
      case 'tool_result':
        addLine('tool', 'tool', `← ${event.name || 'tool'} #${event.callId} ${event.isError ? 'failed' : 'answered'}`);
        break;
      default:
        break;
    }
  }

  function formatStats(stats) {
    if (!stats) return '';
    const ms = stats.durationUs / 1000;
    const parts = [`${ms < 10 ? ms.toFixed(2) : Math.round(ms)} ms`, `${stats.toolCalls} tool call${stats.toolCalls === 1 ? '' : 's'}`];
    if (stats.memoryBytes) parts.push(`${(stats.memoryBytes / (1 << 20)).toFixed(1)} MiB`);
    return parts.join(' · ');
  }

  function showResult(state, head, body, stats = '') {
    resultEl.replaceChildren();
    resultEl.dataset.state = state;
    const headEl = document.createElement('div');
    headEl.className = 'head';
    headEl.textContent = head;
    if (stats) {
      const s = document.createElement('span');
      s.className = 'stats';
      s.textContent = stats;
      headEl.append(s);
    }
    const pre = document.createElement('pre');
    pre.textContent = body;
    resultEl.append(headEl, pre);
  }

  /** The stream's last event: `final` (the value) or `error` (the job's failure). */
  function showFinal(event) {
    delete resultEl.dataset.code;
    delete resultEl.dataset.line;
    const stats = formatStats(event.stats);
    if (event.type === 'error') {
      const lines = [`${event.code}: ${event.errorName ? `${event.errorName}: ` : ''}${event.message}`];
      if (event.line) lines.push(`at line ${event.line}`);
      showResult('error', 'Error', lines.join('\n'), stats);
      resultEl.dataset.code = event.code;
      resultEl.dataset.line = String(event.line || 0);
      return;
    }
    showResult('ok', 'Result', JSON.stringify(event.value, null, 2), stats);
  }

  async function run() {
    if (!client || running) return;
    running = true;
    updateButton();
    outputEl.replaceChildren();
    resultEl.replaceChildren();
    resultEl.dataset.state = 'running';
    try {
      // The client handshakes again by itself if the broker forgot the session.
      for await (const event of client.executeStreaming(codeEl.value, { level: levelEl.value })) {
        if (event.type === 'final' || event.type === 'error') showFinal(event);
        else onEvent(event);
      }
    } catch (e) {
      showResult('error', 'Failed', describeError(e));
      resultEl.dataset.code = e instanceof EnclaveHttpError ? e.code : 'CLIENT';
    } finally {
      running = false;
      updateButton();
    }
  }

  let pinTimer = null;
  pinEl.addEventListener('input', () => {
    // The old session no longer matches the pin on screen: drop it now, connect once
    // the typing stops.
    generation += 1;
    dropClient();
    updateButton();
    sessionEl.textContent = '';
    setStatus('connecting', 'Connecting…');
    clearTimeout(pinTimer);
    pinTimer = setTimeout(connectNow, 300);
  });
  pinEl.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') {
      clearTimeout(pinTimer);
      connectNow();
    }
  });
  suiteEl.addEventListener('change', connectNow);
  executeEl.addEventListener('click', run);
  codeEl.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      run();
    }
  });

  updateButton();
  connectNow();
}

initPage(document);
