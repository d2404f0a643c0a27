// `require('@sticky-cluster/node/socket.io').createAdapter()`: a socket.io adapter whose
// cluster messages travel over the sticky-cluster bus, so io.emit, rooms, fetchSockets,
// serverSideEmit (with acks) and disconnectSockets reach every worker. Built on
// socket.io-adapter's ClusterAdapterWithHeartbeat, like the official cluster adapter; the
// supervisor tells the bus the moment a worker goes down, and the adapter forgets that
// worker's servers at once instead of waiting for a missed heartbeat.
'use strict';

const path = require('path');
const { bus } = require('./lib/bus');

/** Marks our envelopes among the other messages on the bus. */
const TAG = 'sticky-cluster/socket.io';
/** Characters of serialized message per bus line: at most 3 UTF-8 bytes each, so a line stays under 64 KiB. */
const CHUNK = 16000;
const BINARY = '__sc_bin';

function loadBase() {
  const attempts = [
    () => require('socket.io-adapter'),
    () => require(require.resolve('socket.io-adapter', { paths: [process.cwd(), require.main ? path.dirname(require.main.filename) : process.cwd()] })),
  ];
  for (const attempt of attempts) {
    try {
      const mod = attempt();
      if (mod.ClusterAdapterWithHeartbeat) return mod;
    } catch (_) {
      // next
    }
  }
  throw new Error('@sticky-cluster/node/socket.io: needs socket.io-adapter 2.5.4 or later, with ClusterAdapterWithHeartbeat (socket.io 4.8 installs one); run `npm install socket.io@4`');
}

/** Buffers and typed arrays become { __sc_bin: base64 } so they survive the JSON bus. */
function toWire(v) {
  if (v === null || typeof v !== 'object') return v;
  if (Buffer.isBuffer(v) || ArrayBuffer.isView(v)) return { [BINARY]: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64') };
  if (v instanceof ArrayBuffer) return { [BINARY]: Buffer.from(v).toString('base64') };
  if (Array.isArray(v)) return v.map(toWire);
  if (typeof v.toJSON === 'function') return v.toJSON();
  const out = {};
  for (const [k, x] of Object.entries(v)) if (x !== undefined) out[k] = toWire(x);
  return out;
}

function fromWire(v) {
  if (v === null || typeof v !== 'object') return v;
  if (Array.isArray(v)) return v.map(fromWire);
  const keys = Object.keys(v);
  if (keys.length === 1 && keys[0] === BINARY) return Buffer.from(v[BINARY], 'base64');
  for (const k of keys) v[k] = fromWire(v[k]);
  return v;
}

const adapters = new Set();
/** socket.io server uid -> the worker it lives in (learned from the bus's `from`). */
const workerOf = new Map();
/** Chunks being reassembled: `${from}/${id}` -> string parts. */
const partial = new Map();
let nextId = 0;
let hooked = false;

/** Sends one serialized message (`r`: a response) to `to` (a worker id) or to everyone. */
function ship(nsp, r, message, to) {
  const text = JSON.stringify(toWire(message));
  const id = nextId++;
  const total = Math.max(1, Math.ceil(text.length / CHUNK));
  for (let i = 0; i < total; i++) {
    const envelope = { [TAG]: 1, nsp, r, id, i, n: total, s: text.slice(i * CHUNK, (i + 1) * CHUNK) };
    if (to === undefined) bus.broadcast(envelope);
    else bus.sendTo(to, envelope);
  }
}

function receive(data, from) {
  if (!data || data[TAG] !== 1 || typeof data.s !== 'string') return;
  let text = data.s;
  if (data.n > 1) {
    const key = `${from}/${data.id}`;
    const parts = partial.get(key) || [];
    parts[data.i] = data.s;
    if (parts.filter((p) => p !== undefined).length < data.n) {
      partial.set(key, parts);
      return;
    }
    partial.delete(key);
    text = parts.join('');
  }
  const message = fromWire(JSON.parse(text));
  if (from !== null && message.uid) workerOf.set(message.uid, from);
  for (const adapter of adapters) {
    if (adapter.nsp.name !== data.nsp) continue;
    if (data.r) adapter.onResponse(message);
    else adapter.onMessage(message);
  }
}

/** A worker went down: its servers are gone now; pending requests stop waiting for them. */
function forgetWorker(id) {
  for (const [uid, worker] of workerOf) {
    if (worker !== id) continue;
    workerOf.delete(uid);
    for (const adapter of adapters) adapter.removeNode(uid);
  }
  for (const key of partial.keys()) if (key.startsWith(`${id}/`)) partial.delete(key);
}

function hook() {
  if (hooked) return;
  hooked = true;
  bus.on('message', receive);
  bus.on('worker', ({ id, state }) => {
    if (state === 'down') forgetWorker(id);
  });
}

/**
 * The adapter factory: `new Server(httpServer, { adapter: createAdapter() })` or
 * `io.adapter(createAdapter())`. `opts`: heartbeatInterval / heartbeatTimeout (ms), as the
 * official cluster adapter's.
 */
function createAdapter(opts = {}) {
  if (!bus.available) {
    throw new Error('@sticky-cluster/node/socket.io: STICKY_CLUSTER_IPC is not set; createAdapter() works in workers started by sticky-cluster');
  }
  const { ClusterAdapterWithHeartbeat } = loadBase();
  hook();

  class StickyClusterAdapter extends ClusterAdapterWithHeartbeat {
    constructor(nsp) {
      super(nsp, opts);
      adapters.add(this);
    }

    doPublish(message) {
      ship(message.nsp, 0, message);
      return Promise.resolve('');
    }

    doPublishResponse(requesterUid, response) {
      const to = workerOf.get(requesterUid);
      if (to !== undefined) ship(response.nsp, 1, response, to);
      return Promise.resolve();
    }

    close() {
      adapters.delete(this);
      return super.close();
    }
  }

  return function adapter(nsp) {
    return new StickyClusterAdapter(nsp);
  };
}

module.exports = { createAdapter };
