// Headless Chromium through chromedriver, over the W3C WebDriver protocol (plain fetch),
// with the flags the playground test uses on this closed network
// (broker/tests/playground/main.rs). CHROMEDRIVER and CHROMIUM override the binaries.

import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { tempDir } from './broker.mjs';

const ELEMENT = 'element-6066-11e4-a52e-4f735466cecf';

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function call(method, url, body) {
  const response = await fetch(url, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await response.json();
  if (!response.ok) throw new Error(`WebDriver ${method} ${url}: ${response.status} ${JSON.stringify(json.value)}`);
  return json.value;
}

export class Browser {
  static async start() {
    const port = await freePort();
    const profile = tempDir('chromium-profile');
    const binary = process.env.CHROMEDRIVER || 'chromedriver';
    const driver = spawn(binary, [`--port=${port}`, `--log-path=${join(profile, 'chromedriver.log')}`], { stdio: 'ignore' });
    const spawned = new Promise((resolve, reject) => {
      driver.once('error', (e) => reject(new Error(`starting ${binary}: ${e.message} (Debian: apt-get install chromium chromium-driver)`)));
      driver.once('spawn', resolve);
    });
    await spawned;
    const browser = new Browser();
    browser.driver = driver;
    browser.base = `http://127.0.0.1:${port}`;
    browser.profile = profile;
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        if ((await call('GET', `${browser.base}/status`)).ready) break;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error('chromedriver did not become ready');
      await new Promise((r) => setTimeout(r, 100));
    }
    const options = {
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--disable-dev-shm-usage',
        '--window-size=1100,1300',
        `--user-data-dir=${join(profile, 'data')}`,
      ],
    };
    if (process.env.CHROMIUM) options.binary = process.env.CHROMIUM;
    const session = await call('POST', `${browser.base}/session`, {
      capabilities: { alwaysMatch: { browserName: 'chrome', 'goog:chromeOptions': options, 'goog:loggingPrefs': { browser: 'ALL' } } },
    });
    browser.session = `${browser.base}/session/${session.sessionId}`;
    await browser.cmd('POST', '/timeouts', { script: 120_000 });
    return browser;
  }

  cmd(method, path, body) {
    return call(method, `${this.session}${path}`, body);
  }

  goto(url) {
    return this.cmd('POST', '/url', { url });
  }

  /** Runs `body` in the page as an async function of `args`; resolves with its JSON-able value or rejects with its error. */
  async run(body, ...args) {
    const script = `const done = arguments[arguments.length - 1];
      (async (...args) => { ${body} })(...Array.prototype.slice.call(arguments, 0, -1))
        .then((value) => done({ value }), (e) => done({ error: String(e && e.stack ? e.stack : e) }));`;
    const out = await this.cmd('POST', '/execute/async', { script, args });
    if (out && out.error) throw new Error(`in the page: ${out.error}`);
    return out ? out.value : undefined;
  }

  async find(css) {
    const v = await this.cmd('POST', '/element', { using: 'css selector', value: css });
    return v[ELEMENT];
  }

  async text(css) {
    return this.cmd('GET', `/element/${await this.find(css)}/text`);
  }

  async attribute(css, name) {
    return this.cmd('GET', `/element/${await this.find(css)}/attribute/${name}`);
  }

  async property(css, name) {
    return this.cmd('GET', `/element/${await this.find(css)}/property/${name}`);
  }

  async css(css, name) {
    return this.cmd('GET', `/element/${await this.find(css)}/css/${name}`);
  }

  async click(css) {
    return this.cmd('POST', `/element/${await this.find(css)}/click`, {});
  }

  /** Replaces the text of an input or textarea by typing, as a person would (select all, then type). */
  async typeInto(css, text) {
    const el = await this.find(css);
    await this.cmd('POST', `/element/${el}/value`, { text: '\uE009a\uE000\uE017' });
    await this.cmd('POST', `/element/${el}/value`, { text });
  }

  /** Polls `probe` until it returns a value other than undefined, for at most `ms`. */
  async waitFor(what, probe, ms = 30_000) {
    const deadline = Date.now() + ms;
    let last;
    for (;;) {
      try {
        const value = await probe();
        if (value !== undefined) return value;
      } catch (e) {
        last = e;
      }
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** The page's console messages so far (chromedriver's log endpoint). */
  async log() {
    try {
      return await this.cmd('POST', '/se/log', { type: 'browser' });
    } catch {
      return [];
    }
  }

  async screenshot(path) {
    try {
      writeFileSync(path, Buffer.from(await this.cmd('GET', '/screenshot'), 'base64'));
      return path;
    } catch {
      return null;
    }
  }

  async quit() {
    try {
      await fetch(this.session, { method: 'DELETE' });
    } catch {
      // already gone
    }
    this.driver.kill();
  }
}

/** `rgb(r, g, b)` or `rgba(…)` -> [r, g, b]. */
export function rgb(css) {
  return css.match(/[\d.]+/g).slice(0, 3).map(Number);
}
