// The worker's end of the message bus (README "Worker message bus"): newline-delimited JSON
// over the Unix socket named by STICKY_CLUSTER_IPC. Connects on first use, queues what is sent
// while (re)connecting, and reconnects if the supervisor restarts the socket.
'use strict';

const net = require('net');
const { EventEmitter } = require('events');

/** Longest line the supervisor accepts (it disconnects a worker that sends more). */
const MAX_LINE = 64 * 1024;
/** Lines kept while disconnected; the oldest are dropped past this. */
const QUEUE_MAX = 1024;
const RETRY_MIN_MS = 50;
const RETRY_MAX_MS = 1000;
const WATCH = `${JSON.stringify({ type: 'watch' })}\n`;

class Bus extends EventEmitter {
  constructor(path) {
    super();
    this.path = path;
    this.socket = null;
    this.connected = false;
    this.queue = [];
    this.retryMs = RETRY_MIN_MS;
    this.buffer = '';
    this.closed = false;
  }

  /** True in a process started by sticky-cluster (it has a bus socket). */
  get available() {
    return Boolean(this.path);
  }

  /** This worker's index (WORKER_ID), or null outside a worker. */
  get id() {
    const id = process.env.WORKER_ID;
    return id === undefined ? null : Number(id);
  }

  /** Sends `data` to the supervisor (`--on-message`, the master's workerListener). */
  send(data) {
    this.write({ type: 'message', data });
  }

  /** Sends `data` to every other worker. */
  broadcast(data) {
    this.write({ type: 'broadcast', data });
  }

  /** Sends `data` to worker `id`. */
  sendTo(id, data) {
    if (!Number.isInteger(id) || id < 0) throw new TypeError(`bus.sendTo: worker id must be a non-negative integer, got ${id}`);
    this.write({ type: 'send', to: id, data });
  }

  /** Pins session key `key` to this worker (after login rotated the session id). */
  bind(key) {
    this.write({ type: 'bind', key: String(key) });
  }

  /** Forgets session key `key` (logout). */
  unbind(key) {
    this.write({ type: 'unbind', key: String(key) });
  }

  /** Session hand-off, retiring side: hands session `key` and its `data` to the replacement. */
  handoff(key, data) {
    this.write({ type: 'handoff', key: String(key), data });
  }

  /** Session hand-off, retiring side: every session was handed off. */
  handoffEnd() {
    this.write({ type: 'handoff-end' });
  }

  /** Session hand-off, replacement side: session `key` is stored here now; re-pin it. */
  adopt(key) {
    this.write({ type: 'adopt', key: String(key) });
  }

  /** Closes the connection for good. */
  close() {
    this.closed = true;
    if (this.socket) this.socket.destroy();
  }

  write(msg) {
    if (!this.path) {
      throw new Error('sticky-cluster bus: STICKY_CLUSTER_IPC is not set; the bus exists only in workers started by sticky-cluster');
    }
    const line = `${JSON.stringify(msg)}\n`;
    if (Buffer.byteLength(line) > MAX_LINE) {
      throw new RangeError(`sticky-cluster bus: message of ${Buffer.byteLength(line)} bytes is over the bus's ${MAX_LINE}-byte line limit; send a reference instead`);
    }
    // A socket that is closing (ended by either side) takes no more lines: they wait for
    // the next connection.
    if (this.connected && this.socket.writable) {
      this.socket.write(line);
      return;
    }
    if (this.queue.length >= QUEUE_MAX) this.queue.shift();
    this.queue.push(line);
    this.connect();
  }

  /** Starts listening (also done by the first send and by on('message')). */
  connect() {
    if (this.socket || this.closed || !this.path) return;
    const socket = net.connect(this.path);
    this.socket = socket;
    socket.setEncoding('utf8');
    // A bus alone never keeps a worker alive.
    socket.unref();
    let opened = false;
    socket.on('connect', () => {
      opened = true;
      this.connected = true;
      this.retryMs = RETRY_MIN_MS;
      const queued = this.queue;
      this.queue = [];
      // Worker notices are sent only to connections that ask (every new connection must).
      if (this.listenerCount('worker') > 0) socket.write(WATCH);
      for (const line of queued) socket.write(line);
      this.emit('connect');
    });
    socket.on('data', (chunk) => this.onData(chunk));
    socket.on('end', () => {
      this.connected = false;
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      this.connected = false;
      this.socket = null;
      this.buffer = '';
      if (opened) this.emit('disconnect');
      if (this.closed) return;
      const timer = setTimeout(() => this.connect(), this.retryMs);
      timer.unref();
      this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
    });
  }

  onData(chunk) {
    this.buffer += chunk;
    let i;
    while ((i = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, i);
      this.buffer = this.buffer.slice(i + 1);
      let msg;
      try {
        msg = JSON.parse(line);
      } catch (_) {
        continue;
      }
      if (msg.type === 'message') this.emit('message', msg.data, msg.from);
      else if (msg.type === 'worker') this.emit('worker', { id: msg.id, state: msg.state });
      else if (msg.type === 'drain') this.emit('drain');
      else if (msg.type === 'handoff') this.emit('handoff', msg.key, msg.data, msg.from);
      else if (msg.type === 'adopted') this.emit('adopted', msg.key);
    }
  }
}

// Listening for messages or worker events connects.
function autoConnect(bus) {
  bus.on('newListener', (event) => {
    const listens = ['message', 'worker', 'drain', 'handoff', 'adopted'].includes(event);
    if (listens && bus.available) process.nextTick(() => bus.connect());
    if (event === 'worker' && bus.connected && bus.socket.writable) bus.socket.write(WATCH);
  });
  return bus;
}

module.exports = { Bus, MAX_LINE, bus: autoConnect(new Bus(process.env.STICKY_CLUSTER_IPC)) };
