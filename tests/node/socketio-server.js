// A socket.io v4 worker for tests/socketio.rs: default (in-memory) settings, so a request
// that reaches a worker other than the one holding its engine.io session is refused with
// "Session ID unknown".
//
// Event `echo` (data, ack) -> ack({worker, data, cookie}) where `cookie` is the
// `sticky.worker` cookie value (or null) the latest HTTP request / WebSocket upgrade of this
// engine.io session carried: the clients use it to prove their cookie jar works (or stays
// empty).
//
// Every engine.io connection error is written to stderr as
// `socketio connection_error code=N message=...`, so the test can also check the server side.
const http = require('http');
const { Server } = require('socket.io');
const { cookieValue } = require('./lib');

const id = process.env.WORKER_ID;
const port = Number(process.env.PORT);

const httpServer = http.createServer((req, res) => {
  res.writeHead(404, { 'content-type': 'text/plain' });
  res.end(`worker ${id}: not a socket.io request\n`);
});
const io = new Server(httpServer); // default path /socket.io/, in-memory adapter

function stickyCookie(req) {
  return cookieValue(req.headers.cookie, 'sticky.worker');
}

// Latest sticky.worker cookie per engine.io session id, from every request that names one.
const lastCookie = new Map();
io.engine.on('headers', (_headers, req) => {
  const sid = req._query && req._query.sid;
  if (sid) lastCookie.set(sid, stickyCookie(req));
});

io.engine.on('connection_error', (err) => {
  const url = err.req ? err.req.url : '?';
  console.error(`socketio connection_error code=${err.code} message=${err.message} url=${url}`);
});

io.on('connection', (socket) => {
  const sid = socket.conn.id;
  socket.conn.on('close', () => lastCookie.delete(sid));
  socket.on('echo', (data, ack) => {
    if (typeof ack !== 'function') return;
    ack({
      worker: id,
      data,
      cookie: lastCookie.has(sid) ? lastCookie.get(sid) : stickyCookie(socket.request),
    });
  });
});

httpServer.listen(port, '127.0.0.1', () => {
  console.log(`socketio worker ${id} listening on ${port}`);
});

function stop() {
  io.close();
  httpServer.closeAllConnections();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
