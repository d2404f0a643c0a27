#!/usr/bin/env bash
# WebSocket through the proxy: memory per idle connection and echo throughput, for
# sticky-cluster and for nginx proxying the same backends.
#
#   bench/ws.sh                                 # 10,000 connections, 10 messages each
#   CONNS=2000 MSGS=5 CANDIDATES=sticky-cluster bench/ws.sh
#
# Layout (all on 127.0.0.1):
#   backends  2 Node `ws` echo servers (bench/ws/server.js) :18100 and :18101   CPU 1
#   proxy     :18180, one at a time: sticky-cluster --threads 1 (the two backends as
#             --upstream), or nginx (1 worker, the run-peers.sh config: hash on
#             connect.sid, Upgrade/Connection passed)                          CPU 0
#   client    bench/ws/client.js (Node `ws`)                                     CPU 1
# Per candidate:
#   1. RSS of the proxy (VmRSS from /proc/<pid>/status, summed over its process tree)
#      after start and one HTTP request;
#   2. the client opens CONNS WebSockets, each with its own connect.sid cookie, at most
#      OPEN_CONCURRENCY handshakes at a time; once all are open and idle for SETTLE s, RSS
#      again: (after - before) / open = bytes per idle proxied WebSocket (both sockets,
#      buffers and tunnel state of the proxy);
#   3. message storm: every connection sends MSGS messages of SIZE bytes, one at a time
#      (the next after the echo), bounded by STORM_S; reports messages/s (echoed round
#      trips), proxy CPU us per message (each message crosses the proxy twice), p50, p99
#      and p99.9 of an echo's round trip as the client sees it, RSS after;
#   4. the client closes everything; the proxy is stopped.
# If the hard `ulimit -n` cannot hold 2 x CONNS descriptors (e.g. a container capped at
# 20000 without CAP_SYS_RESOURCE), CONNS is lowered to what fits, with a note in the output.
# Knobs (env): CONNS=10000, OPEN_CONCURRENCY=200, MSGS=10, SIZE=64, STORM_S=120, SETTLE=3,
#   CANDIDATES="sticky-cluster nginx", PROXY_CPU=0, LOAD_CPU=1, NOFILE=65536,
#   PERF_STAT=1 (count the proxy's syscalls per message during the storm with perf stat),
#   PERF_RECORD=1 (a flat cpu-clock profile of the proxy during the storm, perf record,
#   reported as its top symbols), RUNS=1 (rounds, candidates interleaved in each; the table gives every run),
#   BIN_B (a second binary, candidate `sticky-cluster-b`, for an A/B of two builds),
#   OUT_DIR (default /tmp/sticky-ws-results/<UTC stamp>), BIN, SKIP_BUILD=1,
#   NODE_DIR (where bench/ws's npm packages are installed; default /tmp/sticky-bench-ws-node).
# Needs node + npm (installs `ws` with npm ci into NODE_DIR once), nginx, curl, taskset.
# Every process started here is stopped by PID on exit; every phase is bounded in time.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

CONNS=${CONNS:-10000}
OPEN_CONCURRENCY=${OPEN_CONCURRENCY:-200}
MSGS=${MSGS:-10}
SIZE=${SIZE:-64}
STORM_S=${STORM_S:-120}
SETTLE=${SETTLE:-3}
CANDIDATES=${CANDIDATES:-sticky-cluster nginx}
RUNS=${RUNS:-1}
NOFILE=${NOFILE:-65536}
NODE_DIR=${NODE_DIR:-/tmp/sticky-bench-ws-node}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT_DIR=${OUT_DIR:-/tmp/sticky-ws-results/$STAMP}
RUN_DIR=$(mktemp -d /tmp/sticky-ws.XXXXXX)
export UP0=18100 UP1=18101
PORT_P=18180
WS_DIR=$BENCH_DIR/ws
mkdir -p "$OUT_DIR/logs"

for b in node npm nginx curl taskset ss; do command -v $b >/dev/null || die "missing $b"; done
# Each proxied WebSocket holds two descriptors in the proxy and one in the client.
ulimit -n "$NOFILE" 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
NOTE=""
if (( $(ulimit -n) < 2 * CONNS + 200 )); then
  # Without CAP_SYS_RESOURCE the hard limit cannot be raised (a container may cap it at
  # 20000): run as many connections as fit instead of failing, and say so.
  wanted=$CONNS
  CONNS=$(( ($(ulimit -n) - 200) / 2 ))
  (( CONNS >= 100 )) || die "ulimit -n is $(ulimit -n): too low"
  NOTE="note: ulimit -n is capped at $(ulimit -n) (hard limit), so $CONNS connections instead of $wanted (a proxied WebSocket holds 2 descriptors in the proxy)"
  log "$NOTE"
fi
for p in $UP0 $UP1 $PORT_P; do port_busy "$p" && die "port $p already in use"; done
if [[ -z ${SKIP_BUILD:-} && " $CANDIDATES " == *" sticky-cluster "* ]]; then
  log "building: cargo build --release"
  (cd "$REPO" && cargo build --release --quiet)
fi
if [[ ! -d $NODE_DIR/node_modules/ws ]]; then
  log "installing ws into $NODE_DIR (npm)"
  mkdir -p "$NODE_DIR" && cp "$WS_DIR/package.json" "$NODE_DIR/"
  [[ -f $WS_DIR/package-lock.json ]] && cp "$WS_DIR/package-lock.json" "$NODE_DIR/"
  if [[ -f $NODE_DIR/package-lock.json ]]; then
    (cd "$NODE_DIR" && npm ci --silent --no-audit --no-fund >/dev/null 2>&1)
  else
    (cd "$NODE_DIR" && npm install --silent --no-audit --no-fund >/dev/null 2>&1)
  fi || die "could not install ws into $NODE_DIR"
fi
export NODE_PATH=$NODE_DIR/node_modules

{
  machine_info
  echo "ws: $(node -p "require('$NODE_DIR/node_modules/ws/package.json').version")"
  echo "params: conns=$CONNS open_concurrency=$OPEN_CONCURRENCY msgs=$MSGS size=$SIZE storm_s=$STORM_S ulimit_n=$(ulimit -n) proxy_cpu=$PROXY_CPU load_cpu=$LOAD_CPU"
  echo "candidates: $CANDIDATES"
  [[ -z $NOTE ]] || echo "$NOTE"
} | tee "$OUT_DIR/env.txt" >&2

log "starting ws echo backends on CPU $LOAD_CPU"
for port in $UP0 $UP1; do
  start_bg "$LOAD_CPU" "$OUT_DIR/logs/backend-$port.log" env PORT="$port" NAME="b$port" node "$WS_DIR/server.js"
  BACKEND_PIDS+=("$LAST_PID")
  wait_http "http://127.0.0.1:$port/" 15 || die "ws backend :$port did not start"
done
NGINX_CONNS=$(( 2 * CONNS + 2000 )) NGINX_NOFILE=$NOFILE write_nginx_proxy_conf nginx-ws $PORT_P

PROXY_PID=""
start_proxy() {
  case $1 in
    sticky-cluster|sticky-cluster-b)
      local bin=$BIN; [[ $1 == sticky-cluster-b ]] && bin=${BIN_B:?BIN_B is the binary of sticky-cluster-b}
      start_bg "$PROXY_CPU" "$OUT_DIR/logs/proxy-$1.log" "$bin" --threads 1 \
        --bind 127.0.0.1 --proxy-port $PORT_P --upstream 127.0.0.1:$UP0 --upstream 127.0.0.1:$UP1 \
        --secret-file "$RUN_DIR/affinity.key" --delay 0s --max-connections $(( CONNS + 1000 )) ;;
    nginx) start_nginx "$PROXY_CPU" nginx-ws ;;
    *) die "unknown candidate $1" ;;
  esac
  PROXY_PID=$LAST_PID
  wait_http "http://127.0.0.1:$PORT_P/" 15 || die "$1 did not answer on :$PORT_P"
}
wait_file() {       # wait_file FILE SECONDS PID: until FILE exists, or PID exits, or time is up
  for _ in $(seq 1 $(( $2 * 10 ))); do
    [[ -e $1 ]] && return 0
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

RESULTS=$OUT_DIR/results.tsv
printf 'candidate\topen\tfailed\topen_s\trss_before_kib\trss_open_kib\tbytes_per_ws\tmsgs\tmsgs_per_s\tcpu_us_per_msg\tuser_us_per_msg\trss_after_storm_kib\tbad_echo\tclosed_early\tp50_ms\tp99_ms\tp999_ms\n' >"$RESULTS"
for round in $(seq 1 "$RUNS"); do
for c in $CANDIDATES; do
  log "round $round/$RUNS: candidate $c"
  start_proxy "$c"
  curl -s -o /dev/null "http://127.0.0.1:$PORT_P/" || true
  sleep 1
  rss0=$(tree_rss_kib "$PROXY_PID")
  # A fresh directory per run: the client's phase files of an earlier round must not count.
  cdir=$RUN_DIR/client-$c-r$round; mkdir -p "$cdir"
  clog=$OUT_DIR/logs/client-$c.log
  timeout $(( STORM_S + 900 )) taskset -c "$LOAD_CPU" env URL="ws://127.0.0.1:$PORT_P/" CONNS="$CONNS" \
    OPEN_CONCURRENCY="$OPEN_CONCURRENCY" MSGS="$MSGS" SIZE="$SIZE" STORM_S="$STORM_S" DIR="$cdir" \
    WAIT_S=300 node "$WS_DIR/client.js" >"$clog" 2>&1 &
  cpid=$!; STARTED+=("$cpid")
  wait_file "$cdir/opened" 600 "$cpid" || { cat "$clog" >&2; die "client did not finish opening"; }
  sleep "$SETTLE"
  rss1=$(tree_rss_kib "$PROXY_PID")
  read -r u0 k0 <<<"$(tree_ticks_split "$PROXY_PID")"
  pp=""
  if [[ -n ${PERF_STAT:-} ]] && command -v perf >/dev/null; then
    perf stat -x, -e "raw_syscalls:sys_enter,context-switches,syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_readv,syscalls:sys_enter_writev,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_epoll_wait" \
      -p "$(tree_pids "$PROXY_PID" | paste -sd,)" -o "$OUT_DIR/perfstat-storm-$c.csv" -- sleep $(( STORM_S + 60 )) &
    pp=$!; STARTED+=("$pp"); sleep 0.3
  fi
  pr=""
  if [[ -n ${PERF_RECORD:-} ]] && command -v perf >/dev/null; then
    perf record -q -e cpu-clock -F 4999 -p "$(tree_pids "$PROXY_PID" | paste -sd,)" \
      -o "$OUT_DIR/perf-storm-$c-r$round.data" -- sleep $(( STORM_S + 60 )) 2>/dev/null &
    pr=$!; STARTED+=("$pr"); sleep 0.3
  fi
  touch "$cdir/go"
  wait_file "$cdir/stormed" $(( STORM_S + 60 )) "$cpid" || { cat "$clog" >&2; die "client storm did not end"; }
  read -r u1 k1 <<<"$(tree_ticks_split "$PROXY_PID")"
  # perf ends when its timer workload (sleep) does: end the sleep, not perf.
  for p in $pp $pr; do
    for k in $(tree_pids "$p"); do [[ $k == "$p" ]] || kill "$k" 2>/dev/null || true; done
    wait "$p" 2>/dev/null || true; forget_pid "$p"
  done
  if [[ -n $pr ]]; then
    perf report -i "$OUT_DIR/perf-storm-$c-r$round.data" --no-children --sort dso,sym --stdio 2>/dev/null \
      | grep -v '^#' | grep -v '^$' | head -40 >"$OUT_DIR/perf-storm-$c-r$round.txt" || true
  fi
  rss2=$(tree_rss_kib "$PROXY_PID")
  touch "$cdir/close"
  for _ in $(seq 1 300); do kill -0 "$cpid" 2>/dev/null || break; sleep 0.1; done
  stop_one "$cpid"
  stop_one "$PROXY_PID"; PROXY_PID=""
  wait_port_free $PORT_P || die "port $PORT_P busy"
  cat "$clog" >&2
  open_line=$(grep '"phase":"open"' "$clog" || true)
  storm_line=$(grep '"phase":"storm"' "$clog" || true)
  row=$(node -e '
    const o = JSON.parse(process.argv[1] || "{}"), s = JSON.parse(process.argv[2] || "{}");
    const [c, r0, r1, r2, dt, du, tck] = process.argv.slice(3);
    const open = o.open || 0, msgs = s.messages || 0;
    const per = open ? Math.round((r1 - r0) * 1024 / open) : "NA";
    const cpu = msgs ? (dt * 1e6 / tck / msgs).toFixed(1) : "NA";
    const user = msgs ? (du * 1e6 / tck / msgs).toFixed(1) : "NA";
    console.log([c, open, o.failed, (o.open_ms / 1000).toFixed(1), r0, r1, per, msgs, s.msgs_per_s,
      cpu, user, r2, s.bad_echo, s.closed_early, s.p50_ms, s.p99_ms, s.p999_ms].join("\t"));
  ' "$open_line" "$storm_line" "$c" "$rss0" "$rss1" "$rss2" $(( u1 + k1 - u0 - k0 )) $(( u1 - u0 )) "$CLK_TCK")
  log "  $(tr '\t' ' ' <<<"$row")"
  echo "$row" >>"$RESULTS"
  if [[ -f $OUT_DIR/perfstat-storm-$c.csv ]]; then
    msgs=$(cut -f8 <<<"$row")
    awk -F, -v c="$c" -v m="${msgs:-0}" 'm > 0 && $3 ~ /sys_enter|context-switches/ {
        s = $3; sub(/^syscalls:sys_enter_/, "", s); sub(/^raw_syscalls:sys_enter$/, "all syscalls", s)
        if ($1 / m >= 0.01) out = out sprintf("%s %.2f, ", s, $1 / m) }
      END { sub(/, $/, "", out); print c " per echoed message (storm, perf stat): " out }' \
      "$OUT_DIR/perfstat-storm-$c.csv" | tee -a "$OUT_DIR/storm-syscalls.txt" >&2
  fi
done
done

{
  echo "| proxy | WebSockets open | failed | open time s | RSS before KiB | RSS with all open KiB | bytes per idle WebSocket | messages echoed | messages/s | proxy CPU us/message | of which user space | RSS after storm KiB | bad echoes | closed early | echo p50 ms | p99 ms | p99.9 ms |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  tail -n +2 "$RESULTS" | awk -F'\t' '{ printf "| %s |", $1; for (i = 2; i <= NF; i++) printf " %s |", $i; print "" }'
} | tee "$OUT_DIR/table.md"
[[ -z $NOTE ]] || echo "$NOTE"
cat "$OUT_DIR/storm-syscalls.txt" 2>/dev/null || true
echo "raw: $RESULTS"
