// Logged-in users of examples/node-express for tests/node_express.rs.
//
// usage: node express-clients.js URL USERS PAGES [TIMEOUT_MS]
//
//   URL         the proxy, e.g. http://127.0.0.1:8080
//   USERS       users, all at once; each one, in turn:
//                 1. POST /login (urlencoded username + password), expecting 302 -> /me, and
//                    keeps every cookie set (connect.sid, sticky.worker, ...) in its own jar;
//                 2. PAGES x GET /me with the jar: each must be 200 {user: <its name>};
//                 3. a polling-only socket.io client, then one with the default transports
//                    (polling, then the WebSocket upgrade), both sending the jar's cookies
//                    (`extraHeaders`); each must be accepted and have an `echo` acked with
//                    its user, before and (for the second) after the upgrade.
//   PAGES       GET /me per user
//   TIMEOUT_MS  overall deadline (default 30000); every single wait is bounded too
//
// Also: GET /me without cookies must be 401, and socket.io clients without cookies (one
// polling-only, one with the default transports) must be refused (connect_error).
// Reconnection is off: a refused or broken connection is reported, never retried.
//
// Prints one JSON line to stdout and exits 0 when everything passed, 1 otherwise:
//   {users, loginsOk, pagesExpected, pagesOk, pages401, pagesOther, socketsExpected,
//    socketsOk, socketsFailed, upgraded, echoesOk, anonPage, anonSocketsRefused,
//    anonSocketsAccepted, workers, usersOnSeveralWorkers, usersWithoutAffinityCookie,
//    errors, timedOut}
'use strict';
const { describe, withTimeout, ioClient, connected } = require('./lib');

const [url, usersArg, pagesArg, timeoutArg] = process.argv.slice(2);
if (!url || !(Number(usersArg) > 0) || !(Number(pagesArg) >= 0)) {
  console.error('usage: node express-clients.js URL USERS PAGES [TIMEOUT_MS]');
  process.exit(2);
}
const nUsers = Number(usersArg);
const nPages = Number(pagesArg);
const timeoutMs = Number(timeoutArg || 30000);
const STEP_MS = Math.min(10000, timeoutMs); // bound on any single wait

const errors = [];
const users = [];
const anon = { page: null, refused: 0, accepted: 0, reasons: [] };

// A minimal cookie jar: one host, every cookie on Path=/; a cookie set with an empty value,
// Max-Age<=0 or an Expires in the past is removed.
class Jar {
  constructor() {
    this.cookies = new Map();
  }
  store(response) {
    for (const line of response.headers.getSetCookie()) {
      const [pair, ...attrs] = line.split(';');
      const eq = pair.indexOf('=');
      if (eq <= 0) continue;
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      let expired = value === '';
      for (const attr of attrs) {
        const [k, v = ''] = attr.split('=');
        const key = k.trim().toLowerCase();
        if (key === 'max-age' && Number(v) <= 0) expired = true;
        if (key === 'expires' && Date.parse(v.trim()) < Date.now()) expired = true;
      }
      if (expired) this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
  }
  header() {
    return [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ');
  }
}

async function request(path, jar, init = {}) {
  const headers = { ...(init.headers || {}) };
  if (jar && jar.cookies.size) headers.cookie = jar.header();
  const response = await fetch(new URL(path, url), {
    ...init,
    headers,
    redirect: 'manual',
    signal: AbortSignal.timeout(STEP_MS),
  });
  if (jar) jar.store(response);
  const text = await response.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch (_) {
    // not JSON (a redirect's body, say)
  }
  return { status: response.status, location: response.headers.get('location'), text, json };
}

// Connects a socket.io client and resolves with it, or rejects with the connect_error.
function connect(cookie, transports) {
  const socket = ioClient(url, { stepMs: STEP_MS, transports, cookie });
  return connected(socket, STEP_MS, 'connect').catch((err) => {
    socket.disconnect();
    throw err;
  });
}

async function echo(socket, user, data) {
  const reply = await socket.timeout(STEP_MS).emitWithAck('echo', data);
  if (!reply || reply.user !== user.name || JSON.stringify(reply.data) !== JSON.stringify(data)) {
    throw new Error(`bad echo reply ${JSON.stringify(reply)} for ${user.name} ${JSON.stringify(data)}`);
  }
  user.echoes += 1;
  if (!user.workers.includes(reply.worker)) user.workers.push(reply.worker);
  return reply;
}

async function runSocket(user, kind) {
  const fail = (msg) => {
    user.socketsFailed += 1;
    user.errors.push(`${kind} socket: ${msg}`);
  };
  let socket;
  try {
    socket = await connect(user.jar.header(), kind === 'polling' ? ['polling'] : ['polling', 'websocket']);
  } catch (err) {
    return fail(`refused: ${describe(err)}`);
  }
  let broken = null;
  socket.on('disconnect', (reason, description) => {
    broken = `disconnect: ${reason} ${describe(description)}`;
  });
  const engine = socket.io.engine;
  const upgraded = new Promise((resolve) => engine.once('upgrade', resolve));
  try {
    await echo(socket, user, { kind, seq: 0 });
    if (kind === 'polling') {
      await echo(socket, user, { kind, seq: 1 });
      if (engine.transport.name !== 'polling') throw new Error(`polling-only client on ${engine.transport.name}`);
    } else {
      if (engine.transport.name !== 'websocket') await withTimeout(upgraded, STEP_MS, 'the websocket upgrade');
      if (engine.transport.name !== 'websocket') throw new Error(`still on ${engine.transport.name}`);
      await echo(socket, user, { kind, seq: 1 });
      if (engine.transport.name !== 'websocket') throw new Error(`fell back to ${engine.transport.name}`);
      user.upgraded = true;
    }
    if (broken) throw new Error(broken);
    user.socketsOk += 1;
  } catch (err) {
    fail(broken ? `${describe(err)} (${broken})` : describe(err));
  } finally {
    socket.disconnect();
  }
}

async function runUser(index) {
  const user = {
    name: `user-${index}`,
    jar: new Jar(),
    loggedIn: false,
    pagesOk: 0,
    pages401: 0,
    pagesOther: 0,
    socketsOk: 0,
    socketsFailed: 0,
    echoes: 0,
    upgraded: false,
    workers: [],
    errors: [],
  };
  users.push(user);
  try {
    const body = new URLSearchParams({ username: user.name, password: `pw-${index}` });
    const login = await request('/login', user.jar, { method: 'POST', body });
    if (login.status !== 302 || login.location !== '/me') {
      throw new Error(`login: ${login.status} ${login.location} ${login.text.slice(0, 200)}`);
    }
    if (!user.jar.cookies.has('connect.sid')) throw new Error('login set no connect.sid');
    user.loggedIn = true;
    for (let i = 0; i < nPages; i++) {
      const page = await request('/me', user.jar);
      if (page.status === 200 && page.json && page.json.user === user.name) {
        user.pagesOk += 1;
        if (!user.workers.includes(page.json.worker)) user.workers.push(page.json.worker);
      } else if (page.status === 401) {
        user.pages401 += 1;
      } else {
        user.pagesOther += 1;
        user.errors.push(`GET /me: ${page.status} ${page.text.slice(0, 200)}`);
      }
    }
  } catch (err) {
    user.errors.push(describe(err));
  }
  if (user.loggedIn) {
    await runSocket(user, 'polling');
    await runSocket(user, 'websocket');
  } else {
    user.socketsFailed += 2;
  }
  for (const e of user.errors) errors.push(`${user.name}: ${e}`);
}

async function runAnonymous() {
  try {
    const page = await request('/me', null);
    anon.page = page.status;
    if (page.status !== 401) errors.push(`anonymous GET /me: ${page.status} ${page.text.slice(0, 200)}`);
  } catch (err) {
    errors.push(`anonymous GET /me: ${describe(err)}`);
  }
  for (const transports of [['polling'], ['polling', 'websocket']]) {
    try {
      const socket = await connect(null, transports);
      socket.disconnect();
      anon.accepted += 1;
      errors.push(`anonymous socket (${transports}) was accepted`);
    } catch (err) {
      anon.refused += 1;
      anon.reasons.push(describe(err));
    }
  }
}

function summary(timedOut) {
  const workers = new Set();
  for (const u of users) for (const w of u.workers) workers.add(w);
  const sum = (f) => users.reduce((n, u) => n + f(u), 0);
  return {
    users: nUsers,
    loginsOk: sum((u) => (u.loggedIn ? 1 : 0)),
    pagesExpected: nUsers * nPages,
    pagesOk: sum((u) => u.pagesOk),
    pages401: sum((u) => u.pages401),
    pagesOther: sum((u) => u.pagesOther),
    socketsExpected: nUsers * 2,
    socketsOk: sum((u) => u.socketsOk),
    socketsFailed: sum((u) => u.socketsFailed),
    upgraded: sum((u) => (u.upgraded ? 1 : 0)),
    echoesOk: sum((u) => u.echoes),
    anonPage: anon.page,
    anonSocketsRefused: anon.refused,
    anonSocketsAccepted: anon.accepted,
    anonRefusals: anon.reasons,
    workers: [...workers].sort(),
    usersOnSeveralWorkers: users.filter((u) => u.workers.length > 1).length,
    usersWithoutAffinityCookie: users.filter((u) => u.loggedIn && !u.jar.cookies.has('sticky.worker')).length,
    errors: timedOut ? [...errors, `overall deadline of ${timeoutMs} ms passed`] : errors,
    timedOut,
  };
}

let done = false;
function finish(timedOut) {
  if (done) return;
  done = true;
  const s = summary(timedOut);
  const passed =
    s.errors.length === 0 &&
    s.loginsOk === nUsers &&
    s.pagesOk === s.pagesExpected &&
    s.socketsOk === s.socketsExpected &&
    s.anonSocketsRefused === 2;
  process.stdout.write(`${JSON.stringify(s)}\n`, () => process.exit(passed ? 0 : 1));
}

setTimeout(() => finish(true), timeoutMs);
const runs = [runAnonymous()];
for (let i = 0; i < nUsers; i++) runs.push(runUser(i));
Promise.allSettled(runs).then(() => finish(false));
