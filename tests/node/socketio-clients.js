// socket.io v4 clients for tests/socketio.rs.
//
// usage: node socketio-clients.js URL POLLING UPGRADING on|off ROUND_TRIPS [TIMEOUT_MS]
//
//   URL          the proxy, e.g. http://127.0.0.1:8080
//   POLLING      number of clients that use HTTP long-polling only
//   UPGRADING    number of clients with the default transports (polling, then a WebSocket
//                upgrade)
//   on|off       on: every client keeps a cookie jar (engine.io-client does so in Node when
//                `withCredentials: true`) and sends its cookies; off: no client ever sends a
//                cookie, so only the proxy's engine.io `sid` routing keeps it on its worker
//   ROUND_TRIPS  `echo` events (with ack) per client
//   TIMEOUT_MS   overall deadline (default 30000); every single wait is bounded too
//
// All clients run at once. Reconnection is off: a session that breaks (for example a request
// routed to a worker that does not know its sid, answered "Session ID unknown") is reported,
// never silently replaced by a new one. Upgrading clients do half their round trips right
// after connecting, then wait for the `upgrade` event and do the rest over the WebSocket.
//
// Prints one JSON line to stdout and exits 0 when every client passed, 1 otherwise:
//   {ok, failed, roundTrips, expectedRoundTrips, workers, upgraded, upgradingClients,
//    allUpgraded, clientsOnSeveralWorkers, acksWithCookie, acksWithoutCookie,
//    cookiesByWorker, errors, sessionIdUnknown, timedOut, clients: [...]}
'use strict';
const { describe, withTimeout, ioClient, connected } = require('./lib');

const [url, pollingArg, upgradingArg, cookiesArg, roundTripsArg, timeoutArg] =
  process.argv.slice(2);
if (!url || !['on', 'off'].includes(cookiesArg)) {
  console.error('usage: node socketio-clients.js URL POLLING UPGRADING on|off ROUND_TRIPS [TIMEOUT_MS]');
  process.exit(2);
}
const nPolling = Number(pollingArg);
const nUpgrading = Number(upgradingArg);
const cookies = cookiesArg === 'on';
const roundTrips = Number(roundTripsArg);
const timeoutMs = Number(timeoutArg || 30000);
const STEP_MS = Math.min(10000, timeoutMs); // bound on any single wait

const ALREADY_REPORTED = Symbol('already reported');
const results = [];
const errors = [];

async function runClient(index, kind) {
  const r = {
    index,
    kind,
    ok: false,
    workers: [],
    answered: 0,
    upgraded: false,
    cookies: [],
    errors: [],
  };
  results.push(r);
  const fail = (msg) => {
    r.errors.push(msg);
    errors.push(`client ${index} (${kind}): ${msg}`);
  };
  const socket = ioClient(url, {
    stepMs: STEP_MS,
    transports: kind === 'polling' ? ['polling'] : ['polling', 'websocket'],
    withCredentials: cookies,
  });
  let closing = false;
  socket.on('connect_error', (err) => fail(`connect_error: ${describe(err)}`));
  socket.on('disconnect', (reason, description) => {
    if (!closing) fail(`disconnect: ${reason} ${describe(description)}`);
  });
  const engine = socket.io.engine;
  const upgraded = new Promise((resolve) => engine.once('upgrade', resolve));
  engine.on('upgradeError', (err) => fail(`upgradeError: ${describe(err)}`));

  const echo = async (seq) => {
    const data = { client: index, seq };
    const reply = await socket.timeout(STEP_MS).emitWithAck('echo', data);
    if (!reply || JSON.stringify(reply.data) !== JSON.stringify(data)) {
      throw new Error(`bad echo reply ${JSON.stringify(reply)} for ${JSON.stringify(data)}`);
    }
    r.answered += 1;
    if (!r.workers.includes(reply.worker)) r.workers.push(reply.worker);
    r.cookies.push(reply.cookie === undefined ? null : reply.cookie);
    return reply;
  };

  try {
    await connected(socket, STEP_MS, 'connect', () => ALREADY_REPORTED);
    const before = kind === 'polling' ? roundTrips : Math.ceil(roundTrips / 2);
    for (let i = 0; i < before; i++) await echo(i);
    if (kind === 'upgrading') {
      if (engine.transport.name !== 'websocket') {
        await withTimeout(upgraded, STEP_MS, 'the websocket upgrade');
      }
      r.upgraded = engine.transport.name === 'websocket';
      if (!r.upgraded) throw new Error(`still on ${engine.transport.name} after upgrade`);
      for (let i = before; i < roundTrips; i++) {
        await echo(i);
        if (engine.transport.name !== 'websocket') {
          throw new Error(`fell back to ${engine.transport.name}`);
        }
      }
    } else if (engine.transport.name !== 'polling') {
      throw new Error(`polling-only client on ${engine.transport.name}`);
    }
    if (r.workers.length !== 1) throw new Error(`answered by several workers ${r.workers}`);
  } catch (err) {
    if (err !== ALREADY_REPORTED) fail(describe(err));
  } finally {
    closing = true;
    socket.disconnect();
  }
  r.ok = r.errors.length === 0 && r.answered === roundTrips;
}

function summary(timedOut) {
  const workers = new Set();
  const cookiesByWorker = {};
  let acksWithCookie = 0;
  let acksWithoutCookie = 0;
  for (const r of results) {
    for (const w of r.workers) workers.add(w);
    for (const c of r.cookies) {
      if (c === null) {
        acksWithoutCookie += 1;
      } else {
        acksWithCookie += 1;
        // Only a client answered by one worker says which worker its cookie names.
        if (r.workers.length === 1) {
          const list = (cookiesByWorker[r.workers[0]] ||= []);
          if (!list.includes(c)) list.push(c);
        }
      }
    }
  }
  const upgrading = results.filter((r) => r.kind === 'upgrading');
  const ok = results.filter((r) => r.ok).length;
  const allErrors = timedOut ? [...errors, `overall deadline of ${timeoutMs} ms passed`] : errors;
  return {
    ok,
    failed: nPolling + nUpgrading - ok,
    roundTrips: results.reduce((n, r) => n + r.answered, 0),
    expectedRoundTrips: (nPolling + nUpgrading) * roundTrips,
    workers: [...workers].sort(),
    upgraded: upgrading.filter((r) => r.upgraded).length,
    upgradingClients: nUpgrading,
    allUpgraded: upgrading.length === nUpgrading && upgrading.every((r) => r.upgraded),
    clientsOnSeveralWorkers: results.filter((r) => r.workers.length > 1).length,
    cookies,
    acksWithCookie,
    acksWithoutCookie,
    cookiesByWorker,
    errors: allErrors,
    sessionIdUnknown: allErrors.filter((e) => e.includes('Session ID unknown')).length,
    timedOut,
    clients: results.map((r) => ({
      index: r.index,
      kind: r.kind,
      ok: r.ok,
      workers: r.workers,
      answered: r.answered,
      upgraded: r.upgraded,
    })),
  };
}

let done = false;
function finish(timedOut) {
  if (done) return;
  done = true;
  const s = summary(timedOut);
  process.stdout.write(`${JSON.stringify(s)}\n`, () =>
    process.exit(s.failed === 0 && s.errors.length === 0 ? 0 : 1),
  );
}

setTimeout(() => finish(true), timeoutMs);
const clients = [];
for (let i = 0; i < nPolling; i++) clients.push(runClient(i, 'polling'));
for (let i = 0; i < nUpgrading; i++) clients.push(runClient(nPolling + i, 'upgrading'));
Promise.allSettled(clients).then(() => finish(false));
