#!/usr/bin/env node
// Prints the soak summary from OUT_DIR/{load.json,events.jsonl,kills.jsonl} and the figures
// bench/soak.sh passes in the environment. A move of a session is "after a kill" when the
// worker it left was killed at most MOVE_WINDOW seconds (default 15) before the move.
'use strict';
const fs = require('fs');
const path = require('path');

const e = process.env;
const dir = e.OUT_DIR;
const num = (k) => Number(e[k] || 0);
const lines = (f) => {
  try {
    return fs.readFileSync(path.join(dir, f), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
  } catch { return []; }
};
const load = JSON.parse(fs.readFileSync(path.join(dir, 'load.json'), 'utf8'));
const events = lines('events.jsonl');
const kills = lines('kills.jsonl');
const WINDOW = Number(e.MOVE_WINDOW || 15);

const moves = events.filter((x) => x.kind === 'move');
const afterKill = (m) => kills.some((k) => k.worker === m.from && m.t >= k.t - 0.5 && m.t - k.t <= WINDOW);
const explained = moves.filter(afterKill).length;
const unexplained = moves.filter((m) => !afterKill(m));
const fails = events.filter((x) => x.kind === 'fail');
const failsNearKill = fails.filter((f) => kills.some((k) => f.t >= k.t - 0.5 && f.t - k.t <= WINDOW)).length;

const mb = (kb) => `${(kb / 1024).toFixed(1)} MiB`;
const pct = (a, b) => (b ? `${((100 * a) / b).toFixed(3)}%` : '-');
const kv = (o) => Object.entries(o).map(([k, v]) => `${k}: ${v}`).join(', ') || 'none';

const out = [
  `sticky-cluster soak: ${e.WORKERS} demo workers, ${load.seconds} s of load (DURATION=${e.DURATION})`,
  ``,
  `requests sent        ${load.requests}  (${(load.requests / Math.max(1, load.seconds)).toFixed(0)}/s; latency p50 ${load.latency_ms.p50} ms, p99 ${load.latency_ms.p99} ms, max ${load.latency_ms.max} ms)`,
  `failed               ${load.failed}  (${pct(load.failed, load.requests)}; status ${kv(load.failed_status)}; errors ${kv(load.failed_errors)}; ${failsNearKill} within ${WINDOW} s after a kill)`,
  `sessions             ${load.sessions} opened`,
  `sessions moved       ${moves.length}  (${explained} after a kill of the worker they left, ${unexplained.length} otherwise; fresh-session pairs split: ${load.fresh_split} of ${load.fresh_pairs})`,
  `websockets           ${load.ws_opened} opened, ${load.ws_messages} echoes, ${load.ws_wrong_worker} from the wrong worker, ${load.ws_closed} closed under them, ${load.ws_failed} refused`,
  `proxy RSS            start ${mb(num('RSS_START'))}, peak sampled ${mb(num('RSS_MAX'))}, VmHWM ${mb(num('HWM'))}, end ${mb(num('RSS_END'))}`,
  `kills (kill -9)      ${e.KILLS}`,
  `SIGHUPs              ${e.HUPS}  (rolling restarts done: ${e.ROLLS}, stopped: ${e.ROLL_FAIL})`,
  `worker restarts      ${num('RESPAWNS') + num('REPLACED')}  (crash respawns ${e.RESPAWNS}, back up ${e.BACK_UP}; rolling replacements ${e.REPLACED})`,
  `proxy ERROR lines    ${e.ERRORS}`,
  `output               ${dir}`,
];
if (unexplained.length) {
  out.push('', 'moves not following a kill of the worker left (first 10):');
  for (const m of unexplained.slice(0, 10)) out.push(`  ${JSON.stringify(m)}`);
}
console.log(out.join('\n'));
