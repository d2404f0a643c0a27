// `require('@sticky-cluster/node/session')`: session hand-off for express-session stores
// (README "Rolling restarts"). `handoff(store, options)` returns the store; in a worker
// started by sticky-cluster with --drain-sessions, a retiring process hands every session
// of the store to its replacement on the bus, and the replacement stores and adopts them.
'use strict';

const crypto = require('crypto');
const { bus: defaultBus, MAX_LINE } = require('./lib/bus');

/** express-session's signed cookie value for `sid` (cookie-signature, then URI-encoded). */
function signedCookie(sid, secret) {
  const mac = crypto.createHmac('sha256', secret).update(sid).digest('base64').replace(/=+$/, '');
  return encodeURIComponent(`s:${sid}.${mac}`);
}

/** The store's sessions as [sid, session] pairs (stores answer all() with an object or an array). */
function entries(sessions) {
  if (Array.isArray(sessions)) return sessions.filter((s) => s && typeof s.id === 'string').map((s) => [s.id, s]);
  return Object.entries(sessions || {});
}

/** Every session of `store`: all(), or list() of ids then get() of each (session-file-store). */
function everySession(store, callback) {
  if (typeof store.all === 'function') {
    store.all((err, sessions) => callback(err, err ? [] : entries(sessions)));
    return;
  }
  store.list((err, files) => {
    if (err) return callback(err, []);
    const ids = (files || []).map((f) => String(f).replace(/\.json$/, ''));
    const found = [];
    let left = ids.length;
    if (left === 0) return callback(null, found);
    for (const sid of ids) {
      store.get(sid, (e, session) => {
        if (!e && session) found.push([sid, session]);
        if (--left === 0) callback(null, found);
      });
    }
  });
}

/**
 * Wraps an express-session store (it needs set(), and all() or list() and get()) for session
 * hand-off.
 * options.secret: the session middleware's secret, so each session is handed off under its
 * cookie value, the key the proxy pins (without it the key is the session id, and sessions
 * still move but are re-pinned only when the old process is gone).
 * options.key(sid): the proxy's key for a session id, instead of the signed cookie.
 */
function handoff(store, options = {}) {
  const listable = store && (typeof store.all === 'function' || (typeof store.list === 'function' && typeof store.get === 'function'));
  if (!listable || typeof store.set !== 'function') {
    throw new TypeError('session.handoff(store): the store needs set() and all() (or list() and get()); express-session MemoryStore has them');
  }
  const bus = options.bus || defaultBus;
  const secret = Array.isArray(options.secret) ? options.secret[0] : options.secret;
  const keyOf = options.key || (secret ? (sid) => signedCookie(sid, secret) : (sid) => sid);
  if (!bus.available) return store;
  bus.on('drain', () => {
    everySession(store, (err, sessions) => {
      if (!err) {
        for (const [sid, session] of sessions) {
          try {
            bus.handoff(keyOf(sid), { sid, session });
          } catch (e) {
            // Over the bus's line limit: this session stays with the retiring process.
            if (!(e instanceof RangeError)) throw e;
          }
        }
      }
      bus.handoffEnd();
    });
  });
  bus.on('handoff', (key, data) => {
    if (!data || typeof data.sid !== 'string' || typeof data.session !== 'object') return;
    store.set(data.sid, data.session, (err) => {
      if (!err) bus.adopt(key);
    });
  });
  return store;
}

module.exports = { handoff, signedCookie, MAX_LINE };
