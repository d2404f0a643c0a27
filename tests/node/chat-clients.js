// socket.io v4 clients for tests/chat.rs (the chat example behind the proxy).
//
// usage: node chat-clients.js URL COOKIE_A COOKIE_B [TIMEOUT_MS]
//
//   URL         the proxy, e.g. http://127.0.0.1:8080
//   COOKIE_A/B  `Cookie` header values of two logged-in sessions (say, on different workers)
//   TIMEOUT_MS  overall deadline (default 30000); every single wait is bounded too
//
// Steps:
//   1. Two clients that must be refused: one without any cookie, one with a made-up
//      `connect.sid`. Each must get `connect_error` and never `connect`.
//   2. Clients A and B connect with their cookies (polling, then the WebSocket upgrade) and
//      must reach the WebSocket transport.
//   3. A emits `chat` {text}; both A and B must receive it. Then B emits; both must receive
//      that too. Every received `chat` is recorded as {user, text, worker}.
//
// Reconnection is off: nothing that fails is silently retried. Prints one JSON line to stdout
// and exits 0 when every step passed, 1 otherwise:
//   {ok, refused: [{name, refused, message}], clients: {a: {...}, b: {...}}, texts: {a, b},
//    errors, timedOut}
'use strict';
const { describe, withTimeout, ioClient, connected } = require('./lib');

const [url, cookieA, cookieB, timeoutArg] = process.argv.slice(2);
if (!url || !cookieA || !cookieB) {
  console.error('usage: node chat-clients.js URL COOKIE_A COOKIE_B [TIMEOUT_MS]');
  process.exit(2);
}
const timeoutMs = Number(timeoutArg || 30000);
const STEP_MS = Math.min(10000, timeoutMs);

const errors = [];
const sockets = [];
const nonce = `${process.pid}-${Date.now()}`;
const texts = { a: `hello from A ${nonce}`, b: `hello from B ${nonce}` };

function client(cookie) {
  const socket = ioClient(url, { stepMs: STEP_MS, transports: ['polling', 'websocket'], cookie });
  sockets.push(socket);
  return socket;
}

// A client that must be refused: connect_error, and no connect.
async function expectRefused(name, cookie) {
  const socket = client(cookie);
  const r = { name, refused: false, message: null };
  try {
    r.message = await withTimeout(
      new Promise((resolve, reject) => {
        socket.once('connect', () => reject(new Error(`${name}: connected without a login`)));
        socket.once('connect_error', (err) => resolve(describe(err)));
      }),
      STEP_MS,
      `${name}: connect_error`,
    );
    r.refused = true;
  } catch (err) {
    errors.push(describe(err));
  } finally {
    socket.disconnect();
  }
  return r;
}

// A logged-in client: connected, upgraded to the WebSocket, recording every `chat`.
async function connectLoggedIn(name, cookie) {
  const socket = client(cookie);
  const r = { name, connected: false, transport: null, received: [], socket };
  socket.on('chat', (msg) => r.received.push(msg));
  socket.on('disconnect', (reason) => {
    if (!finished) errors.push(`${name}: disconnect: ${reason}`);
  });
  const engine = socket.io.engine;
  const upgraded = new Promise((resolve) => engine.once('upgrade', resolve));
  await connected(
    socket,
    STEP_MS,
    `${name}: connect`,
    (err) => new Error(`${name}: connect_error: ${describe(err)}`),
  );
  r.connected = true;
  if (engine.transport.name !== 'websocket') {
    await withTimeout(upgraded, STEP_MS, `${name}: the websocket upgrade`);
  }
  r.transport = engine.transport.name;
  return r;
}

function waitFor(r, text) {
  const seen = () => r.received.some((m) => m && m.text === text);
  return withTimeout(
    new Promise((resolve) => {
      if (seen()) return resolve();
      const check = () => {
        if (seen()) {
          r.socket.off('chat', check);
          resolve();
        }
      };
      r.socket.on('chat', check);
    }),
    STEP_MS,
    `${r.name} to receive ${JSON.stringify(text)}`,
  );
}

let finished = false;
const result = { ok: false, refused: [], clients: {}, texts, errors, timedOut: false };

function finish(timedOut) {
  if (finished) return;
  finished = true;
  result.timedOut = timedOut;
  if (timedOut) errors.push(`overall deadline of ${timeoutMs} ms passed`);
  for (const s of sockets) s.disconnect();
  result.ok = errors.length === 0;
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(result.ok ? 0 : 1));
}

async function main() {
  result.refused = await Promise.all([
    expectRefused('no cookie', null),
    expectRefused('unknown session', 'connect.sid=AAAAAAAAAAAAAAAAAAAAAA'),
  ]);
  const [a, b] = await Promise.all([connectLoggedIn('a', cookieA), connectLoggedIn('b', cookieB)]);
  const record = (r) => ({ connected: r.connected, transport: r.transport, received: r.received });
  result.clients = { a: record(a), b: record(b) };
  a.socket.emit('chat', { text: texts.a });
  await Promise.all([waitFor(a, texts.a), waitFor(b, texts.a)]);
  b.socket.emit('chat', { text: texts.b });
  await Promise.all([waitFor(a, texts.b), waitFor(b, texts.b)]);
}

setTimeout(() => finish(true), timeoutMs);
main()
  .catch((err) => errors.push(describe(err)))
  .finally(() => finish(false));
