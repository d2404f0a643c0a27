#!/usr/bin/env bash
# TLS-terminating sticky proxies side by side: nginx, HAProxy and sticky-cluster, each
# terminating HTTPS with the same self-signed certificate in front of the same two nginx
# backends as ../shared/bench/run-peers.sh (b0 :18000, b1 :18001, plain HTTP/1.1).
#
#   bench/run-tls.sh                          # RUNS=3 DURATION=10, h1 (wrk) and h2 (h2load)
#   RUNS=1 DURATION=5 PROTOCOLS=h1 bench/run-tls.sh
#
# Layout (all on 127.0.0.1): proxy :18443 pinned to CPU 0 (one worker / thread each:
# nginx worker_processes 1, HAProxy nbthread 1, sticky-cluster --threads 1); backends and
# the load generator on CPU 1.
#   h1: wrk -t1 -c64 over https, keep-alive, sessions.lua (10k connect.sid ids), as
#       run-peers.sh; TLS handshakes happen once per connection, so this measures the
#       per-request record encryption + proxying cost.
#   h2: h2load -t1 -c64 -m1 (one stream at a time per connection, like wrk) with ALPN h2,
#       fixed cookie connect.sid=s1 (h2load cannot vary headers per request), time-bounded
#       with -D. Skipped with a note when h2load (Debian: nghttp2-client) is missing.
# sticky-cluster is included when `sticky-cluster --help` lists --tls-cert, else skipped
# with a note. Certificate: ECDSA P-256 (TLS_KEY=ec, default) or RSA 2048 (TLS_KEY=rsa),
# made with openssl in a temp dir; TLS 1.3 is negotiated by all three.
#
# Knobs (env): RUNS=3, DURATION=10, WARMUP=2, CONNS=64, SESSIONS=10000, PROTOCOLS="h1 h2",
#   CANDIDATES="nginx haproxy sticky-cluster", TLS_KEY=ec, H2_STREAMS=1, PROXY_CPU=0,
#   LOAD_CPU=1, OUT_DIR (default /tmp/sticky-tls-results/<UTC stamp>), BIN, SKIP_BUILD=1,
#   QUIET_MAX / QUIET_WAIT (wait for other load to settle), FOREIGN_MAX=10 / MAX_RETRY=2
#   (a run during which other processes used more than FOREIGN_MAX % of a core is logged
#   to runs-noisy.tsv and redone), as run-peers.sh.
# Output: a markdown table (median of RUNS per candidate and protocol) + raw runs.tsv.
# Every process started here is stopped by PID on exit.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
export SESSIONS=${SESSIONS:-10000}
PROTOCOLS=${PROTOCOLS:-h1 h2}
CANDIDATES=${CANDIDATES:-nginx haproxy sticky-cluster}
TLS_KEY=${TLS_KEY:-ec}
H2_STREAMS=${H2_STREAMS:-1}
FOREIGN_MAX=${FOREIGN_MAX:-10}
MAX_RETRY=${MAX_RETRY:-2}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT_DIR=${OUT_DIR:-/tmp/sticky-tls-results/$STAMP}
RUN_DIR=$(mktemp -d /tmp/sticky-tls.XXXXXX)
PORT_P=18443
URL=https://127.0.0.1:$PORT_P/
mkdir -p "$OUT_DIR/logs"

for b in wrk nginx haproxy openssl curl taskset ss; do command -v $b >/dev/null || die "missing $b"; done
port_busy $PORT_P && die "port $PORT_P already in use"
if [[ -z ${SKIP_BUILD:-} ]]; then
  log "building: cargo build --release"
  (cd "$REPO" && cargo build --release --quiet)
fi

# ------------------------------------------------------------------ what can run
NOTES=()
if [[ " $CANDIDATES " == *" sticky-cluster "* ]]; then
  if [[ ! -x $BIN ]]; then
    NOTES+=("sticky-cluster skipped: no binary at $BIN"); CANDIDATES=${CANDIDATES/sticky-cluster/}
  elif ! "$BIN" --help 2>/dev/null | grep -q -- '--tls-cert'; then
    NOTES+=("sticky-cluster skipped: this build has no --tls-cert"); CANDIDATES=${CANDIDATES/sticky-cluster/}
  fi
fi
if [[ " $PROTOCOLS " == *" h2 "* ]] && ! command -v h2load >/dev/null; then
  NOTES+=("h2 skipped: h2load not found (apt-get install nghttp2-client)"); PROTOCOLS=${PROTOCOLS/h2/}
fi

# ------------------------------------------------------------------ certificate
make_cert "$TLS_KEY"

{
  machine_info
  echo "openssl: $(openssl version)"
  command -v h2load >/dev/null && echo "h2load: $(h2load --version 2>&1 | head -1)"
  echo "certificate: self-signed, $TLS_KEY $( [[ $TLS_KEY == ec ]] && echo P-256 || echo 2048 )"
  echo "params: runs=$RUNS duration=${DURATION}s warmup=${WARMUP}s conns=$CONNS sessions=$SESSIONS protocols=$PROTOCOLS h2_streams=$H2_STREAMS proxy_cpu=$PROXY_CPU load_cpu=$LOAD_CPU"
  echo "candidates: $CANDIDATES"
  for n in "${NOTES[@]}"; do echo "note: $n"; done
} | tee "$OUT_DIR/env.txt" >&2

write_nginx_proxy_conf nginx-tls-h1 $PORT_P "$CERT" "$KEY"
write_nginx_proxy_conf nginx-tls-h2 $PORT_P "$CERT" "$KEY" h2
write_haproxy_conf "$RUN_DIR/haproxy-tls.cfg" $PORT_P "$PEM" alpn
cp "$RUN_DIR"/nginx-tls-h2/nginx.conf "$OUT_DIR/nginx-tls.conf"; cp "$RUN_DIR"/haproxy-tls.cfg "$OUT_DIR/"

PROXY_PID=""
start_proxy() {     # start_proxy NAME PROTO
  local lg=$OUT_DIR/logs/proxy-$1-$2.log
  start_tls_proxy "$1" "$lg" "nginx-tls-$2"
  wait_http "$URL" 15 -k || { tail -5 "$lg" >&2 2>/dev/null || true; die "$1 did not answer on $URL"; }
}
stop_proxy() { stop_one "$PROXY_PID"; PROXY_PID=""; wait_port_free $PORT_P || die "port $PORT_P busy"; }

load() {            # load PROTO SECONDS LOG: one bounded load run; background + wait
  local pid rc=0
  if [[ $1 == h1 ]]; then
    timeout $(( $2 + 30 )) taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$2"s --timeout 5s --latency \
      -s "$SHARED_BENCH/sessions.lua" "$URL" >"$3" 2>&1 &
  else
    timeout $(( $2 + 30 )) taskset -c "$LOAD_CPU" h2load -t1 -c"$CONNS" -m"$H2_STREAMS" -D "$2" \
      -H 'cookie: connect.sid=s1' "$URL" >"$3" 2>&1 &
  fi
  pid=$!; STARTED+=("$pid")
  wait "$pid" || rc=$?
  forget_pid "$pid"
  return $rc
}
parse() {           # parse PROTO LOG -> "requests seconds p50_ms p99_ms errors"
  if [[ $1 == h1 ]]; then
    sed -nE 's/^BENCH requests=([0-9]+) duration_us=([0-9]+) p50_us=([0-9]+) p90_us=[0-9]+ p99_us=([0-9]+).*/\1 \2 \3 \4/p' "$2" \
      | awk -v e="$(awk '/^BENCH/ {s=0; for(i=1;i<=NF;i++) if ($i ~ /^err_/) { split($i,a,"="); s+=a[2] } print s}' "$2")" \
        '{ printf "%d %.3f %.3f %.3f %d\n", $1, $2/1e6, $3/1000, $4/1000, e }'
  else
    # h2load: "finished in 10.00s, 1234.50 req/s", "requests: N total, N started, N done,
    # N succeeded, N failed, N errored, N timeout", "time for request: min max mean sd"
    awk '/^finished in/ { s=$3; sub(/,$/, "", s); if (s ~ /ms$/) { sub(/ms$/, "", s); s/=1000 } else sub(/s$/, "", s) }
         /^requests:/ { done=$8; failed=$10; errored=$12; timeout=$14 }
         /^time for request:/ { mean=$6; max=$5 }
         function ms(v) { if (v ~ /us$/) { sub(/us$/, "", v); return v/1000 } if (v ~ /ms$/) { sub(/ms$/, "", v); return v+0 } sub(/s$/, "", v); return v*1000 }
         END { printf "%d %.3f %.3f %.3f %d\n", done, s, ms(mean), ms(max), failed+errored+timeout }' "$2"
  fi
}

RUNS_TSV=$OUT_DIR/runs.tsv
printf 'candidate\tproto\tround\trps\tp50_ms\tp99_ms\tcpu_us_per_req\tforeign_pct\terrors\n' >"$RUNS_TSV"
log "starting backends on CPU $LOAD_CPU"
start_backends

for round in $(seq 1 "$RUNS"); do
  for c in $CANDIDATES; do
    for p in $PROTOCOLS; do
      log "round $round/$RUNS: $c $p"
      for attempt in $(seq 1 $(( MAX_RETRY + 1 ))); do
        start_proxy "$c" "$p"
        if [[ $round == 1 && $p == h1 && $attempt == 1 ]]; then
          sc=$(sticky_check "$URL" -k --http1.1)
          log "  sticky check $c (https): $sc"; echo "$c https $sc" >>"$OUT_DIR/sticky.txt"
        fi
        wait_quiet
        load "$p" "$WARMUP" "$OUT_DIR/logs/warmup-$c-$p-r$round.log" || true
        lg=$OUT_DIR/logs/load-$c-$p-r$round-a$attempt.log
        t0=$(tree_ticks "$PROXY_PID"); c0=$(cpu_snap)
        o0=$(( t0 + $(tree_ticks "${BACKEND_PIDS[0]}") + $(tree_ticks "${BACKEND_PIDS[1]}") + $(self_ticks) ))
        load "$p" "$DURATION" "$lg" || log "  load generator exited non-zero (see $lg)"
        t1=$(tree_ticks "$PROXY_PID"); c1=$(cpu_snap)
        o1=$(( t1 + $(tree_ticks "${BACKEND_PIDS[0]}") + $(tree_ticks "${BACKEND_PIDS[1]}") + $(self_ticks) ))
        stop_proxy
        read -r req secs p50 p99 errs <<<"$(parse "$p" "$lg")" || true
        if [[ -z ${req:-} || $req == 0 ]]; then log "  no requests parsed from $lg"; row=""; break; fi
        fo=$(foreign_pct "$c0" "$c1" $(( o1 - o0 )))
        row=$(awk -v c="$c" -v p="$p" -v r="$round" -v req="$req" -v s="$secs" -v p50="$p50" -v p99="$p99" \
                -v dt=$(( t1 - t0 )) -v tck="$CLK_TCK" -v fo="$fo" -v e="$errs" \
                'BEGIN { printf "%s\t%s\t%s\t%.0f\t%.3f\t%.3f\t%.1f\t%s\t%d\n", c, p, r, req/s, p50, p99, dt*1e6/tck/req, fo, e }')
        if (( fo > FOREIGN_MAX )) && (( attempt <= MAX_RETRY )); then
          log "  $(tr '\t' ' ' <<<"$row")"
          log "  other processes used ${fo}% of a core (> FOREIGN_MAX=$FOREIGN_MAX): redoing"
          echo "$row" >>"$OUT_DIR/runs-noisy.tsv"
          sleep 2
          continue
        fi
        break
      done
      [[ -n $row ]] || continue
      log "  $(tr '\t' ' ' <<<"$row")"
      echo "$row" >>"$RUNS_TSV"
    done
  done
done

{
  echo "| candidate | proto | runs | median req/s | p50 ms (h2: mean) | p99 ms (h2: max) | proxy CPU us/req | foreign % | errors |"
  echo "|---|---|---|---|---|---|---|---|---|"
  awk -F'\t' "$AWK_MED"'
    NR == 1 { next }
    { k = $1 " " $2; if (!(k in n)) ord[++m] = k; n[k]++; rps[k] = rps[k] " " $4; p50[k] = p50[k] " " $5;
      p99[k] = p99[k] " " $6; cpu[k] = cpu[k] " " $7; fo[k] = fo[k] " " $8; err[k] += $9 }
    END { for (i = 1; i <= m; i++) { k = ord[i]; split(k, f, " ");
      printf "| %s | %s | %d | %.0f | %.2f | %.2f | %.1f | %.0f | %d |\n", f[1], f[2], n[k], med(rps[k]),
        med(p50[k]), med(p99[k]), med(cpu[k]), med(fo[k]), err[k] } }' "$RUNS_TSV"
} | tee "$OUT_DIR/table.md"
echo
for n in "${NOTES[@]}"; do echo "note: $n"; done
echo "sticky checks (https, 40 ids x 3 rounds over one keep-alive connection each):"
cat "$OUT_DIR/sticky.txt" 2>/dev/null || true
echo "raw runs: $RUNS_TSV"
