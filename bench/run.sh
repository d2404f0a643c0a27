#!/usr/bin/env bash
# sticky-cluster against nginx, HAProxy and a Node http-proxy balancer, one command:
#
#   bench/run.sh                       # RUNS=3 DURATION=10: about 6 minutes
#   RUNS=2 DURATION=5 bench/run.sh     # quicker
#   CANDIDATES="direct haproxy" bench/run.sh   # peers to run besides sticky-cluster
#
# Needs (once, as root): apt-get install -y wrk nginx haproxy   (node + npm for the Node peer)
#
# It builds `cargo build --release`, then runs the shared harness run-peers.sh (default
# ../shared/bench/run-peers.sh next to this repository; override with SHARED_BENCH=<dir or
# script>) with our proxy as the extra candidate:
#
#   sticky-cluster --threads 1 --bind 127.0.0.1 --proxy-port 18080 \
#     --upstream 127.0.0.1:18000 --upstream 127.0.0.1:18001 --secret-file <tmp> --delay 0s
#
# i.e. one runtime thread on one pinned core (like nginx `worker_processes 1` and HAProxy
# `nbthread 1`), two nginx backends, stickiness on the cookie connect.sid (our default),
# nothing spawned. The harness prints a markdown table (median req/s, p50/p99, proxy CPU
# microseconds per request, errors) and a stickiness check per candidate; every knob of it
# (RUNS, DURATION, WARMUP, CONNS, THREADS, SESSIONS, CANDIDATES, OUT_DIR, ...) is read
# from the environment and documented at its top. Everything listens on 127.0.0.1 only.
#
# Extra candidate arguments: STICKY_ARGS (appended to the command line above).
# BIN=<path> SKIP_BUILD=1: measure an existing binary instead of building (STICKY_COMMIT=<rev>
# names what it was built from in the output).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED_BENCH=${SHARED_BENCH:-$REPO/../shared/bench}
if [[ -d $SHARED_BENCH ]]; then PEERS=$SHARED_BENCH/run-peers.sh; else PEERS=$SHARED_BENCH; fi
[[ -x $PEERS || -r $PEERS ]] || { echo "run.sh: no harness at $PEERS (set SHARED_BENCH)" >&2; exit 1; }

export RUNS=${RUNS:-3} DURATION=${DURATION:-10}

BIN=${BIN:-$REPO/target/release/sticky-cluster}
if [[ -z ${SKIP_BUILD:-} ]]; then
  echo "building: cargo build --release" >&2
  (cd "$REPO" && cargo build --release --quiet)
fi
[[ -x $BIN ]] || { echo "run.sh: $BIN was not built" >&2; exit 1; }

TMP=$(mktemp -d /tmp/sticky-run.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

export CANDIDATE_NAME=${CANDIDATE_NAME:-sticky-cluster}
export CANDIDATE_CMD="$BIN --threads 1 --bind 127.0.0.1 --proxy-port 18080 \
--upstream 127.0.0.1:18000 --upstream 127.0.0.1:18001 --secret-file $TMP/affinity.key --delay 0s ${STICKY_ARGS:-}"

{
  if [[ -n ${STICKY_COMMIT:-} ]]; then
    echo "sticky-cluster: $STICKY_COMMIT (binary $BIN)"
  else
    echo "sticky-cluster commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(
      git -C "$REPO" diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' (+ uncommitted changes in src/ or Cargo.toml)') (binary $BIN)"
  fi
  echo "harness: $PEERS"
} >&2

# Not exec: the EXIT trap above removes the secret file afterwards. The harness stops every
# process it started (by PID) on its own exit.
bash "$PEERS"
