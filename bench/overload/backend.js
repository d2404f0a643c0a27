'use strict';
// A worker with a capacity: every request costs WORK_US microseconds of CPU (a busy loop,
// as an app's handler would), then answers 200 "<NAME>". Capacity is then about
// 1e6 / (WORK_US + Node's own per-request cost) requests per second per core.
// Env: PORT (required), NAME (default "b<PORT>"), WORK_US (default 300).
const http = require('http');

const PORT = Number(process.env.PORT);
const NAME = process.env.NAME || `b${PORT}`;
const WORK_NS = BigInt(Math.round(Number(process.env.WORK_US || 300) * 1000));
if (!PORT) { console.error('PORT is required'); process.exit(2); }

const server = http.createServer((req, res) => {
  const until = process.hrtime.bigint() + WORK_NS;
  while (process.hrtime.bigint() < until) { /* the handler's work */ }
  req.resume();
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': NAME.length });
  res.end(NAME);
});
server.keepAliveTimeout = 120 * 1000;
server.listen(PORT, '127.0.0.1', () => console.log(`backend ${NAME} on :${PORT}`));
process.on('SIGTERM', () => process.exit(0));
