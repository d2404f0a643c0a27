#!/usr/bin/env bash
# Large bodies through the proxy: 1 MiB and 16 MiB downloads and uploads, proxy CPU per MiB
# and throughput, for sticky-cluster, nginx and HAProxy (the run-peers.sh configs) in one
# run, rounds interleaved (peer, us, peer ...), medians.
#
#   bench/bodies.sh                          # ROUNDS=3 DURATION=5: about 4 minutes
#   ROUNDS=1 DURATION=3 bench/bodies.sh      # quick
#
# Layout (all on 127.0.0.1):
#   backends  2 Node servers (bench/bodies/backend.js) :18000 :18001: GET /down/1m and
#             /down/16m answer 1 and 16 MiB, POST /up reads the whole body, then answers
#             200 "ok"                                                         CPU LOAD_CPU
#   proxies   all running at once, each idle but for its own turn              CPU PROXY_CPU
#             sticky-cluster --threads 1 :18080, nginx :18082 (client_max_body_size 64m;
#             its default proxy_request_buffering on: an upload is read whole before it is
#             sent), HAProxy (nbthread 1) :18083
#   load      wrk -t1 -cCONNS, one connect.sid                                CPU LOAD_CPU
# Per (case, round, candidate): MiB/s through the proxy (body bytes only), and the proxy's
# CPU (utime+stime of its process tree from /proc, clock ticks) per MiB moved, and its
# user-space part (the rest is the kernel: socket reads and writes).
# Knobs (env): ROUNDS=3, DURATION=5, CONNS=8, CASES="down-1m down-16m up-1m up-16m",
#   CANDIDATES="nginx sticky-cluster haproxy" (add sticky-base with BASE_BIN=<binary> to
#   compare two builds of ours, :18081), PROXY_CPU=0, LOAD_CPU=1, OUT_DIR (default
#   /tmp/sticky-bodies/<UTC stamp>), BIN, SKIP_BUILD=1.
# Every process started here is stopped by PID on exit; every run is bounded in time.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-8}
CASES=${CASES:-down-1m down-16m up-1m up-16m}
CANDIDATES=${CANDIDATES:-nginx sticky-cluster haproxy}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT_DIR=${OUT_DIR:-/tmp/sticky-bodies/$STAMP}
RUN_DIR=$(mktemp -d /tmp/sticky-bodies.XXXXXX)
mkdir -p "$OUT_DIR/logs"

declare -A PORT=([sticky-cluster]=18080 [sticky-base]=18081 [nginx]=18082 [haproxy]=18083)
prepare_run "rounds=$ROUNDS duration=${DURATION}s conns=$CONNS cases=$CASES" "${PORT[@]}"

# ------------------------------------------------------------------ backends
for port in 18000 18001; do
  start_bg "$LOAD_CPU" "$OUT_DIR/logs/backend-$port.log" env PORT=$port node "$BENCH_DIR/bodies/backend.js"
  wait_http "http://127.0.0.1:$port/" 15 || die "backend :$port did not start"
done

# ------------------------------------------------------------------ proxies
PIDS=()
declare -A PID
for c in $CANDIDATES; do
  port=${PORT[$c]:-}; [[ -n $port ]] || die "unknown candidate $c"
  case $c in
    sticky-cluster|sticky-base)
      bin=$BIN; [[ $c == sticky-base ]] && bin=${BASE_BIN:?sticky-base needs BASE_BIN}
      start_bg "$PROXY_CPU" "$OUT_DIR/logs/proxy-$c.log" "$bin" --threads 1 \
        --bind 127.0.0.1 --proxy-port "$port" --upstream 127.0.0.1:18000 --upstream 127.0.0.1:18001 \
        --secret-file "$RUN_DIR/affinity.key" --delay 0s ;;
    nginx) write_nginx_proxy_conf nginx-proxy "$port"
           sed -i 's/^  access_log off;/&\n  client_max_body_size 64m;/' "$RUN_DIR/nginx-proxy/nginx.conf"
           # nginx started as root buffers bodies in temp files as its unprivileged user
           chmod 755 "$RUN_DIR" "$RUN_DIR/nginx-proxy"; chmod -R 777 "$RUN_DIR/nginx-proxy/tmp"
           start_nginx "$PROXY_CPU" nginx-proxy ;;
    haproxy) write_haproxy_conf "$RUN_DIR/haproxy.cfg" "$port"
             start_bg "$PROXY_CPU" "$OUT_DIR/logs/proxy-$c.log" haproxy -db -f "$RUN_DIR/haproxy.cfg" ;;
  esac
  PID[$c]=$LAST_PID
  wait_http "http://127.0.0.1:$port/" 15 || die "$c did not answer on :$port"
  # the whole body arrives through every proxy
  got=$(curl -s --max-time 20 -o /dev/null -w "%{http_code} %{size_download}" "http://127.0.0.1:$port/down/16m")
  [[ $got == "200 $(( 16 << 20 ))" ]] || die "$c: a 16 MiB download got $got (status, bytes)"
  got=$(head -c $(( 16 << 20 )) /dev/zero | curl -s --max-time 20 --data-binary @- "http://127.0.0.1:$port/up")
  [[ $got == ok ]] || die "$c: a 16 MiB upload got '$got'"
done

# ------------------------------------------------------------------ wrk scripts
cat >"$RUN_DIR/down.lua" <<'EOF'
wrk.headers["Cookie"] = "connect.sid=bodies"
EOF
for size in 1m 16m; do
  bytes=$(( 1 << 20 )); [[ $size == 16m ]] && bytes=$(( 16 << 20 ))
  cat >"$RUN_DIR/up-$size.lua" <<EOF
wrk.method = "POST"
wrk.headers["Cookie"] = "connect.sid=bodies"
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.body = string.rep("x", $bytes)
EOF
done

RESULTS=$OUT_DIR/results.tsv
printf 'case\tround\tcandidate\trequests\tmib\tseconds\tmib_per_s\tcpu_ticks\tcpu_ms_per_mib\tnon2xx\tuser_ms_per_mib\n' >"$RESULTS"
for case in $CASES; do
  dir=${case%%-*} size=${case#*-}
  mib=1; [[ $size == 16m ]] && mib=16
  for round in $(seq 1 "$ROUNDS"); do
    for c in $CANDIDATES; do
      url="http://127.0.0.1:${PORT[$c]}/down/$size" script=$RUN_DIR/down.lua
      [[ $dir == up ]] && url="http://127.0.0.1:${PORT[$c]}/up" script=$RUN_DIR/up-$size.lua
      lg=$OUT_DIR/logs/wrk-$case-$round-$c.txt
      read -r u0 k0 < <(tree_ticks_split "${PID[$c]}"); s0=$(date +%s.%N)
      timeout $(( DURATION + 60 )) taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" \
        --timeout 30s -s "$script" "$url" >"$lg" 2>&1 || true
      s1=$(date +%s.%N); read -r u1 k1 < <(tree_ticks_split "${PID[$c]}")
      reqs=$(awk '/requests in/ { print $1 }' "$lg"); reqs=${reqs:-0}
      non2xx=$(awk '/Non-2xx/ { print $NF }' "$lg"); non2xx=${non2xx:-0}
      row=$(awk -v c="$case" -v r="$round" -v n="$c" -v q="$reqs" -v m="$mib" -v s0="$s0" -v s1="$s1" \
              -v t=$(( u1 + k1 - u0 - k0 )) -v u=$(( u1 - u0 )) -v tck="$CLK_TCK" -v bad="$non2xx" \
        'BEGIN { mb = q * m; secs = s1 - s0;
                 printf "%s\t%s\t%s\t%d\t%d\t%.2f\t%.1f\t%d\t%s\t%s\t%s\n", c, r, n, q, mb, secs,
                   mb / secs, t, (mb > 0) ? sprintf("%.3f", t * 1000 / tck / mb) : "NA", bad,
                   (mb > 0) ? sprintf("%.3f", u * 1000 / tck / mb) : "NA" }')
      log "  $(tr '\t' ' ' <<<"$row")"
      echo "$row" >>"$RESULTS"
    done
  done
done

awk -F'\t' 'NR > 1 { k = $1 "\t" $3; if (!(k in seen)) { seen[k] = 1; order[++n] = k }
              tp[k] = tp[k] " " $7; cpu[k] = cpu[k] " " $9; bad[k] += $10; us[k] = us[k] " " $11 }
  function med(s,   a, m, i, j, t) { m = split(s, a, " ");
    for (i = 2; i <= m; i++) for (j = i; j > 1 && a[j-1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
    return a[int((m + 1) / 2)] }
  END { print "| case | proxy | MiB/s | proxy CPU ms per MiB | of which user space | non-2xx |"
        print "|---|---|---|---|---|---|"
        for (i = 1; i <= n; i++) { split(order[i], p, "\t")
          printf "| %s | %s | %s | %s | %s | %d |\n", p[1], p[2], med(tp[order[i]]), med(cpu[order[i]]), med(us[order[i]]), bad[order[i]] } }' \
  "$RESULTS" | tee "$OUT_DIR/table.md"
echo "medians over $ROUNDS round(s) of ${DURATION}s, $CONNS connections; raw: $RESULTS"
