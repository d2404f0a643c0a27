#!/usr/bin/env bash
# Tail latency under open-loop load, and what each proxy does past capacity: sticky-cluster
# (default settings, and with a small --max-pending that sheds), nginx and HAProxy (the
# run-peers.sh configs), in front of the same two workers with a real per-request cost.
#
#   bench/overload.sh                          # ROUNDS=3 DURATION=10: about 8 minutes
#   ROUNDS=1 DURATION=3 bench/overload.sh      # quick (about 1 minute)
#
# Layout (all on 127.0.0.1):
#   workers   2 Node servers (bench/overload/backend.js), WORK_US of CPU per request,
#             :18000 and :18001                                               CPU LOAD_CPU
#   proxies   all running at once, each idle but for its own turn             CPU PROXY_CPU
#             sticky-cluster --threads 1 :18080, the same with --max-pending SHED_PENDING
#             :18081, nginx (1 worker) :18082, HAProxy (nbthread 1) :18083
#   load      bench/overload/gen.js: open loop at a fixed rate, latency from each request's
#             scheduled time (no coordinated omission), CONNS keep-alive connections,
#             SESSIONS connect.sid ids                                        CPU LOAD_CPU
# Steps:
#   1. capacity: wrk closed loop (64 connections, CAP_S s) through sticky-cluster: the
#      whole system's req/s (the workers are the bottleneck, as in a real app);
#   2. for each load in LOADS (% of that capacity), ROUNDS rounds, candidates interleaved
#      within a round (peer, us, peer, us ...): gen.js at that rate for DURATION s;
#   3. medians over rounds per (load, candidate): p50/p99/p99.9 of the 200s, 200s and 503s
#      per run, errors and timeouts (TIMEOUT_MS), requests still unanswered at the end.
# Knobs (env): ROUNDS=3, DURATION=10, LOADS="50 90 110", WORK_US=300, CONNS=256,
#   SESSIONS=10000, CAP_S=5, SHED_PENDING=32, TIMEOUT_MS=5000, DRAIN_S=10,
#   CANDIDATES="nginx sticky-cluster haproxy sticky-shed", PROXY_CPU=0, LOAD_CPU=1,
#   OUT_DIR (default /tmp/sticky-overload/<UTC stamp>), BIN, SKIP_BUILD=1.
# Every process started here is stopped by PID on exit; every run is bounded in time.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
LOADS=${LOADS:-50 90 110}
WORK_US=${WORK_US:-300}
CONNS=${CONNS:-256}
export SESSIONS=${SESSIONS:-10000}
CAP_S=${CAP_S:-5}
SHED_PENDING=${SHED_PENDING:-32}
TIMEOUT_MS=${TIMEOUT_MS:-5000}
DRAIN_S=${DRAIN_S:-10}
CANDIDATES=${CANDIDATES:-nginx sticky-cluster haproxy sticky-shed}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT_DIR=${OUT_DIR:-/tmp/sticky-overload/$STAMP}
RUN_DIR=$(mktemp -d /tmp/sticky-overload.XXXXXX)
GEN=$BENCH_DIR/overload/gen.js
mkdir -p "$OUT_DIR/logs"

declare -A PORT=([sticky-cluster]=18080 [sticky-shed]=18081 [nginx]=18082 [haproxy]=18083)
prepare_run "rounds=$ROUNDS duration=${DURATION}s loads=$LOADS work_us=$WORK_US conns=$CONNS sessions=$SESSIONS shed_pending=$SHED_PENDING timeout_ms=$TIMEOUT_MS" "${PORT[@]}"

log "starting 2 workers (WORK_US=$WORK_US) on CPU $LOAD_CPU"
for port in 18000 18001; do
  start_bg "$LOAD_CPU" "$OUT_DIR/logs/backend-$port.log" env PORT=$port WORK_US="$WORK_US" \
    node "$BENCH_DIR/overload/backend.js"
  wait_http "http://127.0.0.1:$port/" 15 || die "worker :$port did not start"
done

start_candidate() {  # start_candidate NAME
  local c=$1 port=${PORT[$1]} lg=$OUT_DIR/logs/proxy-$1.log
  local ours=(--threads 1 --bind 127.0.0.1 --proxy-port "$port" --upstream 127.0.0.1:18000
              --upstream 127.0.0.1:18001 --secret-file "$RUN_DIR/affinity.key" --delay 0s)
  case $c in
    sticky-cluster) start_bg "$PROXY_CPU" "$lg" "$BIN" "${ours[@]}" ;;
    sticky-shed) start_bg "$PROXY_CPU" "$lg" "$BIN" "${ours[@]}" --max-pending "$SHED_PENDING" ;;
    nginx) write_nginx_proxy_conf nginx-proxy "$port"; start_nginx "$PROXY_CPU" nginx-proxy ;;
    haproxy) write_haproxy_conf "$RUN_DIR/haproxy.cfg" "$port"
             start_bg "$PROXY_CPU" "$lg" haproxy -db -f "$RUN_DIR/haproxy.cfg" ;;
    *) die "unknown candidate $c" ;;
  esac
  wait_http "http://127.0.0.1:$port/" 15 || die "$c did not answer on :$port"
}
for c in $CANDIDATES; do start_candidate "$c"; done
[[ -n ${PORT[sticky-cluster]:-} ]] && port_busy "${PORT[sticky-cluster]}" || die "capacity is measured through sticky-cluster: keep it in CANDIDATES"

log "capacity: wrk -c64 ${CAP_S}s through sticky-cluster"
timeout $(( CAP_S + 60 )) taskset -c "$LOAD_CPU" wrk -t1 -c64 -d"${CAP_S}s" --timeout 10s \
  -s "$SHARED_BENCH/sessions.lua" "http://127.0.0.1:${PORT[sticky-cluster]}/" >"$OUT_DIR/capacity.txt" 2>&1 \
  || die "wrk failed: $(cat "$OUT_DIR/capacity.txt")"
CAPACITY=$(awk '/^Requests\/sec:/ { printf "%d", $2 }' "$OUT_DIR/capacity.txt")
(( CAPACITY > 0 )) || die "no capacity measured: $(cat "$OUT_DIR/capacity.txt")"
log "capacity: $CAPACITY req/s"
echo "capacity_rps: $CAPACITY" >>"$OUT_DIR/env.txt"
sleep 2

RESULTS=$OUT_DIR/results.jsonl
: >"$RESULTS"
for load in $LOADS; do
  rate=$(( CAPACITY * load / 100 ))
  for round in $(seq 1 "$ROUNDS"); do
    for c in $CANDIDATES; do
      log "load ${load}% (${rate} req/s), round $round, $c"
      a=$(cpu_snap)
      line=$(timeout $(( DURATION + DRAIN_S + 30 )) taskset -c "$LOAD_CPU" env \
        URL="http://127.0.0.1:${PORT[$c]}/" RATE="$rate" DURATION_S="$DURATION" CONNS="$CONNS" \
        TIMEOUT_MS="$TIMEOUT_MS" DRAIN_S="$DRAIN_S" node "$GEN" 2>>"$OUT_DIR/logs/gen.log" | tail -1) \
        || line='{}'
      b=$(cpu_snap)
      [[ -n $line ]] || line='{}'
      log "  $line"
      node -e 'const r = JSON.parse(process.argv[1]); Object.assign(r, {candidate: process.argv[2],
        load: +process.argv[3], round: +process.argv[4], foreign_pct: +process.argv[5]});
        console.log(JSON.stringify(r));' "$line" "$c" "$load" "$round" "$(foreign_pct "$a" "$b" 0)" >>"$RESULTS"
      sleep 1   # let the workers' queues empty before the next run
    done
  done
done

node -e '
  const rows = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map(JSON.parse);
  const med = (xs) => { xs = xs.filter((x) => x !== null && x !== undefined).sort((a, b) => a - b);
    return xs.length ? xs[Math.floor((xs.length - 1) / 2)] : "NA"; };
  const cands = [...new Set(rows.map((r) => r.candidate))], loads = [...new Set(rows.map((r) => r.load))];
  console.log("| load | proxy | offered req/s | 200s | 503s | errors+timeouts | unanswered | p50 ms | p99 ms | p99.9 ms | max ms |");
  console.log("|---|---|---|---|---|---|---|---|---|---|---|");
  for (const l of loads) for (const c of cands) {
    const rs = rows.filter((r) => r.load === l && r.candidate === c);
    const s = (k) => med(rs.map((r) => (r.status || {})[k] || 0));
    console.log(`| ${l} % | ${c} | ${rs[0].rate} | ${s(200)} | ${s(503)} | ${med(rs.map((r) => (r.errors || 0) + (r.timeouts || 0)))} | ${med(rs.map((r) => r.unanswered))} | ${med(rs.map((r) => r.p50_ms))} | ${med(rs.map((r) => r.p99_ms))} | ${med(rs.map((r) => r.p999_ms))} | ${med(rs.map((r) => r.max_ms))} |`);
  }' "$RESULTS" | tee "$OUT_DIR/table.md"
echo "medians over $ROUNDS round(s) of ${DURATION}s; capacity $CAPACITY req/s (wrk closed loop through sticky-cluster); raw: $RESULTS"
