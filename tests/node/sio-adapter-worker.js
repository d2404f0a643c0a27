// A socket.io worker using @sticky-cluster/node/socket.io's adapter, for tests/npm_package.rs
// (copied next to the installed package). Listens on 127.0.0.1:$PORT. Every client gets
// `hello` {worker, pid}; the events below let the client script drive each cross-worker
// operation from any worker.
'use strict';

const http = require('http');
const { Server } = require('socket.io');
const { createAdapter } = require('@sticky-cluster/node/socket.io');

const WORKER = Number(process.env.WORKER_ID);
let stalled = false;

const server = http.createServer();
const io = new Server(server, { adapter: createAdapter() });

io.on('connection', (socket) => {
  socket.data.worker = WORKER;
  socket.emit('hello', { worker: WORKER, pid: process.pid });
  socket.on('join', (room, ack) => {
    socket.join(room);
    ack(WORKER);
  });
  socket.on('emit-all', (payload, ack) => {
    io.emit('all', { from: WORKER, payload });
    ack();
  });
  socket.on('emit-room', (room, ack) => {
    io.to(room).emit('room', { from: WORKER, room });
    ack();
  });
  socket.on('count', async (ack) => {
    const sockets = await io.fetchSockets();
    ack(sockets.map((s) => s.data.worker));
  });
  socket.on('ask-all', (ack) => {
    const started = Date.now();
    // The adapter gives up on missing answers after 5 s.
    io.serverSideEmit('ping', WORKER, (err, replies) => {
      ack({ error: err ? err.message : null, replies, ms: Date.now() - started });
    });
  });
  socket.on('stall', (ack) => {
    stalled = true;
    ack(process.pid);
  });
  socket.on('kick', (room, ack) => {
    io.in(room).disconnectSockets(true);
    ack();
  });
});

// serverSideEmit from another worker: answer with this worker's index, unless told to stall.
io.on('ping', (from, reply) => {
  if (!stalled) reply(WORKER);
});

server.listen(Number(process.env.PORT), '127.0.0.1');
