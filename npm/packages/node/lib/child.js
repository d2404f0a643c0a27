// Runs the binary as a child: SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to this process are
// passed on to it, and when it ends this process ends the same way (its exit code, or the
// same signal re-raised), so whoever stops us stops the whole cluster and learns how it went.
'use strict';

const { spawn } = require('child_process');
const os = require('os');

const FORWARDED = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'];

/**
 * Spawns `bin args` and mirrors its end. `cleanup()` runs once before this process exits.
 * Returns the ChildProcess.
 */
function runMirrored(bin, args, { stdio = 'inherit', env = process.env, cleanup = () => {}, followParent = false } = {}) {
  const child = spawn(bin, args, { stdio, env });
  if (followParent) watchParent(child);
  const forward = (sig) => () => {
    if (child.exitCode === null && child.signalCode === null) child.kill(sig);
  };
  const handlers = FORWARDED.map((sig) => [sig, forward(sig)]);
  for (const [sig, h] of handlers) process.on(sig, h);
  child.on('error', (err) => {
    cleanup();
    process.stderr.write(`sticky-cluster: cannot start ${bin}: ${err.message}\n`);
    process.exit(1);
  });
  child.on('exit', (code, signal) => {
    for (const [sig, h] of handlers) process.removeListener(sig, h);
    cleanup();
    if (signal) {
      // Re-raise with the default action so our parent sees the same signal.
      process.kill(process.pid, signal);
      // Not reached unless the signal is ignored here: exit as a shell would report it.
      setTimeout(() => process.exit(128 + (os.constants.signals[signal] || 0)), 1000);
      return;
    }
    process.exit(code === null ? 1 : code);
  });
  return child;
}

/** How often the launcher checks that the process that started it is still there. */
const PARENT_CHECK_MS = 250;

/**
 * When our parent exits without passing its signal on (npx does so on SIGTERM), we are
 * re-parented: stop the binary then, as a SIGTERM would, so nothing is left orphaned.
 */
function watchParent(child) {
  const parent = process.ppid;
  const timer = setInterval(() => {
    if (process.ppid === parent) return;
    clearInterval(timer);
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
  }, PARENT_CHECK_MS);
  timer.unref();
  child.on('exit', () => clearInterval(timer));
}

module.exports = { runMirrored, FORWARDED };
