'use strict';
// WebSocket load client for bench/ws.sh. Three phases, each bounded in count and time:
//   1. open CONNS connections to URL (each with its own Cookie: connect.sid=s<i>, so the
//      proxy routes them as distinct sessions), at most OPEN_CONCURRENCY handshakes at once;
//      then write DIR/opened and wait (<= WAIT_S) for DIR/go to exist (idle phase: the
//      caller reads the proxy's RSS meanwhile);
//   2. message storm: every connection sends MSGS messages of SIZE bytes one after the
//      other (next one when the echo of the previous comes back), <= STORM_S seconds; then
//      write DIR/stormed and wait (<= WAIT_S) for DIR/close;
//      each echo's round trip (send to its echo) is kept, for p50/p99/p99.9 in ms;
//   3. close every connection and exit.
// Prints one JSON line per phase on stdout. Env: URL, CONNS=10000, OPEN_CONCURRENCY=200,
// MSGS=10, SIZE=64, STORM_S=120, WAIT_S=300, OPEN_TIMEOUT_MS=10000, DIR (required).
const fs = require('fs');
const path = require('path');
const WebSocket = require('ws');

const URL = process.env.URL || 'ws://127.0.0.1:18180/';
const CONNS = Number(process.env.CONNS || 10000);
const CONC = Number(process.env.OPEN_CONCURRENCY || 200);
const MSGS = Number(process.env.MSGS || 10);
const SIZE = Number(process.env.SIZE || 64);
const STORM_S = Number(process.env.STORM_S || 120);
const WAIT_S = Number(process.env.WAIT_S || 300);
const OPEN_TIMEOUT_MS = Number(process.env.OPEN_TIMEOUT_MS || 10000);
const DIR = process.env.DIR;
if (!DIR) { console.error('DIR is required'); process.exit(2); }

const sockets = [];
let failed = 0;
let closedEarly = 0;
let storming = false;
const firstErrors = {};

function noteError(e) {
  const k = String((e && (e.code || e.message)) || e).slice(0, 80);
  firstErrors[k] = (firstErrors[k] || 0) + 1;
}

function openOne(i) {
  return new Promise((resolve) => {
    const ws = new WebSocket(URL, {
      headers: { Cookie: `connect.sid=s${i}` },
      perMessageDeflate: false,
      handshakeTimeout: OPEN_TIMEOUT_MS,
    });
    let settled = false;
    const done = (ok) => { if (!settled) { settled = true; resolve(ok ? ws : null); } };
    ws.on('open', () => done(true));
    ws.on('error', (e) => { if (!settled) { failed++; noteError(e); } done(false); });
    ws.on('unexpected-response', (req, res) => { failed++; noteError(`HTTP ${res.statusCode}`); done(false); });
    ws.on('close', () => { if (settled && !ws._benchClosing) closedEarly++; done(false); });
  });
}

function waitFile(name, seconds) {
  const file = path.join(DIR, name);
  const until = Date.now() + seconds * 1000;
  return new Promise((resolve) => {
    const t = setInterval(() => {
      if (fs.existsSync(file) || Date.now() > until) { clearInterval(t); resolve(fs.existsSync(file)); }
    }, 100);
  });
}

// Round-trip percentiles in ms (nearest rank), two decimals.
function percentiles(ms) {
  const sorted = Float64Array.from(ms).sort();
  const at = (q) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] : NaN);
  const r = (x) => Math.round(x * 100) / 100;
  return { p50_ms: r(at(0.5)), p99_ms: r(at(0.99)), p999_ms: r(at(0.999)) };
}

async function main() {
  const t0 = Date.now();
  let next = 0;
  async function opener() {
    while (next < CONNS) {
      const i = next++;
      const ws = await openOne(i);
      if (ws) sockets.push(ws);
    }
  }
  await Promise.all(Array.from({ length: Math.min(CONC, CONNS) }, opener));
  const openMs = Date.now() - t0;
  console.log(JSON.stringify({ phase: 'open', open: sockets.length, failed, open_ms: openMs, errors: firstErrors }));
  fs.writeFileSync(path.join(DIR, 'opened'), String(sockets.length));
  if (!(await waitFile('go', WAIT_S))) { console.error('no go signal'); process.exit(1); }

  // storm
  const stillOpen = sockets.filter((ws) => ws.readyState === WebSocket.OPEN);
  const payload = Buffer.alloc(SIZE, 'x');
  let echoed = 0;
  let bad = 0;
  const rtt = new Float64Array(stillOpen.length * MSGS);
  const s0 = process.hrtime.bigint();
  storming = true;
  await new Promise((resolve) => {
    let pending = stillOpen.length;
    if (pending === 0) return resolve();
    const timer = setTimeout(resolve, STORM_S * 1000);
    const finish = () => { if (--pending === 0) { clearTimeout(timer); resolve(); } };
    for (const ws of stillOpen) {
      let sent = 1;
      let sentAt = process.hrtime.bigint();
      ws.on('message', (data) => {
        if (!storming) return;
        const now = process.hrtime.bigint();
        if (data.length !== SIZE) bad++;
        rtt[echoed++] = Number(now - sentAt) / 1e6;
        if (sent < MSGS) { sent++; sentAt = now; ws.send(payload); } else finish();
      });
      ws.once('close', finish);
      ws.send(payload);
    }
  });
  storming = false;
  const stormMs = Number(process.hrtime.bigint() - s0) / 1e6;
  console.log(JSON.stringify({
    phase: 'storm', connections: stillOpen.length, messages: echoed, expected: stillOpen.length * MSGS,
    bad_echo: bad, storm_ms: Math.round(stormMs), msgs_per_s: Math.round(echoed / (stormMs / 1000)),
    closed_early: closedEarly, ...percentiles(rtt.subarray(0, echoed)),
  }));
  fs.writeFileSync(path.join(DIR, 'stormed'), String(echoed));
  await waitFile('close', WAIT_S);
  for (const ws of sockets) { ws._benchClosing = true; ws.terminate(); }
  console.log(JSON.stringify({ phase: 'closed', closed_early: closedEarly }));
  setTimeout(() => process.exit(0), 200);
}

main().catch((e) => { console.error(e); process.exit(1); });
