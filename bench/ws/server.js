'use strict';
// WebSocket echo backend for bench/ws.sh: echoes every message back as it came (text or
// binary), no compression. Plain GET answers 200 "<NAME>" (readiness and HTTP checks).
// Env: PORT (required), NAME (default "b<PORT>"), HOST (127.0.0.1).
const http = require('http');
const { WebSocketServer } = require('ws');

const PORT = Number(process.env.PORT);
const NAME = process.env.NAME || `b${PORT}`;
const HOST = process.env.HOST || '127.0.0.1';
if (!PORT) { console.error('PORT is required'); process.exit(2); }

const server = http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/plain' });
  res.end(NAME);
});
server.keepAliveTimeout = 120 * 1000;
const wss = new WebSocketServer({ server, perMessageDeflate: false, clientTracking: false });
let open = 0;
wss.on('connection', (ws) => {
  open++;
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('close', () => { open--; });
  ws.on('error', () => {});
});
server.listen(PORT, HOST, () => console.log(`ws echo ${NAME} on ${HOST}:${PORT}`));
setInterval(() => console.log(`${NAME}: ${open} open`), 10000).unref();
process.on('SIGTERM', () => process.exit(0));
