// Finds the sticky-cluster binary: STICKY_CLUSTER_BINARY, else the platform package that npm
// installed from our optionalDependencies (@sticky-cluster/<os>-<cpu>[-<libc>]).
'use strict';

const fs = require('fs');
const path = require('path');

const PLATFORMS = require('./platforms.json');

/** `gnu` or `musl` on Linux (from the running Node's own report), null elsewhere. */
function libc() {
  if (process.platform !== 'linux') return null;
  const report = typeof process.report === 'object' && process.report.getReport();
  const header = report && (typeof report === 'string' ? JSON.parse(report) : report).header;
  if (header && header.glibcVersionRuntime) return 'gnu';
  return 'musl';
}

/** This machine's platform package suffix, e.g. `linux-x64-gnu`, `darwin-arm64`. */
function platformKey() {
  const c = libc();
  return `${process.platform}-${process.arch}${c ? `-${c}` : ''}`;
}

/** Thrown when no binary can be found; its message is one line with the fix. */
class BinaryNotFound extends Error {}

/** Absolute path of the binary to run. Throws BinaryNotFound with a one-line message. */
function binaryPath() {
  const override = process.env.STICKY_CLUSTER_BINARY;
  if (override) {
    if (!fs.existsSync(override)) {
      throw new BinaryNotFound(`sticky-cluster: STICKY_CLUSTER_BINARY=${override} does not exist; point it at the binary or unset it`);
    }
    return override;
  }
  const key = platformKey();
  const exe = process.platform === 'win32' ? 'sticky-cluster.exe' : 'sticky-cluster';
  if (!PLATFORMS[key]) {
    throw new BinaryNotFound(
      `sticky-cluster: no prebuilt binary for ${key} (built for ${Object.keys(PLATFORMS).join(', ')}); build it with \`cargo install sticky-cluster\` and set STICKY_CLUSTER_BINARY to its path`,
    );
  }
  let manifest;
  try {
    manifest = require.resolve(`@sticky-cluster/${key}/package.json`);
  } catch (_) {
    throw new BinaryNotFound(
      `sticky-cluster: the package @sticky-cluster/${key} for this platform (${key}) is not installed; reinstall without --no-optional / --omit=optional (e.g. \`npm install @sticky-cluster/node\`), or set STICKY_CLUSTER_BINARY`,
    );
  }
  return path.join(path.dirname(manifest), 'bin', exe);
}

module.exports = { binaryPath, platformKey, BinaryNotFound };
