#!/usr/bin/env bash
# The kernel experiments (README "WebSocket"): would kernel redirection between a tunnel's
# two sockets (an SK_SKB verdict program, bench/sockmap/probe.c) beat a user-space relay,
# and can a proxy use it safely? For large messages, does splice(2) beat a copy?
#
#   bench/sockmap.sh              # order + flood + 3 interleaved echo rounds
#   ROUNDS=5 bench/sockmap.sh
#
# Prints: whether bytes queued before the hand-over keep their order and how a FIN shows;
# how much a worker can write while its client reads nothing (relay, then sockmap; bounded
# at 512 MiB); and the whole machine's CPU per echo for 200 tunnels and 400,000 echoes of
# 64 bytes, straight to the worker (direct), through a minimal epoll relay on CPU 0 (relay),
# and through sockmap (no relay process), with each mode's median over ROUNDS; then 16 KiB
# and 64 KiB messages (2 GiB each) through the relay reading into 16 KiB, into 64 KiB
# (relay64), and through splice(2) with a pipe per direction (splice).
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
runs() { # runs SIZE MODE...: ROUNDS interleaved rounds of each mode, then their medians
  local size=$1 mode; shift
  for _ in $(seq 1 "$ROUNDS"); do
    for mode in "$@"; do probe echo "$mode" "$size" | tee -a "$RUN_DIR/echo.txt"; done
  done
  for mode in "$@"; do
    median=$(awk -v m="$mode" -v s="$size" '$2 == m && $3 == s { print $(NF-3) }' "$RUN_DIR/echo.txt" \
      | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
    echo "median machine CPU per echo of $size B, $mode: $median us"
  done
}
runs 64 direct relay sockmap
runs 16384 direct relay relay64 splice
runs 65536 direct relay relay64 splice
