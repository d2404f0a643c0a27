#!/usr/bin/env bash
# Packs the npm packages into target/npm/: @sticky-cluster/node and the platform package of
# this machine (or of --platform KEY), with the sticky-cluster binary inside.
#
#   bash npm/build.sh                          # cargo build --release, then pack
#   bash npm/build.sh --binary PATH            # pack a binary built already (the tests do)
#   bash npm/build.sh --platform linux-x64-musl --binary PATH   # the release workflow
#
# STICKY_CLUSTER_BINARY=PATH works like --binary. Versions come from Cargo.toml.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
binary="${STICKY_CLUSTER_BINARY:-}"
platform=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
    --platform) platform="${2:?--platform needs a key such as linux-x64-gnu}"; shift 2 ;;
    *) echo "npm/build.sh: unknown argument $1 (expected --binary PATH or --platform KEY)" >&2; exit 2 ;;
  esac
done

pkg="$root/npm/packages/node"
[ -n "$platform" ] || platform="$(node -e 'process.stdout.write(require(process.argv[1]).platformKey())' "$pkg/lib/binary.js")"
if [ -z "$binary" ]; then
  (cd "$root" && cargo build --release --locked)
  binary="$root/target/release/sticky-cluster"
fi
[ -f "$binary" ] || { echo "npm/build.sh: binary $binary does not exist" >&2; exit 1; }
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)"

out="$root/target/npm"
stage="$out/stage"
rm -rf "$stage"
mkdir -p "$stage/node" "$stage/$platform/bin"
cp -R "$pkg/." "$stage/node/"
rm -rf "$stage/node/node_modules"

# Stamp the version into the main package and its pinned optionalDependencies, and write the
# platform package's manifest from lib/platforms.json.
node - "$stage" "$platform" "$version" <<'JS'
const fs = require('fs');
const path = require('path');
const [stage, key, version] = process.argv.slice(2);
const mainFile = path.join(stage, 'node', 'package.json');
const main = JSON.parse(fs.readFileSync(mainFile, 'utf8'));
main.version = version;
for (const dep of Object.keys(main.optionalDependencies)) main.optionalDependencies[dep] = version;
fs.writeFileSync(mainFile, `${JSON.stringify(main, null, 2)}\n`);
const platforms = require(path.join(stage, 'node', 'lib', 'platforms.json'));
const p = platforms[key];
if (!p) {
  console.error(`npm/build.sh: unknown platform ${key}; known: ${Object.keys(platforms).join(', ')}`);
  process.exit(2);
}
if (!main.optionalDependencies[`@sticky-cluster/${key}`]) {
  console.error(`npm/build.sh: @sticky-cluster/${key} is missing from optionalDependencies`);
  process.exit(2);
}
const manifest = {
  name: `@sticky-cluster/${key}`,
  version,
  description: `The sticky-cluster binary for ${key} (installed by @sticky-cluster/node)`,
  license: main.license,
  os: [p.os],
  cpu: [p.cpu],
  ...(p.libc ? { libc: [p.libc] } : {}),
  files: ['bin/'],
  preferUnplugged: true,
};
fs.writeFileSync(path.join(stage, key, 'package.json'), `${JSON.stringify(manifest, null, 2)}\n`);
fs.writeFileSync(path.join(stage, key, 'README.md'), `# @sticky-cluster/${key}\n\nThe \`sticky-cluster\` binary for ${key}. Install \`@sticky-cluster/node\` instead; it picks this package.\n`);
JS

exe=sticky-cluster
case "$platform" in win32-*) exe=sticky-cluster.exe ;; esac
cp "$binary" "$stage/$platform/bin/$exe"
chmod 0755 "$stage/$platform/bin/$exe"

for dir in "$stage/node" "$stage/$platform"; do
  (cd "$dir" && npm pack --silent --pack-destination "$out" >/dev/null)
done
echo "$out/sticky-cluster-node-$version.tgz"
echo "$out/sticky-cluster-$platform-$version.tgz"
