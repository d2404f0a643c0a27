// The seed API's master-side hooks through @sticky-cluster/node, for tests/npm_package.rs
// (copied next to the installed package). Two workers; each says hello with process.send
// (as under `cluster`), and broadcasts a ping on the bus until it hears the other's, then
// reports it with process.send; its bus connection is cut once and comes back by itself.
// The master prints every workerListener call as
// `LISTENER <id> <json>` and every logger call as `LOGGER <level> <line>`.
'use strict';

const http = require('http');
const esc = require('@sticky-cluster/node');

const log = (level) => (line) => console.log(`LOGGER ${level} ${line}`);

esc(
  {
    workers: 2,
    delay: 0,
    logger: { info: log('info'), warn: log('warn'), error: log('error') },
    workerListener(message) {
      console.log(`LISTENER ${this.id} ${JSON.stringify(message)}`);
    },
  },
  (worker, port) => {
    process.send({ hello: worker.id, pid: worker.process.pid });
    // The bus reconnects when its connection drops: this message goes out on a new one.
    esc.bus.once('connect', () => {
      esc.bus.socket.end();
      esc.bus.once('connect', () => process.send({ reconnected: worker.id }));
    });
    let heard = false;
    esc.bus.on('message', (data, from) => {
      if (data && data.ping !== undefined && !heard) {
        heard = true;
        process.send({ heardPingFrom: from, me: worker.id });
      }
    });
    let pings = 0;
    const timer = setInterval(() => {
      esc.bus.broadcast({ ping: worker.id });
      if (++pings >= 100) clearInterval(timer);
    }, 100);
    return http.createServer((req, res) => res.end(`worker ${worker.id}`)).listen(port, '127.0.0.1');
  },
);
