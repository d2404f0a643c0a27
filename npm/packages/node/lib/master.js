// The master side of the seed API: starts the binary with the mapped flags and this same
// script (same Node flags, same argv) as its worker command, brings worker messages back to
// `workerListener` and the binary's log lines to `logger`, and ends as the binary ends.
'use strict';

const fs = require('fs');
const net = require('net');
const os = require('os');
const path = require('path');
const readline = require('readline');

const { binaryPath } = require('./binary');
const { runMirrored } = require('./child');
const { toArgs } = require('./options');

/** Set in the workers' environment: the re-run script calls the callback instead. */
const WORKER_MARK = 'STICKY_CLUSTER_NODE_WORKER';
const RELAY = path.join(__dirname, 'relay.js');

const shellQuote = (s) => `'${String(s).replace(/'/g, "'\\''")}'`;

/** A private (0700) directory for the TLS files and the listener socket, removed on exit. */
function privateDir() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sticky-cluster-'));
  fs.chmodSync(dir, 0o700);
  return dir;
}

function writePrivate(dir, files) {
  for (const [name, contents] of Object.entries(files)) {
    fs.writeFileSync(path.join(dir, name), contents, { mode: 0o600, flag: 'wx' });
  }
}

/**
 * Worker messages arrive at `--on-message`, a tiny relay (lib/relay.js) that copies its stdin
 * into a Unix socket this process listens on; each JSON line becomes one workerListener call.
 */
function listen(dir, workerListener) {
  const sock = path.join(dir, 'messages.sock');
  const server = net.createServer((conn) => {
    const lines = readline.createInterface({ input: conn });
    lines.on('line', (line) => {
      let msg;
      try {
        msg = JSON.parse(line);
      } catch (_) {
        return;
      }
      workerListener.call({ id: msg.worker }, msg.data);
    });
  });
  server.listen(sock);
  server.unref();
  return ['--on-message', [process.execPath, RELAY, sock].map(shellQuote).join(' ')];
}

const LOG_LINE = /^\S+\s+(TRACE|DEBUG|INFO|WARN|ERROR)\s+(.*)$/;

/** Sends the binary's stderr lines to `logger`; workers' own stderr (`[worker N]`) stays stderr. */
function relayLogs(stream, logger) {
  const call = (level, text) => {
    if (typeof logger === 'function') logger(text, level);
    else (logger[level] || logger.info).call(logger, text);
  };
  readline.createInterface({ input: stream }).on('line', (line) => {
    if (line.startsWith('[worker ')) {
      process.stderr.write(`${line}\n`);
      return;
    }
    const m = LOG_LINE.exec(line);
    if (!m) return call('error', line);
    const level = { TRACE: 'debug', DEBUG: 'debug', INFO: 'info', WARN: 'warn', ERROR: 'error' }[m[1]];
    return call(level === 'debug' && typeof logger === 'object' && typeof logger.debug !== 'function' ? 'info' : level, m[2]);
  });
}

/** Starts the cluster; returns the binary's ChildProcess. Throws OptionError on bad options. */
function startMaster(options) {
  const dir = privateDir();
  const cleanup = () => fs.rmSync(dir, { recursive: true, force: true });
  let args;
  let bin;
  try {
    const mapped = toArgs(options, dir);
    writePrivate(dir, mapped.files);
    args = mapped.args;
    if (options.workerListener) args.push(...listen(dir, options.workerListener));
    bin = binaryPath();
  } catch (e) {
    cleanup();
    throw e;
  }
  const script = process.argv[1];
  args.push('--', process.execPath, ...process.execArgv, script, ...process.argv.slice(2));
  const logger = options.logger || null;
  const child = runMirrored(bin, args, {
    stdio: ['inherit', 'inherit', logger ? 'pipe' : 'inherit'],
    env: { ...process.env, [WORKER_MARK]: '1' },
    cleanup,
  });
  if (logger) relayLogs(child.stderr, logger);
  return child;
}

module.exports = { startMaster, WORKER_MARK };
