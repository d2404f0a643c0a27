// A real browser (Debian's chromium, driven by playwright-core) against the seed's example run
// through @sticky-cluster/node (examples/seed), for tests/npm_package.rs.
//
// usage: node seed-browser.js URL TOKEN [TIMEOUT_MS]
//
// Opens the example over HTTPS (its self-signed test certificate accepted), logs in with a
// POST /login from the page (the browser keeps the secure session cookie), then starts the
// page's socket.io client: it must begin with HTTP long-polling and upgrade to WebSocket, both
// through the seed's passport.socketio session check. It then emits `join` TOKEN (the worker
// logs "join TOKEN": the test reads which worker got it) and asks /me again.
//
// Prints one JSON line and exits 0 when every step passed, 1 otherwise:
//   {ok, browser, login, first, after, me, polls, websockets, errors, timedOut}
'use strict';
const { chromium } = require('playwright-core');

const [url, token, timeoutArg] = process.argv.slice(2);
if (!url || !token) {
  console.error('usage: node seed-browser.js URL TOKEN [TIMEOUT_MS]');
  process.exit(2);
}
const timeoutMs = Number(timeoutArg || 45000);
const STEP_MS = Math.min(10000, timeoutMs);
const result = { ok: false, browser: null, login: null, first: null, after: null, me: null, polls: 0, websockets: [], errors: [], timedOut: false };
let browser = null;

async function main() {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    timeout: STEP_MS,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  });
  result.browser = browser.version();
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  context.setDefaultTimeout(STEP_MS);
  const page = await context.newPage();
  page.on('request', (r) => {
    if (r.url().includes('/socket.io/?') && r.url().includes('transport=polling')) result.polls += 1;
  });
  page.on('websocket', (ws) => result.websockets.push(ws.url()));
  await page.goto(`${url}/`);
  result.login = await page.evaluate(async () => {
    const r = await fetch('/login', {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
      body: 'username=browser&password=any',
    });
    return { status: r.status, ...(await r.json()) };
  });
  const transports = await page.evaluate(
    ([joinToken, stepMs]) =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no connect and upgrade in time')), stepMs);
        const socket = window.io({ transports: ['polling', 'websocket'], reconnection: false });
        let first = null;
        let upgraded = false;
        // The manager opens once the engine's handshake is done, before any upgrade probe.
        socket.io.on('open', () => {
          first = socket.io.engine.transport.name;
          socket.io.engine.once('upgrade', () => {
            upgraded = true;
            if (socket.connected) finish();
          });
        });
        const finish = () => {
          socket.emit('join', joinToken);
          clearTimeout(timer);
          resolve({ first, after: socket.io.engine.transport.name });
        };
        socket.on('connect_error', (e) => reject(new Error(`socket.io refused: ${e.message}`)));
        socket.on('connect', () => {
          if (upgraded || first === 'websocket') finish();
        });
      }),
    [token, STEP_MS],
  );
  result.first = transports.first;
  result.after = transports.after;
  result.me = await page.evaluate(async () => {
    const r = await fetch('/me', { headers: { accept: 'application/json' } });
    return { status: r.status, ...(await r.json()) };
  });
  result.ok = result.login.status === 200 && result.first === 'polling' && result.after === 'websocket' && result.me.status === 200 && result.me.worker === result.login.worker;
}

const overall = setTimeout(() => {
  result.timedOut = true;
  console.log(JSON.stringify(result));
  process.exit(1);
}, timeoutMs);
main()
  .catch((e) => result.errors.push(e && e.message ? e.message.split('\n')[0] : String(e)))
  .finally(async () => {
    clearTimeout(overall);
    if (browser) await browser.close().catch(() => {});
    console.log(JSON.stringify(result));
    process.exit(result.ok ? 0 : 1);
  });
