'use strict';
// A bounded open-loop load generator (what wrk2 does; wrk2 is not packaged in Debian).
// Requests are scheduled at a fixed RATE for DURATION_S whatever the answers, each with its
// own connect.sid cookie out of SESSIONS; latency runs from the request's SCHEDULED time
// (so a stalled server is charged for the wait: no coordinated omission). At most CONNS
// keep-alive connections: a request due while all are busy waits for one, and that wait
// counts. Every request has a TIMEOUT_MS; after DURATION_S, stragglers get at most
// DRAIN_S more, then the run ends and prints one JSON line:
//   {rate, sent, ok, status:{...}, errors, timeouts, p50_ms, p90_ms, p99_ms, p999_ms, max_ms}
// (percentiles over the requests answered 200; 503s are counted, not timed).
// Env: URL, RATE (req/s), DURATION_S=10, CONNS=256, SESSIONS=10000, TIMEOUT_MS=10000,
//      DRAIN_S=10.
const http = require('http');

const url = new URL(process.env.URL || 'http://127.0.0.1:18080/');
const RATE = Number(process.env.RATE || 1000);
const DURATION_S = Number(process.env.DURATION_S || 10);
const CONNS = Number(process.env.CONNS || 256);
const SESSIONS = Number(process.env.SESSIONS || 10000);
const TIMEOUT_MS = Number(process.env.TIMEOUT_MS || 10000);
const DRAIN_S = Number(process.env.DRAIN_S || 10);
if (!(RATE > 0) || !(DURATION_S > 0)) { console.error('RATE and DURATION_S must be > 0'); process.exit(2); }

const agent = new http.Agent({ keepAlive: true, maxSockets: CONNS, maxFreeSockets: CONNS });
const total = Math.round(RATE * DURATION_S);
const latencies = new Float64Array(total);
let sent = 0, done = 0, ok = 0, errors = 0, timeouts = 0;
const status = {};
const start = process.hrtime.bigint();
const elapsedMs = () => Number(process.hrtime.bigint() - start) / 1e6;

function fire(i) {
  const due = (i * 1000) / RATE;
  const req = http.request({
    agent, host: url.hostname, port: url.port, path: url.pathname, method: 'GET',
    headers: { cookie: `connect.sid=s${i % SESSIONS}` }, timeout: TIMEOUT_MS,
  }, (res) => {
    res.resume();
    res.on('end', () => {
      status[res.statusCode] = (status[res.statusCode] || 0) + 1;
      if (res.statusCode === 200) latencies[ok++] = elapsedMs() - due;
      done++;
    });
  });
  let timedOut = false;
  req.on('timeout', () => { timedOut = true; timeouts++; req.destroy(new Error('timeout')); });
  req.on('error', () => { if (!timedOut) errors++; done++; });
  req.end();
}

// One timer tick per millisecond at most: send every request due by now.
const tick = setInterval(() => {
  const due = Math.min(total, Math.floor((elapsedMs() * RATE) / 1000) + 1);
  while (sent < due) fire(sent++);
  if (sent >= total) clearInterval(tick);
}, 1);

const pct = (sorted, p) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : null);
function report() {
  const s = Array.from(latencies.subarray(0, ok)).sort((a, b) => a - b);
  const r = (x) => (x === null ? null : Math.round(x * 100) / 100);
  console.log(JSON.stringify({
    rate: RATE, sent, answered: done, ok, status, errors, timeouts,
    unanswered: sent - done,
    p50_ms: r(pct(s, 0.5)), p90_ms: r(pct(s, 0.9)), p99_ms: r(pct(s, 0.99)),
    p999_ms: r(pct(s, 0.999)), max_ms: r(s[s.length - 1] ?? null),
  }));
  agent.destroy();
  process.exit(0);
}
const hardStop = setTimeout(report, (DURATION_S + DRAIN_S) * 1000);
const poll = setInterval(() => {
  if (sent >= total && done >= total) { clearTimeout(hardStop); clearInterval(poll); report(); }
}, 20);
