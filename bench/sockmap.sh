#!/usr/bin/env bash
# The sockmap experiment (README "WebSocket"): would kernel redirection between a tunnel's
# two sockets (an SK_SKB verdict program, bench/sockmap/probe.c) beat a user-space relay,
# and can a proxy use it safely?
#
#   bench/sockmap.sh              # order + flood + 3 interleaved echo rounds
#   ROUNDS=5 bench/sockmap.sh
#
# Prints: whether bytes queued before the hand-over keep their order and how a FIN shows;
# how much a worker can write while its client reads nothing (relay, then sockmap; bounded
# at 512 MiB); and the whole machine's CPU per echo for 200 tunnels and 400,000 echoes of
# 64 bytes, straight to the worker (direct), through a minimal epoll relay on CPU 0 (relay),
# and through sockmap (no relay process), with each mode's median over ROUNDS.
# Needs root (bpf), gcc and Linux headers (linux/bpf.h). Only 127.0.0.1 is used; every
# process ends with the probe, which bounds each phase in count.
set -euo pipefail
ROUNDS=${ROUNDS:-3}
DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_DIR=$(mktemp -d /tmp/sticky-sockmap.XXXXXX)
trap 'rm -rf "$RUN_DIR"' EXIT
command -v gcc >/dev/null || { echo "bench/sockmap.sh: gcc is missing" >&2; exit 1; }
gcc -O2 -Wall -o "$RUN_DIR/probe" "$DIR/sockmap/probe.c"
probe() { timeout 120 "$RUN_DIR/probe" "$@"; }

probe order
probe flood relay
probe flood sockmap
for _ in $(seq 1 "$ROUNDS"); do
  for mode in direct relay sockmap; do probe echo "$mode" | tee -a "$RUN_DIR/echo.txt"; done
done
for mode in direct relay sockmap; do
  median=$(awk -v m="$mode" '$2 == m { print $(NF-3) }' "$RUN_DIR/echo.txt" | sort -n \
    | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
  echo "median machine CPU per echo, $mode: $median us"
done
