// The `--on-message` command of the seed API: copies the worker messages the binary writes to
// its stdin (one JSON line each) into the master's Unix socket (argv[2]).
'use strict';

const net = require('net');

const conn = net.connect(process.argv[2]);
conn.on('error', (e) => {
  process.stderr.write(`sticky-cluster relay: cannot reach the master at ${process.argv[2]}: ${e.message}\n`);
  process.exit(1);
});
process.stdin.pipe(conn);
