// `require('@sticky-cluster/node')`: express-sticky-cluster's API on top of the sticky-cluster
// binary. `esc(options, function (worker, port) { ... })` in the master starts the binary, which
// re-runs this same script as the workers; in a worker it calls the callback.
'use strict';

const { bus } = require('./lib/bus');
const { startMaster, WORKER_MARK } = require('./lib/master');
const { OptionError } = require('./lib/options');
const { BinaryNotFound, binaryPath } = require('./lib/binary');

const inWorker = () => process.env[WORKER_MARK] === '1' && process.env.PORT !== undefined;

// `process.send(message)` in a worker reaches the master's workerListener, as under cluster.
if (process.env.STICKY_CLUSTER_IPC && typeof process.send !== 'function') {
  process.send = function send(message, ...rest) {
    bus.send(message);
    const done = rest.find((x) => typeof x === 'function');
    if (done) process.nextTick(done, null);
    return true;
  };
}

/**
 * The seed's entry point. Master: starts the cluster and returns the binary's ChildProcess.
 * Worker: returns what `callback({ id, process }, port)` returns.
 */
function stickyCluster(options, callback) {
  if (typeof callback !== 'function') {
    throw new TypeError('@sticky-cluster/node: the second argument must be function (worker, port) { ... }');
  }
  if (inWorker()) {
    const worker = { id: Number(process.env.WORKER_ID), process };
    return callback(worker, Number(process.env.PORT));
  }
  try {
    return startMaster(options || {});
  } catch (e) {
    if (!(e instanceof OptionError) && !(e instanceof BinaryNotFound)) throw e;
    process.stderr.write(`${e.message}\n`);
    process.exit(2);
  }
}

stickyCluster.bus = bus;
stickyCluster.isWorker = inWorker;
stickyCluster.binaryPath = binaryPath;
stickyCluster.default = stickyCluster;
module.exports = stickyCluster;
