// A plain Node worker for the COMMAND-mode tests (no npm packages needed).
// GET /whoami          -> JSON {worker, pid, session, sticky}
// GET /login?id=X      -> sets connect.sid=X (as express-session would after login)
// GET /close           -> stops listening and drops open connections (process stays alive)
// GET /exit            -> exits with code 3
// GET /slow?ms=N        -> answers after N ms
// GET /hold             -> answers on /release (or after 30 s); GET /held -> how many wait
// GET /health           -> 200, or 500 after /sick (until /heal)
// env CRASH_WORKER=N    -> worker N exits 300 ms after it starts listening
// env HOST=IP           -> listens on IP (127.0.0.1 when unset)
// GET /bus/send?msg=X  -> {"type":"message"} to the supervisor (the message bus)
// GET /bus/broadcast?msg=X, /bus/bind?key=K, /bus/unbind?key=K, /bus/garbage?n=N&big=1
// GET /bus/inbox        -> JSON array of bus messages received so far
// anything else        -> "worker N"
// env TLS_CERT + TLS_KEY -> the worker serves HTTPS with that certificate (--worker-tls tests)
const fs = require('fs');
const http = require('http');
const https = require('https');
const net = require('net');
const { cookieValue } = require('./lib');
const id = process.env.WORKER_ID;

const inbox = [];
const held = [];
const release = () => { for (const done of held.splice(0)) done(); };
let sick = false;
let bus = null;
if (process.env.STICKY_CLUSTER_IPC) {
  bus = net.connect(process.env.STICKY_CLUSTER_IPC);
  let buf = '';
  bus.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      inbox.push(JSON.parse(buf.slice(0, i)));
      buf = buf.slice(i + 1);
    }
  });
  bus.on('error', () => {});
}
const post = (msg) => bus && bus.write(JSON.stringify(msg) + '\n');
const serve = process.env.TLS_CERT
  ? (handler) => https.createServer(
    { cert: fs.readFileSync(process.env.TLS_CERT), key: fs.readFileSync(process.env.TLS_KEY) }, handler)
  : (handler) => http.createServer(handler);
const server = serve((req, res) => {
  const url = new URL(req.url, 'http://x');
  const session = cookieValue(req.headers.cookie, 'connect.sid');
  if (url.pathname === '/whoami') {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({
      worker: Number(id), pid: process.pid,
      session,
      sticky: req.headers['x-sticky'] || '',
      tls: !!req.socket.encrypted,
    }));
  } else if (url.pathname === '/login') {
    res.setHeader('set-cookie', `connect.sid=${url.searchParams.get('id')}; Path=/; HttpOnly`);
    res.end(`logged in on worker ${id}`);
  } else if (url.pathname.startsWith('/bus/')) {
    const q = url.searchParams;
    switch (url.pathname) {
      case '/bus/send': post({ type: 'message', data: { text: q.get('msg'), worker: Number(id) } }); break;
      case '/bus/broadcast': post({ type: 'broadcast', data: { text: q.get('msg') } }); break;
      case '/bus/bind': post({ type: 'bind', key: q.get('key') }); break;
      case '/bus/unbind': post({ type: 'unbind', key: q.get('key') }); break;
      case '/bus/garbage':
        for (let i = 0; i < Number(q.get('n') || 100); i++) bus.write('not json at all\n');
        if (q.get('big')) bus.write('x'.repeat(200000) + '\n');
        break;
    }
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(url.pathname === '/bus/inbox' ? inbox : { ok: true, connected: !!bus && !bus.destroyed }));
  } else if (url.pathname === '/hold') {
    const timer = setTimeout(release, 30000);
    held.push(() => { clearTimeout(timer); res.end(`worker ${id} held`); });
  } else if (url.pathname === '/held' || url.pathname === '/release') {
    const waiting = held.length;
    if (url.pathname === '/release') release();
    res.end(String(waiting));
  } else if (url.pathname === '/slow-read') {
    // Reads nothing of the body for `ms`, then all of it; answers its length.
    req.pause();
    setTimeout(() => {
      let n = 0;
      req.on('data', (d) => { n += d.length; });
      req.on('end', () => res.end(String(n)));
      req.resume();
    }, Number(url.searchParams.get('ms') || 1000));
  } else if (url.pathname === '/slow') {
    setTimeout(() => res.end(`worker ${id} slow`), Number(url.searchParams.get('ms') || 1000));
  } else if (url.pathname === '/health') {
    res.statusCode = sick ? 500 : 200;
    res.end(sick ? 'sick' : 'ok');
  } else if (url.pathname === '/sick' || url.pathname === '/heal') {
    sick = url.pathname === '/sick';
    res.end(`worker ${id} ${sick ? 'sick' : 'healed'}`);
  } else if (url.pathname === '/close') {
    setInterval(() => {}, 1 << 30); // stay alive with the port closed
    res.end('closing', () => { server.close(); server.closeAllConnections(); });
  } else if (url.pathname === '/exit') {
    res.end('bye');
    setTimeout(() => process.exit(3), 10);
  } else {
    res.end(`worker ${id}`);
  }
});
server.listen(Number(process.env.PORT), process.env.HOST || '127.0.0.1', () => {
  console.log(`worker ${id} listening on ${process.env.PORT}`);
  if (process.env.CRASH_WORKER === id) setTimeout(() => process.exit(7), 300);
});
process.on('SIGTERM', () => { server.close(); server.closeAllConnections(); process.exit(0); });
