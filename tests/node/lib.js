// Helpers shared by the Node scripts in this folder. Only `ioClient` needs npm packages
// (socket.io-client), and loads them when called, so worker.js runs without `npm ci`.
'use strict';

// One line about an error, with what fetch, socket.io and engine.io attach to it.
function describe(err) {
  if (err === undefined || err === null || typeof err !== 'object') return String(err);
  const parts = [err.message || String(err)];
  if (err.cause) parts.push(`cause=${err.cause.code || err.cause.message || err.cause}`);
  if (err.description !== undefined) {
    const d = err.description;
    parts.push(`description=${d && typeof d === 'object' ? d.message || JSON.stringify(d) : d}`);
  }
  const ctx = err.context;
  if (ctx && typeof ctx === 'object') {
    if (ctx.status !== undefined) parts.push(`status=${ctx.status}`);
    if (typeof ctx.responseText === 'string' && ctx.responseText) {
      parts.push(`body=${ctx.responseText.slice(0, 200)}`);
    }
  }
  if (err.data !== undefined) parts.push(`data=${JSON.stringify(err.data)}`);
  return parts.join(' ');
}

// `promise`, or a rejection naming `what` once `ms` have passed.
function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// A new socket.io client that never reconnects; `cookie`, if any, is sent as a header.
function ioClient(url, { stepMs, transports, cookie = null, withCredentials = false }) {
  const { io } = require('socket.io-client');
  const opts = {
    forceNew: true,
    reconnection: false,
    timeout: stepMs,
    transports,
    upgrade: transports.includes('websocket'),
    withCredentials,
  };
  if (cookie) opts.extraHeaders = { cookie };
  return io(url, opts);
}

// Resolves with `socket` once connected; rejects with `onError(err)` on connect_error, or on timeout.
function connected(socket, ms, what, onError = (err) => err) {
  const settled = new Promise((resolve, reject) => {
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', (err) => reject(onError(err)));
  });
  return withTimeout(settled, ms, what);
}

// The value of cookie `name` in a `Cookie` header, or null.
function cookieValue(header, name) {
  const pair = (header || '')
    .split(';')
    .map((s) => s.trim())
    .find((s) => s.startsWith(`${name}=`));
  return pair ? pair.slice(name.length + 1) : null;
}

module.exports = { describe, withTimeout, ioClient, connected, cookieValue };
