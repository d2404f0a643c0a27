#!/usr/bin/env bash
# Many short connections over TLS: a new connection, one GET and a close, again and again
# (`openssl s_time -www /`), against nginx, HAProxy and sticky-cluster, each terminating
# TLS in front of the same two nginx backends as bench/run-tls.sh. Two modes per round:
#   new     every connection a full handshake (no resumption),
#   reuse   every connection after the first resumes the first one's session (session
#           tickets or the server's session cache, whichever the server offers).
# Reported per candidate and mode: connections/s, proxy CPU µs per connection (handshake +
# one proxied request) from /proc ticks, median of RUNS interleaved rounds. The client is
# one openssl process on LOAD_CPU and is the bottleneck for full handshakes (it does its
# half of each), so connections/s says little: proxy CPU per connection is the figure.
#
#   bench/tls-handshakes.sh                       # RUNS=3 DURATION=5, TLS 1.3, ECDSA P-256
#   RUNS=1 DURATION=3 bench/tls-handshakes.sh     # quick
#
# Knobs (env): RUNS=3, DURATION=5, WARMUP=1, MODES="new reuse", TLS_VERSION=tls1_3
#   (or tls1_2), TLS_KEY=ec|rsa, CANDIDATES="nginx haproxy sticky-cluster", PROXY_CPU=0,
#   LOAD_CPU=1, OUT_DIR (default /tmp/sticky-tls-handshakes/<UTC stamp>), BIN, SKIP_BUILD=1.
# Server settings: nginx `ssl_session_cache shared:SSL:10m` (tickets on by default),
# HAProxy defaults (cache and tickets on), sticky-cluster as built (see src/tls.rs).
# Every process started here is stopped by PID on exit.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
MODES=${MODES:-new reuse}
TLS_VERSION=${TLS_VERSION:-tls1_3}
TLS_KEY=${TLS_KEY:-ec}
CANDIDATES=${CANDIDATES:-nginx haproxy sticky-cluster}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT_DIR=${OUT_DIR:-/tmp/sticky-tls-handshakes/$STAMP}
RUN_DIR=$(mktemp -d /tmp/sticky-tls-hs.XXXXXX)
PORT_P=18443
mkdir -p "$OUT_DIR/logs"

prepare_run "RUNS=$RUNS DURATION=${DURATION}s modes=$MODES version=$TLS_VERSION key=$TLS_KEY" $PORT_P
for b in openssl nginx haproxy; do command -v $b >/dev/null || die "missing $b"; done

make_cert "$TLS_KEY"
write_nginx_proxy_conf nginx-tls $PORT_P "$CERT" "$KEY"
write_haproxy_conf "$RUN_DIR/haproxy-tls.cfg" $PORT_P "$PEM" alpn

PROXY_PID=""
start_proxy() {     # start_proxy NAME
  start_tls_proxy "$1" "$OUT_DIR/logs/proxy-$1.log" nginx-tls
  wait_http "https://127.0.0.1:$PORT_P/" 15 -k || die "$1 did not answer"
}
stop_proxy() { stop_one "$PROXY_PID"; PROXY_PID=""; wait_port_free $PORT_P || die "port $PORT_P busy"; }

s_time() {          # s_time MODE SECONDS LOG: one bounded client run
  local pid rc=0
  timeout $(( $2 + 30 )) taskset -c "$LOAD_CPU" openssl s_time -connect 127.0.0.1:$PORT_P \
    -"$1" -time "$2" -www / -"$TLS_VERSION" >"$3" 2>&1 &
  pid=$!; STARTED+=("$pid")
  wait "$pid" || rc=$?
  forget_pid "$pid"
  return $rc
}
connections() {     # connections LOG -> "N SECONDS" of the run ("N connections in T real seconds")
  sed -nE 's/^([0-9]+) connections in ([0-9.]+) real seconds.*/\1 \2/p' "$1" | tail -1
}

RUNS_TSV=$OUT_DIR/runs.tsv
printf 'candidate\tmode\tround\tconns_per_s\tcpu_us_per_conn\n' >"$RUNS_TSV"
start_backends
for round in $(seq 1 "$RUNS"); do
  for c in $CANDIDATES; do
    start_proxy "$c"
    for m in $MODES; do
      wait_quiet
      s_time "$m" "$WARMUP" "$OUT_DIR/logs/warmup-$c-$m-r$round.log" || true
      lg=$OUT_DIR/logs/$c-$m-r$round.log
      t0=$(tree_ticks "$PROXY_PID")
      s_time "$m" "$DURATION" "$lg" || log "  s_time exited non-zero (see $lg)"
      t1=$(tree_ticks "$PROXY_PID")
      read -r n secs <<<"$(connections "$lg")" || true
      if [[ -z ${n:-} || $n == 0 ]]; then log "  no connections parsed from $lg"; continue; fi
      row=$(awk -v c="$c" -v m="$m" -v r="$round" -v n="$n" -v s="$secs" -v dt=$(( t1 - t0 )) -v tck="$CLK_TCK" \
        'BEGIN { printf "%s\t%s\t%s\t%.0f\t%.1f\n", c, m, r, n/s, dt*1e6/tck/n }')
      log "round $round: $(tr '\t' ' ' <<<"$row")"
      echo "$row" >>"$RUNS_TSV"
    done
    stop_proxy
  done
done

{
  echo "| candidate | mode | runs | median connections/s | median proxy CPU µs per connection |"
  echo "|---|---|---|---|---|"
  awk -F'\t' "$AWK_MED"'
    NR == 1 { next }
    { k = $1 " " $2; if (!(k in n)) ord[++m] = k; n[k]++; cps[k] = cps[k] " " $4; cpu[k] = cpu[k] " " $5 }
    END { for (i = 1; i <= m; i++) { k = ord[i]; split(k, f, " ");
      printf "| %s | %s | %d | %.0f | %.1f |\n", f[1], f[2], n[k], med(cps[k]), med(cpu[k]) } }' "$RUNS_TSV"
} | tee "$OUT_DIR/summary.md"
log "outputs in $OUT_DIR"
