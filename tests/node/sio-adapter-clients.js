// socket.io clients (the official client) against workers using @sticky-cluster/node's
// adapter, for tests/npm_package.rs.
//
// usage: node sio-adapter-clients.js URL CLIENTS WORKERS TIMEOUT_MS
//
// Connects CLIENTS clients until they sit on every worker, then, each driven from a client on
// one worker and observed on all: io.emit with a binary payload reaches every client; a room
// (the first half of the clients) gets only its own emit; fetchSockets counts every socket;
// serverSideEmit is answered by every other worker; disconnectSockets on the room drops exactly
// its members. Last, one worker is told to stall (not answer serverSideEmit) and killed with
// SIGKILL while another worker's serverSideEmit waits for it: the ack must come at once with
// the live workers' answers, not after the 5 s timeout.
//
// Prints one JSON line: {workers, allGot, binaryOk, roomGot, count, askAll, kicked, killed, errors, timedOut}
'use strict';

const { io } = require('socket.io-client');

const [url, clientsArg, workersArg, timeoutArg] = process.argv.slice(2);
const CLIENTS = Number(clientsArg);
const WORKERS = Number(workersArg);
const deadline = Date.now() + Number(timeoutArg || 30000);
const result = { workers: [], allGot: 0, binaryOk: 0, roomGot: [], count: null, askAll: null, kicked: [], killed: null, errors: [], timedOut: false };

const wait = (what, ms, fn) =>
  new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
    fn((v) => {
      clearTimeout(t);
      resolve(v);
    });
  });

function connect() {
  const socket = io(url, { transports: ['polling', 'websocket'], reconnection: false, timeout: 5000, forceNew: true });
  return wait('connect + hello', 5000, (done) => socket.once('hello', (h) => done({ socket, ...h })));
}

const call = (c, event, ...args) => wait(event, 8000, (done) => c.socket.emit(event, ...args, done));

async function main() {
  const clients = [];
  for (let i = 0; i < CLIENTS; i++) clients.push(await connect());
  result.workers = clients.map((c) => c.worker);
  const byWorker = new Map();
  for (const c of clients) byWorker.set(c.worker, c);
  if (byWorker.size !== WORKERS) throw new Error(`clients landed on ${byWorker.size} workers, not ${WORKERS}`);

  // io.emit with binary, from the first client's worker.
  const payload = Buffer.from([0, 1, 2, 254, 255, 42]);
  const gotAll = clients.map((c) =>
    wait('all', 5000, (done) => c.socket.once('all', (m) => done(m))).then((m) => {
      result.allGot += 1;
      if (Buffer.isBuffer(m.payload) && m.payload.equals(payload)) result.binaryOk += 1;
    }),
  );
  await call(clients[0], 'emit-all', payload);
  await Promise.all(gotAll);

  // A room: the first half join; an emit to it from the last client.
  const members = clients.slice(0, CLIENTS / 2);
  for (const c of members) await call(c, 'join', 'room-a');
  const got = new Set();
  clients.forEach((c, i) => c.socket.on('room', () => got.add(i)));
  await call(clients[CLIENTS - 1], 'emit-room', 'room-a');
  await new Promise((r) => setTimeout(r, 500));
  result.roomGot = [...got].sort((a, b) => a - b);

  result.count = await call(clients[0], 'count');
  result.askAll = await call(clients[0], 'ask-all');

  // disconnectSockets on the room, from the last client's worker.
  const kicked = members.map((c, i) => wait('disconnect', 5000, (done) => c.socket.once('disconnect', (reason) => done(reason))).then((reason) => result.kicked.push({ i, reason })));
  await call(clients[CLIENTS - 1], 'kick', 'room-a');
  await Promise.all(kicked);

  // Kill a worker while a serverSideEmit waits for it.
  const rest = clients.slice(CLIENTS / 2);
  const asker = rest[0];
  const victim = rest.find((c) => c.worker !== asker.worker);
  const victimPid = await call(victim, 'stall');
  const asked = call(asker, 'ask-all');
  await new Promise((r) => setTimeout(r, 300));
  const killedAt = Date.now();
  process.kill(victimPid, 'SIGKILL');
  const answer = await asked;
  result.killed = { worker: victim.worker, asker: asker.worker, answer, msAfterKill: Date.now() - killedAt };
  for (const c of clients) c.socket.close();
}

const overall = setTimeout(() => {
  result.timedOut = true;
  console.log(JSON.stringify(result));
  process.exit(1);
}, Math.max(0, deadline - Date.now()));
main()
  .catch((e) => result.errors.push(e.message))
  .finally(() => {
    clearTimeout(overall);
    console.log(JSON.stringify(result));
    process.exit(0);
  });
