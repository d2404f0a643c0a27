#!/usr/bin/env bash
# User-space instructions per MiB of body through each proxy, under callgrind: immune to
# the machine's noise, unlike bench/bodies.sh's CPU times (which include the kernel's
# socket copies, the larger part).
#
#   bench/bodies-callgrind.sh
#   BASE_BIN=/tmp/old-build CANDIDATES="sticky-base sticky-cluster" bench/bodies-callgrind.sh
#
# Backends: the 2 Node servers of bench/bodies.sh (:18000 :18001). Per candidate (one at a
# time on :18090, under valgrind --tool=callgrind) and case (down-16m: GET of 16 MiB,
# up-16m: POST of 16 MiB): one warm-up transfer, counters zeroed (callgrind_control -z),
# COUNT sequential transfers with curl, counters dumped; Ir / MiB moved.
# Knobs (env): COUNT=8, CASES="down-16m up-16m", CANDIDATES="sticky-cluster nginx haproxy"
#   (sticky-base: BASE_BIN), PROXY_CPU=0, LOAD_CPU=1, OUT_DIR (default
#   /tmp/sticky-bodies-cg/<UTC stamp>), BIN, SKIP_BUILD=1.
# Every process started here is stopped by PID on exit; every transfer is bounded in time.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

COUNT=${COUNT:-8}
CASES=${CASES:-down-16m up-16m}
CANDIDATES=${CANDIDATES:-sticky-cluster nginx haproxy}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT_DIR=${OUT_DIR:-/tmp/sticky-bodies-cg/$STAMP}
RUN_DIR=$(mktemp -d /tmp/sticky-bodies-cg.XXXXXX)
PORT_P=18090
mkdir -p "$OUT_DIR/logs"

for b in node valgrind callgrind_control callgrind_annotate nginx haproxy curl taskset ss; do
  command -v $b >/dev/null || die "missing $b"
done
for p in 18000 18001 $PORT_P; do port_busy "$p" && die "port $p already in use"; done
if [[ -z ${SKIP_BUILD:-} ]]; then
  log "building: cargo build --release"
  (cd "$REPO" && cargo build --release --quiet)
fi
[[ -x $BIN ]] || die "no binary at $BIN"
machine_info | tee "$OUT_DIR/env.txt" >&2

for port in 18000 18001; do
  start_bg "$LOAD_CPU" "$OUT_DIR/logs/backend-$port.log" env PORT=$port node "$BENCH_DIR/bodies/backend.js"
  wait_http "http://127.0.0.1:$port/" 15 || die "backend :$port did not start"
done
head -c $(( 16 << 20 )) /dev/zero >"$RUN_DIR/up-16m"

start_candidate() {  # start_candidate NAME OUT: under callgrind on :PORT_P; sets PROXY_PID
  local c=$1 vg=(valgrind --tool=callgrind --callgrind-out-file="$2.%p" --dump-instr=no --collect-jumps=no)
  case $c in
    sticky-cluster|sticky-base)
      local bin=$BIN; [[ $c == sticky-base ]] && bin=${BASE_BIN:?sticky-base needs BASE_BIN}
      start_bg "$PROXY_CPU" "$OUT_DIR/logs/proxy-$c.log" "${vg[@]}" "$bin" --threads 1 --bind 127.0.0.1 \
        --proxy-port $PORT_P --upstream 127.0.0.1:18000 --upstream 127.0.0.1:18001 \
        --secret-file "$RUN_DIR/affinity.key" --delay 0s ;;
    nginx) NGINX_MASTER=off write_nginx_proxy_conf nginx-proxy $PORT_P
           sed -i 's/^  access_log off;/&\n  client_max_body_size 64m;/' "$RUN_DIR/nginx-proxy/nginx.conf"
           chmod 755 "$RUN_DIR" "$RUN_DIR/nginx-proxy"; chmod -R 777 "$RUN_DIR/nginx-proxy/tmp"
           start_bg "$PROXY_CPU" "$OUT_DIR/logs/proxy-$c.log" "${vg[@]}" nginx \
             -p "$RUN_DIR/nginx-proxy" -c "$RUN_DIR/nginx-proxy/nginx.conf" -e "$RUN_DIR/nginx-proxy/error.log" ;;
    haproxy) write_haproxy_conf "$RUN_DIR/haproxy.cfg" $PORT_P
             start_bg "$PROXY_CPU" "$OUT_DIR/logs/proxy-$c.log" "${vg[@]}" haproxy -db -f "$RUN_DIR/haproxy.cfg" ;;
    *) die "unknown candidate $c" ;;
  esac
  PROXY_PID=$LAST_PID
  wait_http "http://127.0.0.1:$PORT_P/" 120 || die "$c did not answer on :$PORT_P"
}
transfer() {         # transfer CASE: one 16 MiB transfer; fails unless it is whole
  local got
  if [[ $1 == down-16m ]]; then
    got=$(curl -s --max-time 120 -o /dev/null -w '%{http_code} %{size_download}' "http://127.0.0.1:$PORT_P/down/16m")
    [[ $got == "200 $(( 16 << 20 ))" ]] || die "download got $got"
  else
    got=$(curl -s --max-time 120 --data-binary @"$RUN_DIR/up-16m" -w ' %{http_code}' "http://127.0.0.1:$PORT_P/up")
    [[ $got == "ok 200" ]] || die "upload got $got"
  fi
}

echo "| case | proxy | MiB moved | Ir per MiB |" >"$OUT_DIR/table.md"
echo "|---|---|---|---|" >>"$OUT_DIR/table.md"
for case in $CASES; do
  for c in $CANDIDATES; do
    log "$case through $c under callgrind"
    cg=$OUT_DIR/cg-$case-$c.out
    start_candidate "$c" "$cg"
    transfer "$case"
    callgrind_control -z >/dev/null 2>&1 || log "callgrind_control -z failed"
    for _ in $(seq 1 "$COUNT"); do transfer "$case"; done
    callgrind_control -d >/dev/null 2>&1 || log "callgrind_control -d failed"
    sleep 2
    stop_one "$PROXY_PID"; wait_port_free $PORT_P || die "port $PORT_P busy"
    dump="" best=0
    for f in "$cg".*.[0-9]*; do
      [[ -f $f ]] || continue
      t=$(awk '/^(summary|totals):/ {print $2; exit}' "$f")
      if (( ${t:-0} > best )); then best=$t; dump=$f; fi
    done
    [[ -n $dump ]] || { log "no dump for $c"; continue; }
    mib=$(( COUNT * 16 ))
    printf '| %s | %s | %d | %d |\n' "$case" "$c" "$mib" $(( best / mib )) >>"$OUT_DIR/table.md"
    echo "$case $c $dump" >>"$OUT_DIR/dumps.txt"
  done
done
cat "$OUT_DIR/table.md"
echo "dumps: $OUT_DIR/dumps.txt (callgrind_annotate DUMP for the functions)"
