// Maps express-sticky-cluster's options (the seed's names and meanings) to the binary's flags.
// Every refusal is a one-line OptionError saying which option, what was wrong and what to do.
'use strict';

class OptionError extends Error {}

/** The key sources that replace a `session.hash` function (see --session-key). */
const KEY_SOURCES = "'cookie:NAME', 'header:NAME', 'query:NAME', 'ip' or 'none'";
/** `ssl.workers` values: how the proxy reaches the workers when `ssl.secure` is on. */
const WORKER_MODES = ['tls', 'tls-no-verify', 'plain'];

const KNOWN = ['workers', 'respawn', 'socket', 'proxy_port', 'worker_port', 'delay', 'debug', 'ssl', 'ipfilter', 'session', 'logger', 'workerListener', 'args'];

function fail(message) {
  throw new OptionError(`@sticky-cluster/node: ${message}`);
}

function port(name, value) {
  if (!Number.isInteger(value) || value < 0 || value > 65535) fail(`option ${name} must be a port number (0-65535), got ${JSON.stringify(value)}`);
  return String(value);
}

/** The IP filter: `{ ips, mode }`, with the seed's `[from, to]` ranges. */
function ipfilterArgs(ipfilter) {
  if (ipfilter === undefined || ipfilter === null) return [];
  if (typeof ipfilter === 'function') {
    fail("option ipfilter: an express-ipfilter middleware cannot run inside the Rust proxy; pass its list and mode instead: ipfilter: { ips: ['127.0.0.1', ['192.168.0.1', '192.168.0.200']], mode: 'allow' }");
  }
  const { ips, mode = 'deny' } = ipfilter;
  if (!Array.isArray(ips)) fail(`option ipfilter.ips must be an array of addresses, CIDRs or [from, to] ranges, got ${JSON.stringify(ips)}`);
  if (mode !== 'allow' && mode !== 'deny') fail(`option ipfilter.mode must be 'allow' or 'deny', got ${JSON.stringify(mode)}`);
  const args = [];
  for (const ip of ips) {
    let rule;
    if (Array.isArray(ip) && ip.length === 2 && ip.every((x) => typeof x === 'string')) rule = `${ip[0]}-${ip[1]}`;
    else if (typeof ip === 'string') rule = ip;
    else fail(`option ipfilter.ips: ${JSON.stringify(ip)} is neither an address, a CIDR nor a [from, to] range`);
    args.push(`--${mode}`, rule);
  }
  return args;
}

/** `session: { hash, ttl }`. */
function sessionArgs(session) {
  if (!session) return [];
  const args = [];
  const { hash, ttl } = session;
  if (typeof hash === 'function') {
    fail(`option session.hash: a function cannot run inside the Rust proxy; use a cookie name or one of the key sources ${KEY_SOURCES}`);
  }
  if (typeof hash === 'string' && hash !== '') {
    if (/^(cookie|header|query):./.test(hash) || hash === 'ip' || hash === 'none') args.push('--session-key', hash);
    else args.push('--session-cookie', hash);
  } else if (hash !== undefined) {
    fail(`option session.hash must be a cookie name or one of ${KEY_SOURCES}, got ${JSON.stringify(hash)}`);
  }
  if (ttl !== undefined) {
    if (!Number.isInteger(ttl) || ttl <= 0) fail(`option session.ttl must be a positive number of milliseconds, got ${JSON.stringify(ttl)}`);
    args.push('--session-ttl', `${ttl}ms`);
  }
  return args;
}

/**
 * `ssl: { secure, certs: { key, cert }, workers }`. Returns the flags and the files to write
 * (contents, never on the command line): { args, files: { 'tls.key': ..., ... } }.
 */
function sslArgs(ssl, dir) {
  if (!ssl || !ssl.secure) return { args: [], files: {} };
  const certs = ssl.certs || {};
  const text = (name) => {
    const v = certs[name];
    if (typeof v === 'string' || Buffer.isBuffer(v)) return v;
    return fail(`option ssl.certs.${name} must hold the PEM contents (a string or Buffer, e.g. fs.readFileSync('server.${name === 'key' ? 'key' : 'crt'}')) when ssl.secure is true`);
  };
  const files = { 'tls.key': text('key'), 'tls.crt': text('cert') };
  const args = ['--tls-cert', `${dir}/tls.crt`, '--tls-key', `${dir}/tls.key`];
  const mode = ssl.workers === undefined ? 'tls' : ssl.workers;
  if (!WORKER_MODES.includes(mode)) fail(`option ssl.workers must be one of ${WORKER_MODES.map((m) => `'${m}'`).join(', ')}, got ${JSON.stringify(mode)}`);
  if (mode === 'tls') args.push('--worker-tls', '--worker-cert', `${dir}/tls.crt`);
  if (mode === 'tls-no-verify') args.push('--worker-tls', '--worker-tls-no-verify');
  return { args, files };
}

/** Environment overrides of the ports, for deploys and tests that cannot edit the script. */
function envPort(name, fallback) {
  const v = process.env[name];
  if (v === undefined || v === '') return fallback;
  const n = Number(v);
  if (!Number.isInteger(n)) fail(`environment ${name} must be a port number, got ${JSON.stringify(v)}`);
  return n;
}

/**
 * All flags for `options`; `dir` is the private directory the secret files go to.
 * Returns { args, files }.
 */
function toArgs(options, dir) {
  if (options === null || typeof options !== 'object') fail('the first argument must be an options object ({} for the defaults)');
  for (const key of Object.keys(options)) {
    if (!KNOWN.includes(key)) fail(`unknown option ${JSON.stringify(key)}; known: ${KNOWN.join(', ')}`);
  }
  const o = options;
  const args = [];
  if (o.workers !== undefined) {
    if (!Number.isInteger(o.workers) || o.workers < 0) fail(`option workers must be a whole number (0 = one per CPU), got ${JSON.stringify(o.workers)}`);
    if (o.workers > 0) args.push('--workers', String(o.workers));
  }
  if (o.respawn === false) args.push('--no-respawn');
  if (o.socket === false) args.push('--no-websocket');
  const proxyPort = envPort('STICKY_CLUSTER_PROXY_PORT', o.proxy_port);
  if (proxyPort !== undefined) args.push('--proxy-port', port('proxy_port', proxyPort));
  const workerPort = envPort('STICKY_CLUSTER_WORKER_PORT', o.worker_port);
  if (workerPort !== undefined) args.push('--worker-port', port('worker_port', workerPort));
  if (o.delay !== undefined) {
    if (!Number.isInteger(o.delay) || o.delay < 0) fail(`option delay must be milliseconds (a whole number), got ${JSON.stringify(o.delay)}`);
    args.push('--delay', `${o.delay}ms`);
  }
  if (o.debug) args.push('--debug');
  const ssl = sslArgs(o.ssl, dir);
  args.push(...ssl.args, ...ipfilterArgs(o.ipfilter), ...sessionArgs(o.session));
  if (o.logger !== undefined && o.logger !== null && typeof o.logger !== 'function') {
    for (const level of ['info', 'warn', 'error']) {
      if (typeof o.logger[level] !== 'function') fail(`option logger must be a function or an object with info, warn and error methods; it has no ${level}()`);
    }
  }
  if (o.workerListener !== undefined && o.workerListener !== null && typeof o.workerListener !== 'function') {
    fail('option workerListener must be a function (message) => {}');
  }
  if (o.args !== undefined) {
    if (!Array.isArray(o.args) || !o.args.every((a) => typeof a === 'string')) fail('option args must be an array of extra sticky-cluster flags (strings)');
    args.push(...o.args);
  }
  return { args, files: ssl.files };
}

module.exports = { toArgs, OptionError, KEY_SOURCES };
