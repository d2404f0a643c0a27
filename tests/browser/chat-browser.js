// A real browser (Debian's chromium, driven by playwright-core) against the chat example, for
// tests/chat.rs.
//
// usage: node chat-browser.js URL SCREENSHOT [TIMEOUT_MS]
//
//   URL         the proxy, e.g. http://127.0.0.1:8080
//   SCREENSHOT  where to save a PNG of the first user's chat page at the end
//   TIMEOUT_MS  overall deadline (default 45000); every single wait is bounded too
//
// CHROMIUM overrides the browser's path (default /usr/bin/chromium). Playwright gives the
// browser a fresh --user-data-dir under the temporary directory (TMPDIR) and removes it on
// close.
//
// Steps: user A (alice) opens the login page through the proxy, logs in with the form, and
// lands on the chat page, whose socket.io client must connect over a WebSocket. User B (bob,
// a separate browser context: its own cookies) does the same until B's page was served by
// another worker than A's (a few attempts at most). A sends a message with the form: A sees
// it echoed and B receives it (through the cluster's message bus); B answers and A sees the
// answer. The socket.io traffic must have gone over a WebSocket to /socket.io/.
//
// Prints one JSON line to stdout and exits 0 when every step passed, 1 otherwise:
//   {ok, browser, attempts, a: {...}, b: {...}, texts, errors, timedOut}
'use strict';
const { chromium } = require('playwright-core');

const [url, screenshot, timeoutArg] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error('usage: node chat-browser.js URL SCREENSHOT [TIMEOUT_MS]');
  process.exit(2);
}
const timeoutMs = Number(timeoutArg || 45000);
const STEP_MS = Math.min(10000, timeoutMs);
const MAX_ATTEMPTS = 6;
const nonce = `${process.pid}-${Date.now()}`;
const texts = { a: `hi from alice ${nonce}`, b: `hi from bob ${nonce}` };
const errors = [];
const result = { ok: false, browser: null, attempts: 0, a: null, b: null, texts, errors, timedOut: false };
let browser = null;

function describe(err) {
  return err && err.message ? err.message.split('\n')[0] : String(err);
}

// Opens a fresh context (no cookies), logs in as `name` through the form, waits for the chat.
async function loginAs(name) {
  const context = await browser.newContext();
  context.setDefaultTimeout(STEP_MS);
  const page = await context.newPage();
  const user = { name, context, page, worker: null, me: null, transport: null, websockets: [], chatFrames: 0, console: [] };
  page.on('console', (m) => {
    if (m.type() === 'error') user.console.push(m.text());
  });
  page.on('websocket', (ws) => {
    user.websockets.push(ws.url());
    ws.on('framereceived', (f) => {
      if (typeof f.payload === 'string' && f.payload.startsWith('42["chat"')) user.chatFrames += 1;
    });
  });
  await page.goto(`${url}/`);
  await page.fill('#username', name);
  await page.fill('#password', `${name}'s password`);
  await Promise.all([page.waitForURL('**/chat'), page.click('#submit')]);
  await page.waitForFunction(() => window.chat && window.chat.connected);
  user.worker = Number(await page.textContent('#worker'));
  user.me = await page.evaluate(() => fetch('/me').then((r) => r.json()));
  return user;
}

function summary(u) {
  if (!u) return null;
  return {
    name: u.name,
    worker: u.worker,
    me: u.me,
    transport: u.transport,
    websockets: u.websockets,
    chatFrames: u.chatFrames,
    console: u.console,
  };
}

async function say(u, text) {
  await u.page.fill('#text', text);
  await u.page.click('#say');
}

async function sees(u, text) {
  await u.page.waitForFunction((t) => window.chat.received.some((m) => m.text === t), text);
  // And the page shows it.
  await u.page.locator('#messages li', { hasText: text }).waitFor();
}

async function main() {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    timeout: STEP_MS,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
    ],
  });
  result.browser = browser.version();
  const a = await loginAs('alice');
  result.a = a;
  let b = null;
  for (let i = 0; i < MAX_ATTEMPTS && !b; i++) {
    result.attempts = i + 1;
    const candidate = await loginAs('bob');
    if (candidate.worker !== a.worker) {
      b = candidate;
    } else {
      await candidate.context.close();
    }
  }
  if (!b) throw new Error(`bob landed on alice's worker ${a.worker} in all ${MAX_ATTEMPTS} attempts`);
  result.b = b;
  for (const u of [a, b]) {
    if (u.me.user !== u.name || u.me.worker !== u.worker) {
      throw new Error(`${u.name}: /me says ${JSON.stringify(u.me)}, the page says worker ${u.worker}`);
    }
  }

  await say(a, texts.a);
  await Promise.all([sees(a, texts.a), sees(b, texts.a)]);
  await say(b, texts.b);
  await Promise.all([sees(a, texts.b), sees(b, texts.b)]);

  for (const u of [a, b]) {
    u.transport = await u.page.evaluate(() => window.chat.transport);
    if (u.transport !== 'websocket') throw new Error(`${u.name}: transport ${u.transport}`);
    if (!u.websockets.some((w) => w.includes('/socket.io/') && w.includes('transport=websocket'))) {
      throw new Error(`${u.name}: no WebSocket to /socket.io/ (saw ${JSON.stringify(u.websockets)})`);
    }
    if (u.chatFrames < 2) throw new Error(`${u.name}: ${u.chatFrames} chat frames over the WebSocket`);
  }
  // Who said what, on which worker, as the page shows it.
  const lines = await a.page.locator('#messages li').allTextContents();
  result.lines = lines;
  await a.page.screenshot({ path: screenshot, fullPage: true });
}

let finished = false;
async function finish(timedOut) {
  if (finished) return;
  finished = true;
  result.timedOut = timedOut;
  if (timedOut) errors.push(`overall deadline of ${timeoutMs} ms passed`);
  result.a = summary(result.a);
  result.b = summary(result.b);
  result.ok = errors.length === 0;
  const closing = browser ? browser.close().catch(() => {}) : Promise.resolve();
  await Promise.race([closing, new Promise((r) => setTimeout(r, 5000))]);
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(result.ok ? 0 : 1));
}

setTimeout(() => finish(true), timeoutMs);
main()
  .catch((err) => errors.push(describe(err)))
  .finally(() => finish(false));
