#!/usr/bin/env bash
# Soak test: sticky-cluster under steady mixed load while workers are killed and rolled.
# NOT part of CI (it takes DURATION seconds; 10 minutes by default).
#
#   bench/soak.sh                         # 600 s
#   DURATION=120 bench/soak.sh            # a 2-minute smoke run
#   SKIP_BUILD=1 BIN=target/release/sticky-cluster DURATION=300 bench/soak.sh
#
# What it does:
#   1. `cargo build --release` (unless SKIP_BUILD=1), then starts the release binary with
#      WORKERS (4) built-in demo workers (no COMMAND: the demo serves /whoami with its
#      worker id and pid, sets connect.sid, and echoes WebSockets) on free 127.0.0.1 ports.
#   2. Runs bench/soak/load.js (Node >= 18, no npm packages) for DURATION seconds: STICKY
#      keep-alive clients with a fixed session each, FRESH clients opening new sessions,
#      and WS WebSocket clients pinned by their session cookie (see load.js for the knobs).
#   3. Meanwhile, every ~KILL_EVERY s (30, +-5 s jitter) it kill -9s one worker, chosen by
#      the pid a cookie-less GET /whoami reports, and only if that pid is a child of the
#      sticky-cluster it started; every ~HUP_EVERY s (90) it sends SIGHUP to sticky-cluster
#      (a rolling restart of all workers, drained for at most DRAIN (5s)); and every second
#      it samples the proxy's VmRSS / VmHWM from /proc.
#   4. Prints: requests sent, failed (non-2xx or network errors, with a breakdown), sessions
#      moved (a fixed session answered by another worker), how many of those moves follow a
#      kill of the worker they left (expected: a dead worker's clients move once) and how
#      many do not (unexpected), WebSocket figures, latency, the proxy's RSS at start and its
#      peak (VmHWM), and worker restarts (crash respawns and rolling replacements, from the
#      proxy's log).
#
# Everything listens on 127.0.0.1. Every loop is bounded in count and in time. On exit
# (normal, error or Ctrl-C) the trap stops, by pid, exactly what this script started: the
# load generator and sticky-cluster (which stops its workers). Output (proxy log, kill log,
# events, summary) goes to OUT_DIR (default bench/soak/out/<timestamp>/).
#
# Environment: DURATION (600), WORKERS (4), KILL_EVERY (30), HUP_EVERY (90), DRAIN (5s),
# STICKY (24), FRESH (4), WS (4), PAUSE_MS (20), THREADS (proxy runtime threads; default
# the binary's), SKIP_BUILD, BIN, OUT_DIR.
# Exit status: 0 when the run completed (whatever the figures), 1 when it could not run.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SOAK_DIR=$REPO/bench/soak

DURATION=${DURATION:-600}
WORKERS=${WORKERS:-4}
KILL_EVERY=${KILL_EVERY:-30}
HUP_EVERY=${HUP_EVERY:-90}
DRAIN=${DRAIN:-5s}
THREADS=${THREADS:-}
OUT_DIR=${OUT_DIR:-$SOAK_DIR/out/$(date +%Y%m%d-%H%M%S)}
BIN=${BIN:-$REPO/target/release/sticky-cluster}

die() { echo "soak: $*" >&2; exit 1; }
log() { echo "soak: [$(date +%H:%M:%S)] $*" >&2; }

[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 10 ]] || die "DURATION must be a whole number of seconds >= 10"
[[ $WORKERS =~ ^[0-9]+$ && $WORKERS -ge 2 && $WORKERS -le 64 ]] || die "WORKERS must be 2..64"
[[ $KILL_EVERY =~ ^[0-9]+$ && $KILL_EVERY -ge 5 ]] || die "KILL_EVERY must be >= 5"
[[ $HUP_EVERY =~ ^[0-9]+$ && $HUP_EVERY -ge 10 ]] || die "HUP_EVERY must be >= 10"
command -v node >/dev/null || die "needs node (>= 18)"
command -v curl >/dev/null || die "needs curl"
[[ -r /proc/self/status ]] || die "needs /proc (Linux)"

if [[ -z ${SKIP_BUILD:-} ]]; then
  log "building: cargo build --release --bin sticky-cluster"
  (cd "$REPO" && cargo build --release --quiet --bin sticky-cluster) || die "build failed"
fi
[[ -x $BIN ]] || die "no binary at $BIN (build it, or set BIN)"
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)

SC_PID=""
LOAD_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n $LOAD_PID ]] && kill -0 "$LOAD_PID" 2>/dev/null; then
    kill -TERM "$LOAD_PID" 2>/dev/null || true
  fi
  if [[ -n $SC_PID ]] && kill -0 "$SC_PID" 2>/dev/null; then
    kill -TERM "$SC_PID" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$SC_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$SC_PID" 2>/dev/null; then
      echo "soak: sticky-cluster $SC_PID ignored SIGTERM for 15 s: SIGKILL" >&2
      kill -KILL "$SC_PID" 2>/dev/null || true
    fi
  fi
  if [[ -n $LOAD_PID ]]; then
    for _ in $(seq 1 50); do kill -0 "$LOAD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$LOAD_PID" 2>/dev/null && kill -KILL "$LOAD_PID" 2>/dev/null
  fi
  wait 2>/dev/null || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- ports: a free proxy port followed by 2*WORKERS free worker ports (port + spare) -----
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PROXY_PORT=""
for attempt in $(seq 1 200); do
  base=$((20000 + (RANDOM * 7 + attempt * 131) % 11000))
  ok=1
  for ((p = base; p <= base + 2 * WORKERS; p++)); do
    if in_use "$p"; then ok=0; break; fi
  done
  if ((ok)); then PROXY_PORT=$base; break; fi
done
[[ -n $PROXY_PORT ]] || die "no run of $((2 * WORKERS + 1)) free ports"
WORKER_PORT=$((PROXY_PORT + 1))
URL=http://127.0.0.1:$PROXY_PORT

# --- start sticky-cluster ----------------------------------------------------------------
args=(--bind 127.0.0.1 --proxy-port "$PROXY_PORT" --worker-port "$WORKER_PORT"
  --workers "$WORKERS" --delay 0s --drain-timeout "$DRAIN"
  --secret-file "$OUT_DIR/affinity.key")
[[ -n $THREADS ]] && args+=(--threads "$THREADS")
log "starting $BIN ${args[*]}"
env -u STICKY_CLUSTER_SECRET -u STICKY_CLUSTER_ROLE NO_COLOR=1 "$BIN" "${args[@]}" </dev/null \
  >"$OUT_DIR/proxy.stdout" 2>"$OUT_DIR/proxy.stderr" &
SC_PID=$!
echo "$SC_PID" >"$OUT_DIR/proxy.pid"

ready=0
for _ in $(seq 1 600); do
  kill -0 "$SC_PID" 2>/dev/null || { tail -20 "$OUT_DIR/proxy.stderr" >&2; die "sticky-cluster exited at start"; }
  if curl -fsS -m 2 -o /dev/null "$URL/whoami" 2>/dev/null; then ready=1; break; fi
  sleep 0.1
done
((ready)) || die "sticky-cluster did not answer on $URL within 60 s"
log "proxy pid $SC_PID on $URL, $WORKERS workers on :$WORKER_PORT+; running ${DURATION}s"

rss_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || true; }
RSS_START=$(rss_kb "$SC_PID" VmRSS)

# A worker pid we may kill: a live process whose parent is our sticky-cluster.
ours() {
  local pid=$1 ppid
  [[ $pid =~ ^[0-9]+$ && $pid -gt 1 ]] || return 1
  ppid=$(awk '$1 == "PPid:" { print $2 }' "/proc/$pid/status" 2>/dev/null) || return 1
  [[ $ppid == "$SC_PID" ]]
}

# --- load --------------------------------------------------------------------------------
TARGET=$URL DURATION=$DURATION EVENTS=$OUT_DIR/events.jsonl SUMMARY=$OUT_DIR/load.json \
  node "$SOAK_DIR/load.js" >"$OUT_DIR/load.stdout" 2>"$OUT_DIR/load.stderr" &
LOAD_PID=$!

start=$(date +%s)
end=$((start + DURATION))
# Kill times jitter by -5..+5 s (RANDOM read here, in the main shell, not in a subshell).
next_kill=$((start + KILL_EVERY - 5 + RANDOM % 11))
next_hup=$((start + HUP_EVERY))
kills=0
hups=0
rss_max=${RSS_START:-0}
: >"$OUT_DIR/kills.jsonl"
# One iteration per second; the count bound covers DURATION plus slack for slow iterations.
for ((i = 0; i < DURATION + 60; i++)); do
  now=$(date +%s)
  ((now < end)) || break
  kill -0 "$SC_PID" 2>/dev/null || die "sticky-cluster died (see $OUT_DIR/proxy.stderr)"
  rss=$(rss_kb "$SC_PID" VmRSS)
  [[ -n $rss ]] && ((rss > rss_max)) && rss_max=$rss
  echo "$now $rss $(rss_kb "$SC_PID" VmHWM)" >>"$OUT_DIR/rss.log"
  if ((now >= next_kill)); then
    pid=$(curl -sS -m 3 "$URL/whoami" 2>/dev/null | sed -n 's/.*"pid":\([0-9]*\).*/\1/p' || true)
    if [[ -n $pid ]] && ours "$pid"; then
      wid=$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | sed -n 's/^WORKER_ID=//p' || true)
      kill -KILL "$pid" 2>/dev/null && {
        kills=$((kills + 1))
        log "kill -9 worker ${wid:-?} (pid $pid)"
        echo "{\"t\":$(date +%s.%N),\"worker\":${wid:-null},\"pid\":$pid}" >>"$OUT_DIR/kills.jsonl"
      }
    else
      log "no worker pid of ours to kill this time (got '${pid}')"
    fi
    next_kill=$((now + KILL_EVERY - 5 + RANDOM % 11))
  fi
  if ((now >= next_hup)); then
    kill -HUP "$SC_PID" && hups=$((hups + 1)) && log "SIGHUP (rolling restart)"
    next_hup=$((now + HUP_EVERY))
  fi
  sleep 1
done

# The load generator stops on its own at DURATION; give it 30 s more, then stop it.
for _ in $(seq 1 300); do kill -0 "$LOAD_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$LOAD_PID" 2>/dev/null; then
  log "load generator still running after DURATION+30s: stopping it"
  kill -TERM "$LOAD_PID" 2>/dev/null || true
fi
wait "$LOAD_PID" 2>/dev/null || true
LOAD_PID=""
RSS_END=$(rss_kb "$SC_PID" VmRSS)
HWM=$(rss_kb "$SC_PID" VmHWM)
[[ -s $OUT_DIR/load.json ]] || die "the load generator wrote no summary (see $OUT_DIR/load.stderr)"

count() { grep -c -- "$1" "$OUT_DIR/proxy.stderr" 2>/dev/null || true; }
RESPAWNS=$(count "restarting worker")
BACK_UP=$(count "worker back up")
REPLACED=$(count "replacement ready")
ROLLS=$(count "rolling restart done")
ROLL_FAIL=$(count "rolling restart stopped")
ERRORS=$(grep -c " ERROR " "$OUT_DIR/proxy.stderr" 2>/dev/null || true)

# --- summary -----------------------------------------------------------------------------
OUT_DIR=$OUT_DIR KILLS=$kills HUPS=$hups RSS_START=${RSS_START:-0} RSS_MAX=$rss_max \
  RSS_END=${RSS_END:-0} HWM=${HWM:-0} RESPAWNS=$RESPAWNS BACK_UP=$BACK_UP REPLACED=$REPLACED \
  ROLLS=$ROLLS ROLL_FAIL=$ROLL_FAIL ERRORS=$ERRORS DURATION=$DURATION WORKERS=$WORKERS \
  node "$SOAK_DIR/summary.js" | tee "$OUT_DIR/summary.txt"
