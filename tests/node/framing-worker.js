// A Node worker that answers with every HTTP/1.1 response framing, for the proxy's
// direct path (no npm packages needed).
// GET /chunked?n=N   -> N chunks via res.write (Transfer-Encoding: chunked), with a trailer
// GET /eof           -> a response without length, ended by closing the connection
// GET /hints         -> 103 Early Hints, then 200
// GET /hop           -> hop-by-hop headers (Keep-Alive, one named by Connection)
// GET /then-close    -> a keep-alive answer, then the worker closes the idle connection
// GET /big?kb=N      -> N KiB of a repeating pattern, fixed length (flow-control tests)
// GET /hints-close   -> 103 Early Hints, then the connection closed (no final answer)
// GET /hits?path=P   -> how many requests for P this worker has seen
// any /echo          -> JSON {worker, method, headers, body_bytes, body_sha256}
const http = require('http');
const crypto = require('crypto');
const id = process.env.WORKER_ID;
const pattern = Buffer.from('0123456789abcdefghijklmnopqrstuvwxyz'.repeat(1024 * 8 / 36 + 1)).subarray(0, 8192);
const hits = {};
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  hits[url.pathname] = (hits[url.pathname] || 0) + 1;
  let body = 0;
  const hash = crypto.createHash('sha256');
  req.on('data', (d) => { body += d.length; hash.update(d); });
  req.on('end', () => {
    if (url.pathname === '/chunked') {
      res.setHeader('trailer', 'x-done');
      const n = Number(url.searchParams.get('n') || 3);
      for (let i = 0; i < n; i++) res.write(`${i}:` + 'x'.repeat(i % 7) + ';');
      res.addTrailers({ 'x-done': 'yes' });
      res.end();
    } else if (url.pathname === '/eof') {
      res.socket.end(`HTTP/1.1 200 OK\r\nx-framing: eof\r\n\r\nuntil close from worker ${id}`);
    } else if (url.pathname === '/hints') {
      res.writeEarlyHints({ link: '</a.css>; rel=preload' });
      res.end(`after hints from worker ${id}`);
    } else if (url.pathname === '/then-close') {
      const socket = res.socket;
      res.end('closing soon', () => setTimeout(() => socket.destroy(), 50));
    } else if (url.pathname === '/big') {
      const kb = Number(url.searchParams.get('kb') || 1);
      res.setHeader('content-length', kb * 1024);
      for (let i = 0; i < Math.floor(kb / 8); i++) res.write(pattern);
      if (kb % 8) res.write(pattern.subarray(0, (kb % 8) * 1024));
      res.end();
    } else if (url.pathname === '/hints-close') {
      res.writeEarlyHints({ link: '</a.css>; rel=preload' }, () => res.socket.destroy());
    } else if (url.pathname === '/hits') {
      res.end(String(hits[url.searchParams.get('path')] || 0));
    } else if (url.pathname === '/hop') {
      res.setHeader('connection', 'keep-alive, x-secret');
      res.setHeader('keep-alive', 'timeout=5');
      res.setHeader('x-secret', '1');
      res.setHeader('x-public', '2');
      res.end('hop');
    } else {
      const payload = JSON.stringify({
        worker: Number(id), method: req.method, headers: req.headers, body_bytes: body,
        body_sha256: hash.digest('hex'),
      });
      res.setHeader('content-type', 'application/json');
      res.setHeader('X-Echo-Worker', id); // mixed case: HTTP/2 clients must get it lowercased
      res.setHeader('content-length', Buffer.byteLength(payload)); // also on HEAD, without the body
      res.end(payload);
    }
  });
});
server.listen(Number(process.env.PORT), '127.0.0.1', () => console.log(`worker ${id} listening`));
process.on('SIGTERM', () => { server.close(); server.closeAllConnections(); process.exit(0); });
