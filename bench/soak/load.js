#!/usr/bin/env node
// Bounded mixed load for bench/soak.sh, with no npm packages (Node >= 18).
//
//   node load.js   (everything from the environment)
//
//   TARGET      proxy base URL, e.g. http://127.0.0.1:20000 (loopback only: anything else
//               is refused)
//   DURATION    seconds to run (the loop also stops at MAX_REQUESTS)
//   STICKY      keep-alive clients with a fixed session each (default 24)
//   FRESH       clients that open a new session every round (default 4)
//   WS          WebSocket clients, each pinned by its session cookie (default 4)
//   PAUSE_MS    pause between one client's requests (default 20)
//   MAX_REQUESTS  hard cap on HTTP requests in total (default 2,000,000)
//   EVENTS      file to append JSON lines to: every session move and every failure
//   SUMMARY     file to write the final JSON summary to (also printed on stdout)
//
// Sticky clients: the first GET /whoami opens a session (Set-Cookie connect.sid and the
// affinity cookie); every later request sends both back and must land on the same worker.
// A change of worker is a "move" (expected once for each client of a worker that was
// killed; the soak script matches moves against its kills). Fresh clients: GET /whoami
// without cookies, then again with the cookies they got: both must be the same worker.
// WebSocket clients: upgrade /ws with their session cookie, send a text message every
// second, and check the echo ("worker N: ...") comes from the session's worker; a tunnel
// that closes (its worker killed or drained by a rolling restart) is reopened.
'use strict';

const http = require('http');
const net = require('net');
const crypto = require('crypto');
const fs = require('fs');

const env = (k, d) => (process.env[k] === undefined || process.env[k] === '' ? d : process.env[k]);
const TARGET = new URL(env('TARGET', 'http://127.0.0.1:8080'));
if (!['127.0.0.1', 'localhost', '[::1]'].includes(TARGET.hostname)) {
  console.error(`load.js: refusing non-loopback target ${TARGET.hostname}`);
  process.exit(2);
}
const HOST = TARGET.hostname === 'localhost' ? '127.0.0.1' : TARGET.hostname.replace(/[[\]]/g, '');
const PORT = Number(TARGET.port || 80);
const DURATION = Number(env('DURATION', '60'));
const STICKY = Number(env('STICKY', '24'));
const FRESH = Number(env('FRESH', '4'));
const WS = Number(env('WS', '4'));
const PAUSE_MS = Number(env('PAUSE_MS', '20'));
const MAX_REQUESTS = Number(env('MAX_REQUESTS', '2000000'));
const EVENTS = env('EVENTS', '');
const SUMMARY = env('SUMMARY', '');

const started = Date.now();
const deadline = started + DURATION * 1000;
const running = () => Date.now() < deadline && stats.requests < MAX_REQUESTS;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => Date.now() / 1000;

const stats = {
  requests: 0, ok: 0, failed: 0, failed_status: {}, failed_errors: {},
  sessions: 0, moves: 0, fresh_pairs: 0, fresh_split: 0,
  ws_opened: 0, ws_messages: 0, ws_wrong_worker: 0, ws_closed: 0, ws_failed: 0,
  latency_ms: { p50: 0, p99: 0, max: 0 },
};
const latencies = [];
let events = null;
if (EVENTS) events = fs.openSync(EVENTS, 'a');
const event = (e) => { if (events !== null) fs.writeSync(events, JSON.stringify({ t: now(), ...e }) + '\n'); };

function bump(map, key) { map[key] = (map[key] || 0) + 1; }

// One GET with a 10 s timeout; resolves {status, headers, body} or {error}.
function get(agent, path, cookie) {
  return new Promise((resolve) => {
    const t0 = process.hrtime.bigint();
    const headers = cookie ? { cookie } : {};
    const req = http.request({ host: HOST, port: PORT, path, agent, headers, timeout: 10000 }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const ms = Number(process.hrtime.bigint() - t0) / 1e6;
        if (latencies.length < 2000000) latencies.push(ms);
        resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() });
      });
      res.on('error', (e) => resolve({ error: e.code || e.message }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (e) => resolve({ error: e.code || e.message }));
    req.end();
  });
}

// Counts one request; returns the parsed /whoami body for a 2xx, else null.
function account(r, who) {
  stats.requests++;
  if (r.error || r.status < 200 || r.status > 299) {
    stats.failed++;
    if (r.error) bump(stats.failed_errors, r.error); else bump(stats.failed_status, r.status);
    event({ kind: 'fail', who, status: r.status || null, error: r.error || null, body: r.body ? r.body.slice(0, 200) : null });
    return null;
  }
  stats.ok++;
  try { return JSON.parse(r.body); } catch { return null; }
}

// Cookie pairs from Set-Cookie headers, merged into `jar` (a Map name -> value).
function remember(jar, headers) {
  for (const sc of headers['set-cookie'] || []) {
    const first = sc.split(';')[0];
    const eq = first.indexOf('=');
    if (eq > 0) jar.set(first.slice(0, eq).trim(), first.slice(eq + 1).trim());
  }
}
const cookieHeader = (jar) => [...jar].map(([k, v]) => `${k}=${v}`).join('; ');

async function stickyClient(n) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const jar = new Map();
  let worker = null;
  while (running()) {
    const r = await get(agent, '/whoami', jar.size ? cookieHeader(jar) : null);
    const who = account(r, `sticky-${n}`);
    if (who) {
      remember(jar, r.headers);
      if (worker === null) {
        stats.sessions++;
      } else if (who.worker !== worker) {
        stats.moves++;
        event({ kind: 'move', who: `sticky-${n}`, from: worker, to: who.worker, sticky: who.sticky });
      }
      worker = who.worker;
    } else {
      await sleep(200); // back off a little on failure
    }
    await sleep(PAUSE_MS);
  }
  agent.destroy();
}

async function freshClient(n) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  while (running()) {
    const jar = new Map();
    const a = await get(agent, '/whoami', null);
    const first = account(a, `fresh-${n}`);
    if (first) {
      remember(jar, a.headers);
      stats.sessions++;
      const b = await get(agent, '/whoami', cookieHeader(jar));
      const second = account(b, `fresh-${n}`);
      if (second) {
        stats.fresh_pairs++;
        if (second.worker !== first.worker) {
          stats.fresh_split++;
          event({ kind: 'move', who: `fresh-${n}`, from: first.worker, to: second.worker, sticky: second.sticky });
        }
      }
    }
    await sleep(PAUSE_MS);
  }
  agent.destroy();
}

// --- a minimal WebSocket client (RFC 6455: masked text frames out, unmasked frames in) ---

function wsFrame(text) {
  const payload = Buffer.from(text);
  const mask = crypto.randomBytes(4);
  const len = payload.length;
  const head = len < 126 ? Buffer.from([0x81, 0x80 | len]) : Buffer.from([0x81, 0x80 | 126, len >> 8, len & 255]);
  const body = Buffer.alloc(len);
  for (let i = 0; i < len; i++) body[i] = payload[i] ^ mask[i & 3];
  return Buffer.concat([head, mask, body]);
}

// Parses complete frames off the front of `buf`; returns [frames, rest].
function wsParse(buf) {
  const frames = [];
  for (;;) {
    if (buf.length < 2) break;
    const op = buf[0] & 0x0f;
    let len = buf[1] & 0x7f;
    let off = 2;
    if (len === 126) { if (buf.length < 4) break; len = buf.readUInt16BE(2); off = 4; }
    else if (len === 127) { if (buf.length < 10) break; len = Number(buf.readBigUInt64BE(2)); off = 10; }
    if (buf[1] & 0x80) off += 4; // servers do not mask, but be lenient
    if (buf.length < off + len) break;
    frames.push({ op, data: buf.subarray(off, off + len) });
    buf = buf.subarray(off + len);
  }
  return [frames, buf];
}

// One tunnel: resolves when it closes. `expect` is the worker the session belongs to.
function wsSession(n, cookie, expect) {
  return new Promise((resolve) => {
    const sock = net.connect(PORT, HOST);
    const key = crypto.randomBytes(16).toString('base64');
    let buf = Buffer.alloc(0);
    let upgraded = false;
    let timer = null;
    let seq = 0;
    let done = false;
    const finish = (why) => {
      if (done) return;
      done = true;
      clearInterval(timer);
      sock.destroy();
      resolve(why);
    };
    const killer = setTimeout(() => finish('deadline'), Math.max(0, deadline - Date.now()));
    sock.setTimeout(15000, () => finish('idle'));
    sock.on('connect', () => {
      sock.write(`GET /ws HTTP/1.1\r\nHost: ${HOST}:${PORT}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\nCookie: ${cookie}\r\n\r\n`);
    });
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (!upgraded) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buf.subarray(0, end).toString();
        buf = buf.subarray(end + 4);
        if (!/^HTTP\/1\.1 101/.test(head)) {
          stats.ws_failed++;
          event({ kind: 'ws-fail', who: `ws-${n}`, head: head.split('\r\n')[0] });
          return finish('refused');
        }
        upgraded = true;
        stats.ws_opened++;
        timer = setInterval(() => { if (running()) sock.write(wsFrame(`ping ${n} ${seq++}`)); }, 1000);
      }
      const [frames, rest] = wsParse(buf);
      buf = rest;
      for (const f of frames) {
        if (f.op === 0x8) return finish('closed');
        if (f.op !== 0x1) continue;
        stats.ws_messages++;
        const m = /^worker (\d+): /.exec(f.data.toString());
        if (!m || (expect !== null && Number(m[1]) !== expect)) {
          stats.ws_wrong_worker++;
          event({ kind: 'ws-wrong-worker', who: `ws-${n}`, expect, got: f.data.toString().slice(0, 80) });
        }
      }
    });
    sock.on('error', () => finish('error'));
    sock.on('close', () => { clearTimeout(killer); finish('closed'); });
  });
}

async function wsClient(n) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  while (running()) {
    // (Re)open the session over HTTP first, so the tunnel is pinned like the app's pages.
    const jar = new Map();
    const r = await get(agent, '/whoami', null);
    const who = account(r, `ws-${n}`);
    if (!who) { await sleep(500); continue; }
    remember(jar, r.headers);
    stats.sessions++;
    const r2 = await get(agent, '/whoami', cookieHeader(jar));
    const again = account(r2, `ws-${n}`);
    const expect = again ? again.worker : who.worker;
    const why = await wsSession(n, cookieHeader(jar), expect);
    if (why !== 'deadline') stats.ws_closed++;
    if (running()) await sleep(200);
  }
  agent.destroy();
}

function percentile(sorted, p) {
  if (!sorted.length) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
}

async function main() {
  const jobs = [];
  for (let i = 0; i < STICKY; i++) jobs.push(stickyClient(i));
  for (let i = 0; i < FRESH; i++) jobs.push(freshClient(i));
  for (let i = 0; i < WS; i++) jobs.push(wsClient(i));
  const progress = setInterval(() => {
    console.error(`load: ${Math.round((Date.now() - started) / 1000)}s requests=${stats.requests} failed=${stats.failed} moves=${stats.moves} ws_messages=${stats.ws_messages}`);
  }, 30000);
  await Promise.all(jobs);
  clearInterval(progress);
  latencies.sort((a, b) => a - b);
  stats.latency_ms = {
    p50: +percentile(latencies, 0.5).toFixed(2),
    p99: +percentile(latencies, 0.99).toFixed(2),
    max: +(latencies[latencies.length - 1] || 0).toFixed(2),
  };
  stats.seconds = +((Date.now() - started) / 1000).toFixed(1);
  const out = JSON.stringify(stats);
  if (SUMMARY) fs.writeFileSync(SUMMARY, out + '\n');
  console.log(out);
  if (events !== null) fs.closeSync(events);
}

main().catch((e) => { console.error(e); process.exit(1); });
