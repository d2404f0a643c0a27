// A real browser (Debian's chromium, driven by playwright-core) against the admin dashboard,
// for tests/admin_browser.rs.
//
// usage: node admin-browser.js ADMIN_URL PROXY_URL WORKERS SCREENSHOT [TIMEOUT_MS]
//
//   ADMIN_URL   the --admin listener, e.g. http://127.0.0.1:9100
//   PROXY_URL   the proxy, which this script sends a bounded stream of requests to
//   WORKERS     how many worker cards the page must show
//   SCREENSHOT  where to save a PNG of the dashboard
//   TIMEOUT_MS  overall deadline (default 60000); every single wait is bounded too
//
// Steps: the page loads (its script from the binary, nothing else) and shows one card per
// worker, all up; 200 requests go through the proxy while the page polls, and the
// requests/s chart and the cards' counts follow; Drain on worker 1 asks for a confirmation
// (Cancel changes nothing), Confirm drains it (the card and /status say so), Undrain brings
// it back; the session look-up answers; Rolling restart (confirmed) replaces the workers.
//
// Prints one JSON line to stdout and exits 0 when every step passed, 1 otherwise.
'use strict';
const { chromium } = require('playwright-core');

const [adminUrl, proxyUrl, workersArg, screenshot, timeoutArg] = process.argv.slice(2);
if (!adminUrl || !proxyUrl || !workersArg || !screenshot) {
  console.error('usage: node admin-browser.js ADMIN_URL PROXY_URL WORKERS SCREENSHOT [TIMEOUT_MS]');
  process.exit(2);
}
const workers = Number(workersArg);
const timeoutMs = Number(timeoutArg || 60000);
const STEP_MS = Math.min(15000, timeoutMs);
const errors = [];
const result = { ok: false, browser: null, requests: 0, steps: [], requestsShown: null,
  peakRps: null, lookup: null, replaced: null, external: [], consoleErrors: [], errors, timedOut: false };
let browser = null;

function describe(err) {
  return err && err.message ? err.message.split('\n')[0] : String(err);
}

function check(cond, what) {
  if (!cond) throw new Error(what);
  result.steps.push(what);
}

async function status() {
  const r = await fetch(`${adminUrl}/status`);
  return r.json();
}

async function cardState(page, id) {
  return page.locator(`article.worker[data-worker="${id}"]`).getAttribute('data-state');
}

async function waitCard(page, id, state) {
  await page.locator(`article.worker[data-worker="${id}"][data-state="${state}"]`).waitFor();
}

async function confirmDialog(page, yes) {
  const dialog = page.locator('dialog#confirm');
  await dialog.waitFor({ state: 'visible' });
  await page.click(yes ? '#confirm-yes' : '#confirm-no');
  await dialog.waitFor({ state: 'hidden' });
}

async function main() {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    timeout: STEP_MS,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  });
  result.browser = browser.version();
  const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
  context.setDefaultTimeout(STEP_MS);
  const page = await context.newPage();
  // The look-up of an unknown key answers 404 on purpose; any other error counts.
  page.on('console', (m) => {
    const where = m.location().url || '';
    if (m.type() === 'error' && !where.includes('/sessions/')) result.consoleErrors.push(`${m.text()} ${where}`);
  });
  page.on('request', (r) => { if (!r.url().startsWith(adminUrl)) result.external.push(r.url()); });

  await page.goto(`${adminUrl}/`);
  await page.waitForFunction((n) => document.querySelectorAll('article.worker').length === n, workers);
  for (let id = 0; id < workers; id += 1) check((await cardState(page, id)) === 'up', `card ${id} shows up`);

  // Bounded traffic while the page polls: 200 requests, 20 at a time.
  const started = Date.now();
  for (let i = 0; i < 10; i += 1) {
    const batch = await Promise.all(Array.from({ length: 20 }, () => fetch(`${proxyUrl}/whoami`).then((r) => r.status)));
    result.requests += batch.filter((s) => s === 200).length;
    await new Promise((r) => setTimeout(r, 150));
  }
  check(result.requests === 200, 'all 200 requests answered 200');
  // The cards' counts come from /status; wait until they add up to what was sent.
  await page.waitForFunction(() => Number(document.body.dataset.polls || 0) >= 3);
  await page.waitForTimeout(1200);
  const st = await status();
  result.requestsShown = st.workers.reduce((n, w) => n + w.requests, 0);
  check(result.requestsShown === 200, 'status counts the 200 requests');
  result.peakRps = await page.evaluate(() => Math.max(...history.rps));
  check(result.peakRps > 0, 'the requests/s chart saw the traffic');
  result.trafficMs = Date.now() - started;

  // A light bounded trickle (at most 300 requests) while the controls are used, so the
  // screenshot shows live numbers.
  let trickling = true;
  const trickle = (async () => {
    for (let i = 0; i < 300 && trickling; i += 1) {
      await fetch(`${proxyUrl}/whoami`).catch(() => {});
      await new Promise((r) => setTimeout(r, 40));
    }
  })();

  // Drain: Cancel changes nothing; Confirm drains.
  await page.click('article.worker[data-worker="1"] button.control');
  await confirmDialog(page, false);
  check((await status()).workers[1].drained === false, 'cancel leaves worker 1 as it was');
  await page.click('article.worker[data-worker="1"] button.control');
  await confirmDialog(page, true);
  await waitCard(page, 1, 'drained');
  check((await status()).workers[1].drained === true, 'confirm drains worker 1');

  // The look-up, for a key nobody holds.
  await page.fill('#key', 'no-such-session');
  await page.click('#find');
  await page.locator('#found', { hasText: 'no worker holds it' }).waitFor();
  result.lookup = await page.textContent('#found');
  check(true, 'the session look-up answers');

  await page.waitForTimeout(2500);
  await page.screenshot({ path: screenshot, fullPage: true });
  trickling = false;
  await trickle;

  await page.click('article.worker[data-worker="1"] button.control');
  await confirmDialog(page, true);
  await waitCard(page, 1, 'up');
  check((await status()).workers[1].drained === false, 'undrain brings worker 1 back');

  // Rolling restart, confirmed: every worker gets a new process.
  const before = (await status()).workers.map((w) => w.pid);
  await page.click('#reload');
  await confirmDialog(page, true);
  const deadline = Date.now() + 40000;
  for (;;) {
    const s = await status();
    if (s.workers.every((w) => w.replacements === 1 && w.state === 'up')) break;
    if (Date.now() > deadline) throw new Error('the rolling restart did not finish in 40 s');
    await new Promise((r) => setTimeout(r, 200));
  }
  const after = (await status()).workers.map((w) => w.pid);
  result.replaced = { before, after };
  check(after.every((p, i) => p !== before[i]), 'rolling restart replaced every worker');
  check(result.external.length === 0, 'the page loaded nothing from elsewhere');
  check(result.consoleErrors.length === 0, 'no console errors');
}

let finished = false;
async function finish(timedOut) {
  if (finished) return;
  finished = true;
  result.timedOut = timedOut;
  if (timedOut) errors.push(`overall deadline of ${timeoutMs} ms passed`);
  result.ok = errors.length === 0;
  const closing = browser ? browser.close().catch(() => {}) : Promise.resolve();
  await Promise.race([closing, new Promise((r) => setTimeout(r, 5000))]);
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(result.ok ? 0 : 1));
}

setTimeout(() => finish(true), timeoutMs);
main()
  .catch((err) => errors.push(describe(err)))
  .finally(() => finish(false));
