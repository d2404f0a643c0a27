// The dashboard: polls /status and /metrics every second, one card per worker, charts of
// requests/s and p99 worker response time over the last minutes, and the controls behind a
// confirmation. Served by the binary as it is: no build step, no CDN.
'use strict';

const POLL_MS = 1000;
const HISTORY = 300; // points kept: five minutes at one a second
const token = new URLSearchParams(location.search).get('token');
const headers = token ? { Authorization: `Bearer ${token}` } : {};
const history = { t: [], rps: [], p99: [] };
let last = null; // previous /metrics totals, for rates
let perWorkerLast = {};

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  Object.assign(e, attrs || {});
  for (const c of children) e.append(c);
  return e;
}

function duration(s) {
  if (s == null) return '–';
  s = Math.max(0, Math.floor(s));
  if (s >= 86400) return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
  if (s >= 3600) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${s}s`;
}

// Prometheus text into [{name, labels, value}] (what this page needs of the format).
function parseMetrics(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)$/);
    if (!m) continue;
    const labels = {};
    for (const pair of (m[3] || '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}

// Totals the charts and cards need: requests and errors per worker, the histogram summed.
function totals(samples) {
  const t = { requests: 0, workers: {}, buckets: new Map() };
  const w = (id) => (t.workers[id] ||= { requests: 0, errors: 0 });
  for (const s of samples) {
    if (s.name === 'sticky_cluster_requests_total') {
      t.requests += s.value;
      w(s.labels.worker).requests += s.value;
      if (s.labels.code === '5xx') w(s.labels.worker).errors += s.value;
    } else if (s.name === 'sticky_cluster_upstream_errors_total') {
      w(s.labels.worker).errors += s.value;
    } else if (s.name === 'sticky_cluster_request_duration_seconds_bucket') {
      const le = s.labels.le === '+Inf' ? Infinity : Number(s.labels.le);
      t.buckets.set(le, (t.buckets.get(le) || 0) + s.value);
    }
  }
  return t;
}

// p99 (ms) of the responses between two cumulative histograms; null without responses.
function p99(before, now) {
  const bounds = [...now.buckets.keys()].sort((a, b) => a - b);
  const delta = bounds.map((b) => now.buckets.get(b) - ((before && before.buckets.get(b)) || 0));
  const count = delta[delta.length - 1];
  if (!count) return null;
  const rank = 0.99 * count;
  const i = delta.findIndex((c) => c >= rank);
  const b = bounds[i];
  return (b === Infinity ? bounds[bounds.length - 2] : b) * 1000;
}

function card(w, rates) {
  const state = w.drained && w.state === 'up' ? 'drained' : w.state;
  const up = w.started_at && w.pid ? Date.now() / 1000 - w.started_at : null;
  const rate = rates[w.id];
  const action = w.drained ? 'undrain' : 'drain';
  const button = el('button', { textContent: w.drained ? 'Undrain' : 'Drain', className: 'control' });
  button.dataset.action = action;
  button.dataset.worker = w.id;
  const rows = [
    ['pid', w.pid ?? '–'], ['port', w.port ?? '–'], ['uptime', duration(up)],
    ['restarts', w.restarts], ['sessions', w.sessions], ['in flight', w.in_flight],
    ['requests/s', rate ? rate.rps.toFixed(1) : '–'], ['errors', w.errors],
    ['healthy', w.healthy ? 'yes' : 'no'],
  ];
  if (w.last_exit) rows.push(['last exit', w.last_exit]);
  const dl = el('dl');
  for (const [k, v] of rows) dl.append(el('dt', { textContent: k }), el('dd', { textContent: String(v) }));
  const c = el('article', { className: 'card worker' },
    el('h2', {}, `Worker ${w.id}`, el('span', { className: `badge ${state}`, textContent: state })),
    dl, button);
  c.dataset.worker = w.id;
  c.dataset.state = state;
  return c;
}

function draw(canvas, values, color, unit) {
  const ctx = canvas.getContext('2d');
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  const shown = values.map((v) => (v == null ? 0 : v));
  const max = Math.max(1, ...shown) * 1.15;
  ctx.strokeStyle = '#dde1e7';
  ctx.fillStyle = '#6b7585';
  ctx.font = '12px system-ui, sans-serif';
  for (const f of [0, 0.5, 1]) {
    const y = height - 18 - f * (height - 30);
    ctx.beginPath(); ctx.moveTo(40, y); ctx.lineTo(width, y); ctx.stroke();
    ctx.fillText(`${(f * max).toFixed(max < 10 ? 1 : 0)}${unit}`, 2, y + 4);
  }
  ctx.fillText(`last ${Math.round((values.length * POLL_MS) / 1000)}s`, width - 70, height - 2);
  if (values.length < 2) return;
  ctx.strokeStyle = color;
  ctx.lineWidth = 2;
  ctx.beginPath();
  // The x axis spans at least a minute, so a fresh page does not draw one tall spike.
  const span = Math.max(60, shown.length);
  shown.forEach((v, i) => {
    const x = 40 + (i / (span - 1)) * (width - 40);
    const y = height - 18 - (v / max) * (height - 30);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
}

async function get(path) {
  const r = await fetch(path, { headers, cache: 'no-store' });
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return path === '/metrics' ? r.text() : r.json();
}

async function poll() {
  try {
    const [status, text] = await Promise.all([get('/status'), get('/metrics')]);
    const now = totals(parseMetrics(text));
    const at = performance.now();
    const rates = {};
    if (last) {
      const secs = (at - last.at) / 1000;
      history.t.push(at);
      history.rps.push((now.requests - last.t.requests) / secs);
      history.p99.push(p99(last.t, now));
      for (const [id, w] of Object.entries(now.workers)) {
        const before = perWorkerLast[id];
        rates[id] = { rps: before ? (w.requests - before.requests) / secs : 0 };
      }
      for (const k of Object.keys(history)) history[k] = history[k].slice(-HISTORY);
    }
    last = { t: now, at };
    perWorkerLast = now.workers;
    const s = status.settings;
    document.getElementById('facts').textContent =
      `proxy ${s.proxy} · ${status.workers.length} workers · ${status.sessions} sessions · up ${duration(status.uptime_seconds)} · v${status.version}`;
    const cards = status.workers.map((w) => card({ ...w, errors: (now.workers[w.id] || {}).errors ?? w.errors }, rates));
    document.getElementById('workers').replaceChildren(...cards);
    draw(document.getElementById('rps'), history.rps, '#2f6fde', '');
    draw(document.getElementById('p99'), history.p99, '#d98b00', '');
    document.getElementById('error').textContent = '';
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  } catch (e) {
    document.getElementById('error').textContent = `cannot reach the admin listener: ${e.message}`;
  }
}

// Runs `action` after the operator confirms `text` in the dialog.
function confirmThen(text, action) {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-text').textContent = text;
  const yes = document.getElementById('confirm-yes');
  const no = document.getElementById('confirm-no');
  const close = () => { yes.onclick = null; no.onclick = null; dialog.close(); };
  yes.onclick = async () => { close(); await action(); };
  no.onclick = close;
  dialog.showModal();
}

async function post(path) {
  const r = await fetch(path, { method: 'POST', headers });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || `${path}: ${r.status}`);
  return body;
}

document.getElementById('reload').onclick = () =>
  confirmThen('Replace every worker, one by one (as SIGHUP)?', async () => {
    await post('/reload');
    poll();
  });

document.getElementById('workers').addEventListener('click', (e) => {
  const b = e.target.closest('button.control');
  if (!b) return;
  const { action, worker } = b.dataset;
  const text = action === 'drain'
    ? `Drain worker ${worker}? It gets no new sessions; its current ones stay.`
    : `Undrain worker ${worker}? It takes new sessions again.`;
  confirmThen(text, async () => {
    await post(`/workers/${worker}/${action}`);
    poll();
  });
});

document.getElementById('find').onclick = async () => {
  const key = document.getElementById('key').value.trim();
  if (!key) return;
  const r = await fetch(`/sessions/${encodeURIComponent(key)}`, { headers });
  const body = await r.json().catch(() => ({}));
  document.getElementById('found').textContent =
    r.ok ? `worker ${body.worker}` : r.status === 404 ? 'no worker holds it' : `error ${r.status}`;
};

poll();
setInterval(poll, POLL_MS);
