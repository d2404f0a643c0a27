// Uses every declared part of @sticky-cluster/node the way the README does; `tsc` must accept
// it, and the lines marked @ts-expect-error must stay errors.
import esc = require('@sticky-cluster/node');
import bus = require('@sticky-cluster/node/bus');
import { createAdapter } from '@sticky-cluster/node/socket.io';
import session = require('@sticky-cluster/node/session');
import * as fs from 'fs';
import * as https from 'https';
import { Server } from 'socket.io';

const certs = { key: fs.readFileSync('k'), cert: fs.readFileSync('c') };
const server = https.createServer(certs);
const io = new Server(server, { adapter: createAdapter({ heartbeatInterval: 5000 }) });
io.emit('hello');

esc(
  {
    workers: 0,
    respawn: true,
    socket: true,
    proxy_port: 443,
    worker_port: 8000,
    delay: 1000,
    debug: true,
    ssl: { secure: true, certs, workers: 'plain' },
    ipfilter: { ips: ['127.0.0.1', ['192.168.0.1', '192.168.0.200']], mode: 'allow' },
    session: { hash: 'connect.sid', ttl: 360000 },
    logger: { info: console.info, warn: console.warn, error: console.error },
    workerListener(message) {
      console.log(this.id, message);
    },
  },
  (worker, port) => {
    const id: number = worker.id;
    const pid: number = worker.process.pid;
    console.log(id, pid);
    return server.listen(port);
  },
);

esc({ session: { hash: 'header:x-session' }, logger: (line, level) => console.log(level, line) }, () => 1);
// @ts-expect-error: ipfilter takes a list and a mode, not a middleware
esc({ ipfilter: () => undefined }, () => 1);
// @ts-expect-error: ssl.workers is one of three modes
esc({ ssl: { secure: true, certs, workers: 'https' } }, () => 1);

bus.on('message', (data, from) => console.log(data, from === null ? 'supervisor' : from));
bus.on('worker', ({ id, state }) => console.log(id, state === 'down'));
bus.send({ a: 1 });
bus.broadcast('x');
bus.sendTo(1, [1, 2]);
bus.bind('sid');
bus.unbind('sid');
esc.bus.broadcast(null);
const path: string = esc.binaryPath();
console.log(path, esc.isWorker());

// Session hand-off: any store with all() and set(); the bus's hand-off lines.
const store = session.handoff(
  { all(cb: (err: any, s?: { [sid: string]: any }) => void) { cb(null, {}); }, set(_sid: string, _s: any, cb?: () => void) { if (cb) cb(); } },
  { secret: 'keyboard-cat' },
);
store.all(() => {});
const cookieValue: string = session.signedCookie('sid', 'secret');
bus.on('handoff', (key: string, data: unknown, from: number) => bus.adopt(`${key}${from}${String(data)}${cookieValue}`));
bus.on('drain', () => bus.handoffEnd());
// @ts-expect-error: a store needs all() (or list() and get()) to hand its sessions off
session.handoff({ set() {} });
