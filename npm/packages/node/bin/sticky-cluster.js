#!/usr/bin/env node
// The `sticky-cluster` command: runs this platform's prebuilt binary with the same arguments.
'use strict';

const { binaryPath, BinaryNotFound } = require('../lib/binary');
const { runMirrored } = require('../lib/child');

let bin;
try {
  bin = binaryPath();
} catch (e) {
  if (!(e instanceof BinaryNotFound)) throw e;
  process.stderr.write(`${e.message}\n`);
  process.exit(1);
}
// followParent: a launcher whose parent died without passing on a signal stops the binary.
runMirrored(bin, process.argv.slice(2), { followParent: true });
