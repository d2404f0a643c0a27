// The smallest worker for `npx sticky-cluster -- node plain-app.js` (tests/npm_package.rs):
// answers "worker N" on 127.0.0.1:$PORT.
'use strict';

require('http')
  .createServer((req, res) => res.end(`worker ${process.env.WORKER_ID}`))
  .listen(Number(process.env.PORT), '127.0.0.1');
