// A small HTTP server for the browser tests: the pages, the package's files from disk, and
// the broker's API under the same origin (a proxy, as docs/HTTP.md suggests for pages
// served elsewhere: the broker sends no CORS headers). Every page gets the playground's
// strict Content-Security-Policy, so the package is tested under it.
//
//   /                      an empty page (the client tests import modules into it)
//   /react.html            the React test page (loads /bundle/react-app.js)
//   /client/<file>.js      js/client/src/<file>.js
//   /test/<path>.mjs       js/client/test/<path>.mjs
//   /vectors/<file>.json   proto/testdata/<file>.json
//   /bundle/<file>.js      files of `bundleDir` (esbuild output)
//   /v1/…                  proxied to the default broker
//   /b/<name>/v1/…         proxied to broker <name>

import { createServer, request } from 'node:http';
import { readFile } from 'node:fs/promises';
import { join, normalize } from 'node:path';
import { repoRoot } from './paths.mjs';

const CSP = "default-src 'self'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";
const TYPES = { '.js': 'text/javascript; charset=utf-8', '.mjs': 'text/javascript; charset=utf-8', '.json': 'application/json', '.html': 'text/html; charset=utf-8' };

const PAGES = {
  '/': '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>enclave client test</title></head><body><main id="out">client test page</main></body></html>',
  '/react.html':
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>enclave react test</title><script type="module" src="/bundle/react-app.js"></script></head><body><div id="root"></div></body></html>',
};

function inside(root, path) {
  const full = normalize(join(root, path));
  return full.startsWith(root) ? full : null;
}

export async function startServer({ brokers, bundleDir = null }) {
  const statics = [
    ['/client/', join(repoRoot, 'js/client/src')],
    ['/test/', join(repoRoot, 'js/client/test')],
    ['/vectors/', join(repoRoot, 'proto/testdata')],
    ['/bundle/', bundleDir],
  ];
  const server = createServer(async (req, res) => {
    const url = new URL(req.url, 'http://localhost');
    let target = null;
    if (url.pathname.startsWith('/v1/')) target = [brokers.default, url.pathname];
    const m = url.pathname.match(/^\/b\/([a-z0-9-]+)(\/v1\/.*)$/);
    if (m && brokers[m[1]]) target = [brokers[m[1]], m[2]];
    if (target) return proxy(req, res, target[0], target[1] + url.search);
    if (req.method !== 'GET') return send(res, 405, 'text/plain', 'method not allowed');
    if (PAGES[url.pathname] !== undefined) return send(res, 200, TYPES['.html'], PAGES[url.pathname], { 'content-security-policy': CSP });
    for (const [prefix, root] of statics) {
      if (!root || !url.pathname.startsWith(prefix)) continue;
      const file = inside(root, url.pathname.slice(prefix.length));
      const type = file && TYPES[file.slice(file.lastIndexOf('.'))];
      if (!type) break;
      try {
        return send(res, 200, type, await readFile(file));
      } catch {
        break;
      }
    }
    return send(res, 404, 'text/plain', 'not found');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    close: () => new Promise((resolve) => {
      server.closeAllConnections();
      server.close(resolve);
    }),
  };
}

function send(res, status, type, body, headers = {}) {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', 'x-content-type-options': 'nosniff', ...headers });
  res.end(body);
}

/** Streams the request to the broker and its answer back, NDJSON included; a client that goes away closes the broker's request too. */
function proxy(req, res, brokerUrl, path) {
  const target = new URL(path, brokerUrl);
  const headers = { ...req.headers, host: target.host };
  const upstream = request(target, { method: req.method, headers }, (answer) => {
    res.writeHead(answer.statusCode, answer.headers);
    answer.pipe(res);
  });
  upstream.on('error', () => {
    if (!res.headersSent) send(res, 502, 'application/json', JSON.stringify({ code: 'UNAVAILABLE', message: 'proxy: the broker did not answer' }));
    else res.destroy();
  });
  res.on('close', () => upstream.destroy());
  req.pipe(upstream);
}
