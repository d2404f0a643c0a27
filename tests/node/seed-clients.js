// Clients of the seed's example (examples/seed) run through @sticky-cluster/node, for
// tests/npm_package.rs. HTTPS to the proxy (the example's self-signed test certificate).
//
// usage: node seed-clients.js URL USERS TIMEOUT_MS
//
// Each user logs in (POST /login), asks /me five times (every answer 200 from the worker and
// process that logged it in), then connects socket.io with its session cookie (polling, then
// the upgrade to WebSocket): the seed's passport.socketio check accepts only a logged-in
// session, and engine.io's polling requests must all reach one worker. It emits `join` with a
// token that the worker logs ("join TOKEN"), so the test can see which worker got the socket.
// Then the first user's worker is killed with SIGKILL: its /me must come back 200 (the session
// is in the seed's file store) from a new process.
//
// Prints one JSON line: {users: [{worker, pid, token, meWorkers, mePids, upgraded}], errors,
// killed: {pid, newPid, worker, newWorker, failedDuringRespawn}, timedOut}
'use strict';

const https = require('https');
const { io } = require('socket.io-client');

const [url, usersArg, timeoutArg] = process.argv.slice(2);
const USERS = Number(usersArg || 4);
const deadline = Date.now() + Number(timeoutArg || 30000);
const agent = new https.Agent({ rejectUnauthorized: false, keepAlive: false });
const result = { users: [], errors: [], killed: null, timedOut: false };

function request(method, path, cookies, body) {
  return new Promise((resolve, reject) => {
    const headers = { accept: 'application/json' };
    if (cookies.size) headers.cookie = [...cookies].map(([k, v]) => `${k}=${v}`).join('; ');
    if (body) {
      headers['content-type'] = 'application/x-www-form-urlencoded';
      headers['content-length'] = Buffer.byteLength(body);
    }
    const req = https.request(`${url}${path}`, { method, headers, agent, timeout: 5000 }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (text += d));
      res.on('end', () => {
        for (const c of res.headers['set-cookie'] || []) {
          const [pair] = c.split(';');
          const i = pair.indexOf('=');
          cookies.set(pair.slice(0, i), pair.slice(i + 1));
        }
        let json = null;
        try {
          json = JSON.parse(text);
        } catch (_) {
          // not JSON
        }
        resolve({ status: res.statusCode, json, text });
      });
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path} timed out`)));
    req.on('error', reject);
    if (body) req.write(body);
    req.end();
  });
}

function connectSocket(cookies, token) {
  return new Promise((resolve, reject) => {
    const socket = io(url, {
      transports: ['polling', 'websocket'],
      extraHeaders: { cookie: [...cookies].map(([k, v]) => `${k}=${v}`).join('; ') },
      rejectUnauthorized: false,
      reconnection: false,
      timeout: 5000,
    });
    const timer = setTimeout(() => {
      socket.close();
      reject(new Error('socket.io: no connection and upgrade within 8 s'));
    }, 8000);
    socket.on('connect_error', (e) => {
      clearTimeout(timer);
      socket.close();
      reject(new Error(`socket.io refused: ${e.message}`));
    });
    socket.on('connect', () => {
      const engine = socket.io.engine;
      const done = () => {
        socket.emit('join', token);
        // Give the emit time to leave before closing.
        setTimeout(() => {
          clearTimeout(timer);
          socket.close();
          resolve(engine.transport.name === 'websocket');
        }, 200);
      };
      if (engine.transport.name === 'websocket') done();
      else engine.once('upgrade', done);
    });
  });
}

async function user(i) {
  const cookies = new Map();
  const login = await request('POST', '/login', cookies, 'username=user' + i + '&password=any');
  if (login.status !== 200 || !login.json) throw new Error(`user ${i}: login answered ${login.status} ${login.text.slice(0, 200)}`);
  const u = { worker: login.json.worker, pid: login.json.pid, token: `token-${process.pid}-${i}`, meWorkers: [], mePids: [], meStatuses: [], upgraded: false, cookies };
  for (let k = 0; k < 5; k++) {
    const me = await request('GET', '/me', cookies);
    u.meStatuses.push(me.status);
    u.meWorkers.push(me.json && me.json.worker);
    u.mePids.push(me.json && me.json.pid);
  }
  u.upgraded = await connectSocket(cookies, u.token);
  return u;
}

async function killAndRespawn(u) {
  const killed = { pid: u.pid, worker: u.worker, newPid: null, newWorker: null, failedDuringRespawn: 0 };
  process.kill(u.pid, 'SIGKILL');
  while (Date.now() < deadline) {
    try {
      const me = await request('GET', '/me', u.cookies);
      if (me.status === 200 && me.json.pid !== u.pid) {
        killed.newPid = me.json.pid;
        killed.newWorker = me.json.worker;
        return killed;
      }
      if (me.status !== 200) killed.failedDuringRespawn += 1;
    } catch (_) {
      killed.failedDuringRespawn += 1;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  result.timedOut = true;
  return killed;
}

async function main() {
  const users = await Promise.all([...Array(USERS).keys()].map(user));
  result.killed = await killAndRespawn(users[0]);
  result.users = users.map(({ cookies, ...rest }) => rest);
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
