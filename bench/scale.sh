#!/usr/bin/env bash
# The cost per extra worker and per session: proxy CPU per request with SMALL_WORKERS (2)
# workers and SMALL_SESSIONS (10k) sessions against BIG_WORKERS (64) workers and
# BIG_SESSIONS (1M) sessions, for sticky-cluster, nginx (consistent hash of connect.sid: no
# table) and HAProxy (stick-table of 1M entries on connect.sid), in interleaved rounds.
#
# Each run: the proxy starts over W backend ports (one nginx with W listeners, on LOAD_CPU),
# every session id is sent once (the fill: S distinct connect.sid values, so the proxy's
# table holds S keys; bounded by count), then wrk replays the ids in order for DURATION
# seconds (every request a table hit, spread over the whole table: cache-unfriendly) while
# the proxy's CPU ticks are read. Reported: proxy CPU µs per request (median of RUNS) and
# RSS after the fill.
#
#   bench/scale.sh                              # RUNS=3 DURATION=10
#   RUNS=1 DURATION=5 bench/scale.sh            # quick
#
# Knobs (env): RUNS=3, DURATION=10, CONNS=64, SMALL_WORKERS=2, SMALL_SESSIONS=10000,
#   BIG_WORKERS=64, BIG_SESSIONS=1000000, CANDIDATES="nginx haproxy sticky-cluster",
#   PROXY_CPU=0, LOAD_CPU=1, OUT_DIR (default /tmp/sticky-scale/<UTC stamp>), BIN,
#   SKIP_BUILD=1. Every process started here is stopped by PID on exit.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
SMALL_WORKERS=${SMALL_WORKERS:-2}
SMALL_SESSIONS=${SMALL_SESSIONS:-10000}
BIG_WORKERS=${BIG_WORKERS:-64}
BIG_SESSIONS=${BIG_SESSIONS:-1000000}
CANDIDATES=${CANDIDATES:-nginx haproxy sticky-cluster}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT_DIR=${OUT_DIR:-/tmp/sticky-scale/$STAMP}
RUN_DIR=$(mktemp -d /tmp/sticky-scale.XXXXXX)
PORT_P=18080
FIRST_BACKEND=18100
mkdir -p "$OUT_DIR/logs"

prepare_run "RUNS=$RUNS DURATION=${DURATION}s small=${SMALL_WORKERS}w/${SMALL_SESSIONS}s big=${BIG_WORKERS}w/${BIG_SESSIONS}s" $PORT_P
for p in $(seq $FIRST_BACKEND $(( FIRST_BACKEND + BIG_WORKERS - 1 ))); do
  port_busy "$p" && die "port $p already in use"
done

# One nginx, BIG_WORKERS listeners, each answering with its port.
d=$RUN_DIR/backends; mkdir -p "$d/tmp"
{ nginx_common "$d"
  echo "http {"; nginx_http_common "$d"
  for p in $(seq $FIRST_BACKEND $(( FIRST_BACKEND + BIG_WORKERS - 1 ))); do
    echo "  server { listen 127.0.0.1:$p backlog=4096; location / { default_type text/plain; return 200 \"$p\"; } }"
  done
  echo "}"
} >"$d/nginx.conf"
start_nginx "$LOAD_CPU" backends
wait_http "http://127.0.0.1:$FIRST_BACKEND/" 10 || die "backends did not start"

servers() {         # servers W TEMPLATE: TEMPLATE per worker, with @I (index) and @P (port)
  local i t
  for i in $(seq 0 $(( $1 - 1 ))); do
    t=${2//@I/$i}; printf '%b' "${t//@P/$(( FIRST_BACKEND + i ))}"
  done
}
configure() {       # configure W: the peers' configs over W workers
  write_nginx_proxy_conf "nginx-w$1" $PORT_P
  local nginx_servers
  nginx_servers=$(servers "$1" '    server 127.0.0.1:@P;\n')
  awk -v s="$nginx_servers" '/server 127.0.0.1:18001;/ { printf "%s", s; next } /server 127.0.0.1:18000;/ { next } { print }' \
    "$RUN_DIR/nginx-w$1/nginx.conf" >"$RUN_DIR/nginx-w$1/nginx.conf.new"
  mv "$RUN_DIR/nginx-w$1/nginx.conf.new" "$RUN_DIR/nginx-w$1/nginx.conf"
  write_haproxy_conf "$RUN_DIR/haproxy-w$1.cfg" $PORT_P
  sed -i '/^  server b[01] /d' "$RUN_DIR/haproxy-w$1.cfg"
  servers "$1" '  server b@I 127.0.0.1:@P\n' >>"$RUN_DIR/haproxy-w$1.cfg"
  haproxy -c -q -f "$RUN_DIR/haproxy-w$1.cfg" || die "haproxy config for $1 workers invalid"
}
configure "$SMALL_WORKERS"
configure "$BIG_WORKERS"

PROXY_PID=""
start_proxy() {     # start_proxy NAME W
  local lg=$OUT_DIR/logs/proxy-$1-w$2.log
  case $1 in
    nginx) nginx -t -q -p "$RUN_DIR/nginx-w$2" -c "$RUN_DIR/nginx-w$2/nginx.conf" -e "$RUN_DIR/nginx-w$2/error.log" \
             || die "nginx config for $2 workers invalid"
           start_nginx "$PROXY_CPU" "nginx-w$2" ;;
    haproxy) start_bg "$PROXY_CPU" "$lg" haproxy -db -f "$RUN_DIR/haproxy-w$2.cfg" ;;
    sticky-cluster)
      # shellcheck disable=SC2046
      start_bg "$PROXY_CPU" "$lg" "$BIN" --threads 1 --bind 127.0.0.1 --proxy-port $PORT_P \
        $(servers "$2" '--upstream 127.0.0.1:@P ') --session-max $(( BIG_SESSIONS + BIG_SESSIONS / 4 )) \
        --secret-file "$RUN_DIR/affinity.key" --delay 0s ;;
    *) die "unknown candidate $1" ;;
  esac
  PROXY_PID=$LAST_PID
  wait_http "http://127.0.0.1:$PORT_P/" 15 || die "$1 did not answer"
}
stop_proxy() { stop_one "$PROXY_PID"; PROXY_PID=""; wait_port_free $PORT_P || die "port $PORT_P busy"; }

RUNS_TSV=$OUT_DIR/runs.tsv
printf 'candidate\tworkers\tsessions\tround\trps\tcpu_us_per_req\trss_kib\n' >"$RUNS_TSV"
for round in $(seq 1 "$RUNS"); do
  for c in $CANDIDATES; do
    for size in small big; do
      if [[ $size == small ]]; then w=$SMALL_WORKERS s=$SMALL_SESSIONS; else w=$BIG_WORKERS s=$BIG_SESSIONS; fi
      start_proxy "$c" "$w"
      wait_quiet
      # The fill: every id once, in order (bounded by count).
      SESSIONS=$s MAX_REQUESTS=$s run_wrk 600 "$OUT_DIR/logs/fill-$c-$w-r$round.log" "$CONNS" \
        "$BENCH_DIR/bounded.lua" >/dev/null
      rss=$(tree_rss_kib "$PROXY_PID")
      lg=$OUT_DIR/logs/load-$c-$w-r$round.log
      t0=$(tree_ticks "$PROXY_PID")
      req=$(SESSIONS=$s run_wrk "$DURATION" "$lg" "$CONNS" "$SHARED_BENCH/sessions.lua")
      t1=$(tree_ticks "$PROXY_PID")
      stop_proxy
      row=$(awk -v c="$c" -v w="$w" -v s="$s" -v r="$round" -v req="$req" -v d="$DURATION" \
              -v dt=$(( t1 - t0 )) -v tck="$CLK_TCK" -v rss="$rss" \
              'BEGIN { printf "%s\t%d\t%d\t%s\t%.0f\t%.1f\t%d\n", c, w, s, r, req/d, dt*1e6/tck/req, rss }')
      log "round $round: $(tr '\t' ' ' <<<"$row")"
      echo "$row" >>"$RUNS_TSV"
    done
  done
done

{
  echo "| candidate | workers | sessions | runs | median req/s | median proxy CPU µs/request | RSS after the fill |"
  echo "|---|---|---|---|---|---|---|"
  awk -F'\t' "$AWK_MED"'
    NR == 1 { next }
    { k = $1 " " $2 " " $3; if (!(k in n)) ord[++m] = k; n[k]++; rps[k] = rps[k] " " $5; cpu[k] = cpu[k] " " $6; rss[k] = rss[k] " " $7 }
    END { for (i = 1; i <= m; i++) { k = ord[i]; split(k, f, " ");
      printf "| %s | %d | %d | %d | %.0f | %.1f | %.1f MiB |\n", f[1], f[2], f[3], n[k], med(rps[k]), med(cpu[k]), med(rss[k]) / 1024 } }' "$RUNS_TSV"
} | tee "$OUT_DIR/summary.md"
log "outputs in $OUT_DIR"
