// Startup time: from command to the proxy serving, beside the app's own start time.
//
//   node bench/startup.js BIN APP_DIR_OR_FILE [WORKERS] [ROUNDS]
//
// Per round, interleaved:
//   alone:   WORKERS copies of the app started at once (PORT=p node APP), until every one
//            answers HTTP; the time of the slowest is "the slowest worker's own start time";
//   cluster: BIN --workers WORKERS --delay 0s -- node APP, until the proxy answers HTTP 200
//            (it listens only once every worker accepts connections).
// Prints the medians and the overhead (cluster - alone). Every process is started in its
// own process group and stopped by its PID's group; each wait is bounded.
'use strict';

const { spawn } = require('node:child_process');
const http = require('node:http');
const path = require('node:path');

const [BIN, APP, WORKERS = '4', ROUNDS = '10'] = process.argv.slice(2);
if (!BIN || !APP) {
  console.error('usage: node bench/startup.js BIN APP [WORKERS] [ROUNDS]');
  process.exit(2);
}
const workers = Number(WORKERS);
const rounds = Number(ROUNDS);
const BASE = 18300;
const LIMIT_MS = 30_000;

function get(port) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/', agent: false }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('error', () => resolve(0));
    req.setTimeout(1000, () => req.destroy());
  });
}

// Resolves with ms since `t0` once `port` answers with a status `ok` accepts.
async function answered(port, t0, ok) {
  for (;;) {
    const status = await get(port);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    if (ok(status)) return ms;
    if (ms > LIMIT_MS) throw new Error(`nothing answered on :${port} within ${LIMIT_MS} ms`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

function start(cmd, args, env) {
  const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: 'ignore', detached: true });
  child.on('error', (e) => { console.error(`cannot run ${cmd}: ${e.message}`); process.exit(1); });
  return child;
}

function stop(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', resolve);
    try { process.kill(-child.pid, 'SIGTERM'); } catch { resolve(); }
    setTimeout(() => { try { process.kill(-child.pid, 'SIGKILL'); } catch { /* gone */ } }, 5000);
  });
}

async function alone() {
  const t0 = process.hrtime.bigint();
  const children = [];
  for (let i = 0; i < workers; i++) {
    children.push(start('node', [APP], { PORT: String(BASE + 1 + i), WORKER_ID: String(i) }));
  }
  try {
    const times = await Promise.all(children.map((_, i) => answered(BASE + 1 + i, t0, (s) => s > 0)));
    return Math.max(...times);
  } finally {
    await Promise.all(children.map(stop));
  }
}

async function cluster() {
  const t0 = process.hrtime.bigint();
  const child = start(BIN, [
    '--bind', '127.0.0.1', '--proxy-port', String(BASE), '--worker-port', String(BASE + 1),
    '--workers', String(workers), '--delay', '0s', '--', 'node', APP,
  ], {});
  try {
    return await answered(BASE, t0, (s) => s >= 200 && s < 500);
  } finally {
    await stop(child);
  }
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

(async () => {
  const a = [];
  const c = [];
  for (let r = 0; r < rounds; r++) {
    a.push(await alone());
    c.push(await cluster());
  }
  const ma = median(a);
  const mc = median(c);
  const overhead = c.map((x, i) => x - a[i]);
  console.log(`app: ${path.relative(process.cwd(), path.resolve(APP))}, ${workers} workers, ${rounds} rounds`);
  console.log('| | median ms | min | max |');
  console.log('|---|---|---|---|');
  console.log(`| ${workers} workers alone (slowest ready) | ${ma.toFixed(0)} | ${Math.min(...a).toFixed(0)} | ${Math.max(...a).toFixed(0)} |`);
  console.log(`| sticky-cluster: command to proxy serving | ${mc.toFixed(0)} | ${Math.min(...c).toFixed(0)} | ${Math.max(...c).toFixed(0)} |`);
  console.log(`| overhead (per round: cluster - alone) | ${median(overhead).toFixed(0)} | ${Math.min(...overhead).toFixed(0)} | ${Math.max(...overhead).toFixed(0)} |`);
})().catch((e) => { console.error(e.message); process.exit(1); });
