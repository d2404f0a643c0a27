// Cookie-less socket.io polling clients whose every HTTP request goes to the other proxy than
// the one before, for tests/shared_table.rs.
//
// usage: node socketio-alternate.js PROXY_A PROXY_B CLIENTS ROUND_TRIPS [TIMEOUT_MS]
//
// A small alternator listens on 127.0.0.1 (an ephemeral port) and forwards each request, in
// turn, to PROXY_A then PROXY_B then PROXY_A... (no keep-alive, so nothing pins a client to
// one proxy). Every client uses long-polling only, sends no cookie, never reconnects, and
// does ROUND_TRIPS `echo` events with ack. Prints one JSON line and exits 0 when every round
// trip was answered: {ok, roundTrips, expectedRoundTrips, forwarded: {a, b}, errors}.
'use strict';
const http = require('http');
const { describe, withTimeout, ioClient, connected } = require('./lib');

const [proxyA, proxyB, clientsArg, roundTripsArg, timeoutArg] = process.argv.slice(2);
if (!proxyA || !proxyB) {
  console.error('usage: node socketio-alternate.js PROXY_A PROXY_B CLIENTS ROUND_TRIPS [TIMEOUT_MS]');
  process.exit(2);
}
const clients = Number(clientsArg);
const roundTrips = Number(roundTripsArg);
const timeoutMs = Number(timeoutArg || 30000);
const STEP_MS = Math.min(10000, timeoutMs);

const targets = [new URL(proxyA), new URL(proxyB)];
const forwarded = { a: 0, b: 0 };
let turn = 0;
const alternator = http.createServer((req, res) => {
  const i = turn++ % 2;
  forwarded[i === 0 ? 'a' : 'b'] += 1;
  const t = targets[i];
  const headers = { ...req.headers, connection: 'close' };
  delete headers.cookie;
  const up = http.request(
    { host: t.hostname, port: t.port, method: req.method, path: req.url, headers, agent: false },
    (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
    },
  );
  up.on('error', (e) => {
    res.writeHead(502);
    res.end(`alternator: ${e.message}`);
  });
  req.pipe(up);
});

async function client(url, n, errors) {
  const socket = ioClient(url, { stepMs: STEP_MS, transports: ['polling'] });
  let done = 0;
  try {
    await connected(socket, STEP_MS, `client ${n} to connect`);
    for (let i = 0; i < roundTrips; i++) {
      const ack = await withTimeout(socket.emitWithAck('echo', i), STEP_MS, `client ${n} ack ${i}`);
      if (ack.data !== i) throw new Error(`client ${n}: ack ${JSON.stringify(ack)} for ${i}`);
      done += 1;
    }
  } catch (e) {
    errors.push(describe(e));
  } finally {
    socket.close();
  }
  return done;
}

alternator.listen(0, '127.0.0.1', async () => {
  const url = `http://127.0.0.1:${alternator.address().port}`;
  const errors = [];
  const overall = setTimeout(() => {
    console.log(JSON.stringify({ ok: false, errors: [...errors, 'overall deadline'], forwarded }));
    process.exit(1);
  }, timeoutMs);
  const counts = await Promise.all(Array.from({ length: clients }, (_, n) => client(url, n, errors)));
  clearTimeout(overall);
  const done = counts.reduce((a, b) => a + b, 0);
  const expected = clients * roundTrips;
  const ok = done === expected && errors.length === 0;
  console.log(JSON.stringify({ ok, roundTrips: done, expectedRoundTrips: expected, forwarded, errors }));
  alternator.close();
  process.exit(ok ? 0 : 1);
});
