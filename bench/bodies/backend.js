'use strict';
// Backend for bench/bodies.sh: GET /down/1m and /down/16m answer that many bytes (one
// preallocated buffer), POST /up reads the whole body and then answers 200 "ok" (so a
// streaming proxy cannot finish before the body is through); anything else 200 "<NAME>".
// Env: PORT (required), NAME (default "b<PORT>").
const http = require('http');

const PORT = Number(process.env.PORT);
const NAME = process.env.NAME || `b${PORT}`;
if (!PORT) { console.error('PORT is required'); process.exit(2); }
const bodies = { '/down/1m': Buffer.alloc(1 << 20, 120), '/down/16m': Buffer.alloc(16 << 20, 120) };

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/up') {
    let n = 0;
    req.on('data', (chunk) => { n += chunk.length; });
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 2, 'x-received': n });
      res.end('ok');
    });
    return;
  }
  const body = bodies[req.url] || Buffer.from(NAME);
  req.resume();
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length });
  res.end(body);
});
server.keepAliveTimeout = 120 * 1000;
server.listen(PORT, '127.0.0.1', () => console.log(`bodies backend ${NAME} on :${PORT}`));
process.on('SIGTERM', () => process.exit(0));
