// Evaluated once, at snapshot time. Returns the internals the guest's Rust side calls;
// nothing here is reachable from scripts except the globals it deliberately defines
// (console, callTool, listTools, Math.random). Built-ins are captured up front, and methods are
// called through `uncurry` rather than `.call`, so a script that replaces JSON.stringify,
// Function.prototype.call, String.prototype.split or Error.prototype.name breaks only its
// own code, never the reporting of its result or error.
(function setup(host) {
  'use strict';
  const uncurry = Function.prototype.bind.bind(Function.prototype.call);
  const stringify = JSON.stringify;
  const parse = JSON.parse;
  const PromiseCtor = Promise;
  const ErrorCtor = Error;
  const TypeErrorCtor = TypeError;
  const NumberCtor = Number;
  const MapCtor = Map;
  const mapGet = uncurry(Map.prototype.get);
  const mapSet = uncurry(Map.prototype.set);
  const mapDelete = uncurry(Map.prototype.delete);
  const indexOf = uncurry(String.prototype.indexOf);
  const slice = uncurry(String.prototype.slice);
  const toWellFormed = uncurry(String.prototype.toWellFormed);
  const regexpExec = uncurry(RegExp.prototype.exec);
  const isArray = Array.isArray;
  const objectKeys = Object.keys;
  const getPrototypeOf = Object.getPrototypeOf;
  const defineProperty = Object.defineProperty;
  const hostConsole = host.console;
  const hostToolStart = host.toolStart;
  const hostRandom = host.random;
  const SCRIPT_LINE = /script\.js:(\d+)/;
  const CIRCULAR = /circular|cyclic/i;

  // ---- console: util.inspect-like, enough to read objects at a glance ----
  function inspect(value, depth, seen, nested) {
    switch (typeof value) {
      case 'string': return nested ? "'" + value + "'" : value;
      case 'bigint': return String(value) + 'n';
      case 'symbol': return value.toString();
      case 'function': return '[Function: ' + (value.name || '(anonymous)') + ']';
      case 'undefined': return 'undefined';
      case 'object': break;
      default: return String(value);
    }
    if (value === null) return 'null';
    if (value instanceof ErrorCtor) return value.stack ? value.name + ': ' + value.message + '\n' + value.stack.trimEnd() : String(value);
    if (seen.indexOf(value) !== -1) return '[Circular]';
    if (value instanceof Date) return value.toISOString();
    if (value instanceof RegExp) return String(value);
    if (depth > 2) return isArray(value) ? '[Array]' : '[Object]';
    seen.push(value);
    let out;
    try {
      if (isArray(value)) {
        const items = [];
        const n = Math.min(value.length, 100);
        for (let i = 0; i < n; i++) items.push(inspect(value[i], depth + 1, seen, true));
        if (value.length > n) items.push('... ' + (value.length - n) + ' more items');
        out = items.length ? '[ ' + items.join(', ') + ' ]' : '[]';
      } else if (value instanceof MapCtor) {
        const items = [];
        for (const [k, v] of value) items.push(inspect(k, depth + 1, seen, true) + ' => ' + inspect(v, depth + 1, seen, true));
        out = 'Map(' + value.size + ') {' + (items.length ? ' ' + items.join(', ') + ' ' : '') + '}';
      } else if (value instanceof Set) {
        const items = [];
        for (const v of value) items.push(inspect(v, depth + 1, seen, true));
        out = 'Set(' + value.size + ') {' + (items.length ? ' ' + items.join(', ') + ' ' : '') + '}';
      } else if (value instanceof PromiseCtor) {
        out = 'Promise { <pending> }';
      } else {
        const keys = objectKeys(value);
        const items = [];
        for (const k of keys) {
          const key = /^[A-Za-z_$][\w$]*$/.test(k) ? k : "'" + k + "'";
          items.push(key + ': ' + inspect(value[k], depth + 1, seen, true));
        }
        const proto = getPrototypeOf(value);
        const name = proto && proto !== Object.prototype && proto.constructor && proto.constructor.name;
        const body = items.length ? '{ ' + items.join(', ') + ' }' : '{}';
        out = name ? name + ' ' + body : body;
      }
    } finally {
      seen.pop();
    }
    return out;
  }
  function format(args) {
    let text = '';
    for (let i = 0; i < args.length; i++) {
      if (i) text += ' ';
      text += inspect(args[i], 0, [], false);
    }
    return text;
  }
  const levels = { log: 1, info: 2, warn: 3, error: 4, debug: 5 };
  const consoleObj = {};
  for (const name of objectKeys(levels)) {
    const level = levels[name];
    consoleObj[name] = function () { hostConsole(level, toWellFormed(format(arguments))); };
  }
  consoleObj.trace = consoleObj.debug;
  defineProperty(globalThis, 'console', { value: consoleObj, writable: true, configurable: true, enumerable: false });

  // ---- callTool: start/await, so Promise.all over tool calls overlaps them ----
  const pending = new MapCtor();
  function callTool(name, args) {
    return new PromiseCtor(function (resolve, reject) {
      if (typeof name !== 'string' || name === '') throw new TypeErrorCtor('callTool: the tool name must be a non-empty string');
      const json = stringify(args === undefined ? null : args);
      if (json === undefined) throw new TypeErrorCtor('callTool: arguments must be JSON-serialisable');
      const id = hostToolStart(toWellFormed(name), json);
      mapSet(pending, id, { resolve, reject, name });
    });
  }
  defineProperty(globalThis, 'callTool', { value: callTool, writable: true, configurable: true, enumerable: false });
  // The tools this job may call, as ListTools lists them: [{name, description, inputSchema}].
  // A tool call the broker answers itself (it shows as one, and counts as one).
  function listTools() { return callTool('tools:list', null); }
  defineProperty(globalThis, 'listTools', { value: listTools, writable: true, configurable: true, enumerable: false });

  // ---- Math.random: reseeded by the host for every job ----
  defineProperty(Math, 'random', { value: function random() { return hostRandom(); }, writable: true, configurable: true, enumerable: false });

  // ---- results ----
  // What is reported when a thrown value cannot be described (its getters throw, it is a
  // revoked proxy, ...): honest, and never mistaken for a limit.
  const UNDESCRIBABLE = '{"name":"Error","message":"uncaught exception (the thrown value could not be described)","line":0,"stack":""}';
  // Frames of the prelude and of the wrapper's own call are ours, not the script's.
  function scriptFrames(stack) {
    let out = '';
    let kept = 0;
    let start = 0;
    while (start <= stack.length) {
      let end = indexOf(stack, '\n', start);
      if (end === -1) end = stack.length;
      const line = slice(stack, start, end);
      if (indexOf(line, 'prelude.js') === -1 && indexOf(line, '<eval>') === -1 && indexOf(line, '(native)') === -1) {
        out = kept === 0 ? line : out + '\n' + line;
        kept++;
      }
      start = end + 1;
    }
    return out;
  }
  // A property that is a string, or undefined: reading it may run the script's getters.
  function text(read) {
    try {
      const value = read();
      return typeof value === 'string' ? value : undefined;
    } catch (_) {
      return undefined;
    }
  }
  function describeError(error) {
    const raw = text(function () { return error.stack; });
    const stack = scriptFrames(raw === undefined ? '' : raw);
    const m = regexpExec(SCRIPT_LINE, stack);
    const name = text(function () { return error.name; });
    const message = text(function () { return error.message; });
    return stringify({
      __proto__: null,
      name: name === undefined ? 'Error' : name,
      message: message === undefined ? '' : message,
      line: m ? NumberCtor(m[1]) : 0,
      stack: stack,
    });
  }
  function describe(error) {
    try {
      let isError = false;
      try { isError = error instanceof ErrorCtor; } catch (_) { /* a hostile proxy */ }
      if (isError) return describeError(error);
      let message;
      try { message = 'uncaught ' + inspect(error, 0, [], true); } catch (_) { message = 'uncaught non-Error value'; }
      return stringify({ __proto__: null, name: 'Error', message: message, line: 0, stack: '' });
    } catch (_) {
      return UNDESCRIBABLE;
    }
  }
  function replacer(key, value) {
    if (typeof value === 'bigint') throw new TypeErrorCtor('the result contains a BigInt' + (key ? ' (at "' + key + '")' : '') + ', which JSON cannot represent');
    if (typeof value === 'function') throw new TypeErrorCtor('the result contains a function' + (key ? ' (at "' + key + '")' : '') + ', which JSON cannot represent');
    if (typeof value === 'symbol') throw new TypeErrorCtor('the result contains a symbol' + (key ? ' (at "' + key + '")' : '') + ', which JSON cannot represent');
    return value;
  }
  function serialize(value) {
    if (value === undefined) return 'null';
    let json;
    try {
      json = stringify(value, replacer);
    } catch (e) {
      let circular = false;
      try { circular = e instanceof TypeErrorCtor && regexpExec(CIRCULAR, e.message) !== null; } catch (_) { /* the script's own value */ }
      if (circular) {
        throw new TypeErrorCtor('the result contains a circular reference, which JSON cannot represent');
      }
      throw e;
    }
    return json === undefined ? 'null' : json;
  }
  function deliver(id, isError, payload) {
    const call = mapGet(pending, id);
    if (call === undefined) return;
    mapDelete(pending, id);
    if (isError) {
      call.reject(new ErrorCtor('tool ' + call.name + ' failed: ' + payload));
    } else {
      let value;
      try { value = parse(payload); } catch (e) { call.reject(new ErrorCtor('tool ' + call.name + ' returned invalid JSON')); return; }
      call.resolve(value);
    }
  }
  return { serialize, deliver, describe };
})
