#!/usr/bin/env bash
# HTTP/2 with many concurrent streams per connection, over TLS: nginx, HAProxy and
# sticky-cluster, each terminating h2 in front of the same two nginx backends, with
# h2load -m10 and -m100 (64 connections). A thin wrapper over bench/run-tls.sh (same
# layout, certificate, interleaved rounds, medians, noise checks), once per stream count.
#
#   bench/h2-streams.sh                         # RUNS=3 DURATION=10 per stream count
#   RUNS=1 DURATION=5 bench/h2-streams.sh       # quick
#
# Knobs (env): STREAMS="10 100", and every knob of bench/run-tls.sh (RUNS, DURATION, CONNS,
#   CANDIDATES, TLS_KEY, OUT_DIR: one subdirectory per stream count, BIN, SKIP_BUILD ...).
# Not covered yet: cleartext h2c with -m (bench/profile.sh CG_LOAD=h2c counts -m1 only).
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT_DIR:-/tmp/sticky-h2-streams/$STAMP}
if [[ -z ${SKIP_BUILD:-} ]]; then
  echo "building: cargo build --release" >&2
  (cd "$BENCH_DIR/.." && cargo build --release --quiet)
fi
for m in ${STREAMS:-10 100}; do
  echo "== h2load -m$m over TLS" >&2
  H2_STREAMS=$m PROTOCOLS=h2 SKIP_BUILD=1 OUT_DIR=$OUT/m$m bash "$BENCH_DIR/run-tls.sh"
done
