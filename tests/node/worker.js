// A plain Node worker for the COMMAND-mode tests (no npm packages needed).
// GET /whoami          -> JSON {worker, pid, session, sticky}
// GET /login?id=X      -> sets connect.sid=X (as express-session would after login)
// GET /close           -> stops listening and drops open connections (process stays alive)
// GET /exit            -> exits with code 3
// anything else        -> "worker N"
const http = require('http');
const id = process.env.WORKER_ID;
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  const cookie = (req.headers.cookie || '').split(';').map(s => s.trim())
    .find(s => s.startsWith('connect.sid='));
  if (url.pathname === '/whoami') {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({
      worker: Number(id), pid: process.pid,
      session: cookie ? cookie.slice('connect.sid='.length) : null,
      sticky: req.headers['x-sticky'] || '',
    }));
  } else if (url.pathname === '/login') {
    res.setHeader('set-cookie', `connect.sid=${url.searchParams.get('id')}; Path=/; HttpOnly`);
    res.end(`logged in on worker ${id}`);
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
server.listen(Number(process.env.PORT), '127.0.0.1', () => {
  console.log(`worker ${id} listening on ${process.env.PORT}`);
});
process.on('SIGTERM', () => { server.close(); server.closeAllConnections(); process.exit(0); });
