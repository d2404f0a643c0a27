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

/**
 * Wraps an express-session store (it needs all(), set()) for session hand-off.
 * options.secret: the session middleware's secret, so each session is handed off under its
 * cookie value, the key the proxy pins (without it the key is the session id, and sessions
 * still move but are re-pinned only when the old process is gone).
 * options.key(sid): the proxy's key for a session id, instead of the signed cookie.
 */
function handoff(store, options = {}) {
  if (!store || typeof store.all !== 'function' || typeof store.set !== 'function') {
    throw new TypeError('session.handoff(store): the store needs all() and set() (express-session MemoryStore has both)');
  }
  const bus = options.bus || defaultBus;
  const secret = Array.isArray(options.secret) ? options.secret[0] : options.secret;
  const keyOf = options.key || (secret ? (sid) => signedCookie(sid, secret) : (sid) => sid);
  if (!bus.available) return store;
  bus.on('drain', () => {
    store.all((err, sessions) => {
      if (!err) {
        for (const [sid, session] of entries(sessions)) {
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
