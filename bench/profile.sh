#!/usr/bin/env bash
# Where sticky-cluster spends its CPU per request, under the load of run-peers.sh
# (2 nginx backends, wrk with sessions.lua: 64 keep-alive connections, 10k connect.sid ids;
# proxy pinned to CPU 0 with --threads 1; wrk and backends on CPU 1; 127.0.0.1 only).
#
#   bench/profile.sh                    # all three parts below
#   bench/profile.sh syscalls           # one part (several may be named)
#
# Parts:
#   syscalls   per request: syscalls by type, context switches, CPU us, for sticky-cluster,
#              nginx and HAProxy (perf stat on tracepoints; works without a hardware PMU)
#   perf       time profile of our proxy, kernel and user (perf record -e cpu-clock):
#              flat self time per symbol, a bucket summary, and call chains (DWARF)
#   callgrind  instruction profile under valgrind for a bounded request count (warm-up
#              discarded with callgrind_control -z): user-space instructions and malloc/free
#              calls per request for sticky-cluster, nginx and HAProxy (CG_CANDIDATES), and
#              our top functions by self and inclusive Ir. Immune to machine noise.
#              CG_LOAD=h2c: the same over HTTP/2 without TLS (h2load, prior knowledge,
#              -m1, one cookie: h2load cannot vary it), for the HTTP/2 front's own cost;
#              CG_STREAMS=10 for 10 concurrent streams per connection.
# Knobs (env): DURATION=5 (s per measured wrk run), CONNS=64, SESSIONS=10000,
#   CG_REQUESTS=10000 (requests under callgrind), CG_CONNS=16, CG_CANDIDATES,
#   PROXY_CPU=0, LOAD_CPU=1, OUT_DIR (default /tmp/sticky-profile/<UTC stamp>),
#   BIN (default target/release/sticky-cluster), SKIP_BUILD=1 (use BIN as it is).
# Outputs land in OUT_DIR (summary.md plus raw reports). Needs perf, valgrind, wrk, nginx,
# haproxy. Every process started here is stopped by PID on exit.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

DURATION=${DURATION:-5}
CONNS=${CONNS:-64}
export SESSIONS=${SESSIONS:-10000}
CG_REQUESTS=${CG_REQUESTS:-10000}
CG_CONNS=${CG_CONNS:-16}
CG_CANDIDATES=${CG_CANDIDATES:-sticky-cluster nginx haproxy}
CG_LOAD=${CG_LOAD:-h1}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT_DIR=${OUT_DIR:-/tmp/sticky-profile/$STAMP}
RUN_DIR=$(mktemp -d /tmp/sticky-profile-run.XXXXXX)
PARTS=${*:-syscalls perf callgrind}
PORT_P=18080
mkdir -p "$OUT_DIR"
SUMMARY=$OUT_DIR/summary.md

for b in wrk nginx haproxy curl taskset ss; do command -v $b >/dev/null || die "missing $b"; done
port_busy $PORT_P && die "port $PORT_P already in use"
if [[ -z ${SKIP_BUILD:-} ]]; then
  log "building: cargo build --release"
  (cd "$REPO" && cargo build --release --quiet)
fi
[[ -x $BIN ]] || die "no binary at $BIN"
machine_info | tee "$OUT_DIR/env.txt" >&2

OUR_ARGS=(--threads 1 --bind 127.0.0.1 --proxy-port "$PORT_P" --upstream 127.0.0.1:18000
          --upstream 127.0.0.1:18001 --secret-file "$RUN_DIR/affinity.key" --delay 0s)
PROXY_PID=""
start_candidate() { # start_candidate NAME [WRAPPER...]: listens on :18080; sets PROXY_PID
  local name=$1 lg=$OUT_DIR/proxy-$1.log
  case $name in
    sticky-cluster) start_bg "$PROXY_CPU" "$lg" "${@:2}" "$BIN" "${OUR_ARGS[@]}" ;;
    nginx) write_nginx_proxy_conf nginx-proxy $PORT_P
           [[ $CG_LOAD == h2c ]] && sed -i "s/listen 127.0.0.1:$PORT_P backlog=4096;/listen 127.0.0.1:$PORT_P backlog=4096 http2;/" "$RUN_DIR/nginx-proxy/nginx.conf"
           start_bg "$PROXY_CPU" "$lg" "${@:2}" nginx -p "$RUN_DIR/nginx-proxy" \
             -c "$RUN_DIR/nginx-proxy/nginx.conf" -e "$RUN_DIR/nginx-proxy/error.log" ;;
    haproxy) write_haproxy_conf "$RUN_DIR/haproxy.cfg" $PORT_P
             [[ $CG_LOAD == h2c ]] && sed -i "s/^  bind 127.0.0.1:$PORT_P\$/& proto h2/" "$RUN_DIR/haproxy.cfg"
             start_bg "$PROXY_CPU" "$lg" "${@:2}" haproxy -db -f "$RUN_DIR/haproxy.cfg" ;;
    *) die "unknown candidate $name" ;;
  esac
  PROXY_PID=$LAST_PID
  local proto=()
  [[ $CG_LOAD == h2c ]] && proto=(--http2-prior-knowledge)
  wait_http "http://127.0.0.1:$PORT_P/" "${WAIT_S:-15}" "${proto[@]}" || die "$name did not answer on :$PORT_P"
}
stop_candidate() { stop_one "$PROXY_PID"; PROXY_PID=""; wait_port_free $PORT_P || die "port busy"; }


run_h2load() {      # run_h2load REQUESTS LOG CONNS; prints the count of 2xx answers
  local pid rc=0
  timeout 600 taskset -c "$LOAD_CPU" h2load -t1 -c"$3" -m"${CG_STREAMS:-1}" -n"$1" -H 'cookie: connect.sid=s1' \
    "http://127.0.0.1:$PORT_P/" >"$2" 2>&1 &
  pid=$!; STARTED+=("$pid")
  wait "$pid" || rc=$?
  forget_pid "$pid"
  [[ $rc == 0 ]] || log "h2load exited $rc (see $2)"
  local n
  n=$(sed -nE 's/^status codes: ([0-9]+) 2xx.*/\1/p' "$2")
  echo "BENCH requests=${n:-0}" >>"$2"
  echo "${n:-0}"
}
run_bounded() {     # run_bounded REQUESTS LOG CONNS: wrk (bounded.lua) or h2load by CG_LOAD
  if [[ $CG_LOAD == h2c ]]; then run_h2load "$@"; else
    MAX_REQUESTS=$1 run_wrk 600 "$2" "$3" "$BENCH_DIR/bounded.lua"; fi
}
[[ $CG_LOAD == h1 || $CG_LOAD == h2c ]] || die "CG_LOAD must be h1 or h2c"
[[ $CG_LOAD == h1 || $PARTS == callgrind ]] || die "CG_LOAD=h2c is for the callgrind part only"
[[ $CG_LOAD == h1 ]] || command -v h2load >/dev/null || die "CG_LOAD=h2c needs h2load (nghttp2-client)"

start_backends

# ------------------------------------------------------------------ syscalls
SYSCALLS=(read write readv writev recvfrom sendto recvmsg sendmsg epoll_wait epoll_pwait
          epoll_ctl futex sched_yield accept4 close connect setsockopt getsockopt ioctl)
part_syscalls() {
  local events="raw_syscalls:sys_enter,context-switches" s
  for s in "${SYSCALLS[@]}"; do events="$events,syscalls:sys_enter_$s"; done
  {
    echo "## Syscalls and CPU per request (DURATION=${DURATION}s, CONNS=$CONNS, SESSIONS=$SESSIONS)"
    echo
    printf '| proxy | requests | req/s | CPU us/req | user us/req | kernel us/req | syscalls/req | ctx switches/req | by type (per request, >= 0.05) |\n|---|---|---|---|---|---|---|---|---|\n'
  } >>"$SUMMARY"
  local name
  for name in sticky-cluster nginx haproxy; do
    log "syscalls: $name"
    start_candidate "$name"
    run_wrk 2 "$OUT_DIR/warmup-$name.log" >/dev/null
    local pids t0 t1 req pp
    pids=$(tree_pids "$PROXY_PID" | paste -sd,)
    t0=$(tree_ticks_split "$PROXY_PID")
    perf stat -x, -e "$events" -p "$pids" -o "$OUT_DIR/perfstat-$name.csv" -- sleep $(( DURATION + 30 )) &
    pp=$!; STARTED+=("$pp")
    sleep 0.3
    req=$(run_wrk "$DURATION" "$OUT_DIR/wrk-syscalls-$name.log")
    kill -INT "$pp" 2>/dev/null || true
    wait "$pp" 2>/dev/null || true; forget_pid "$pp"
    t1=$(tree_ticks_split "$PROXY_PID")
    stop_candidate
    [[ -n $req && $req -gt 0 ]] || { log "no requests for $name"; continue; }
    local du dk dur
    du=$(( ${t1% *} - ${t0% *} )); dk=$(( ${t1#* } - ${t0#* } ))
    dur=$(sed -nE 's/^BENCH .*duration_us=([0-9]+).*/\1/p' "$OUT_DIR/wrk-syscalls-$name.log")
    awk -F, -v n="$name" -v req="$req" -v du="$du" -v dk="$dk" -v dur="$dur" -v tck="$CLK_TCK" '
      $3 ~ /sys_enter$/ && $3 ~ /^raw/ { total = $1 }
      $3 == "context-switches" { cs = $1 }
      $3 ~ /^syscalls:sys_enter_/ { s = $3; sub(/^syscalls:sys_enter_/, "", s);
        if ($1 / req >= 0.05) by = by sprintf("%s %.2f, ", s, $1 / req) }
      END { sub(/, $/, "", by);
        printf "| %s | %d | %.0f | %.1f | %.1f | %.1f | %.2f | %.2f | %s |\n", n, req, req / (dur / 1e6),
          (du + dk) * 1e6 / tck / req, du * 1e6 / tck / req, dk * 1e6 / tck / req,
          total / req, cs / req, by }' "$OUT_DIR/perfstat-$name.csv" >>"$SUMMARY"
  done
  { echo; echo "(CPU us/req here includes perf's tracepoint overhead; use run.sh for the clean figure.)"; echo; } >>"$SUMMARY"
}

# ------------------------------------------------------------------ perf
part_perf() {
  command -v perf >/dev/null || { log "perf missing: skipped"; return 0; }
  log "perf: sticky-cluster"
  start_candidate sticky-cluster
  run_wrk 2 "$OUT_DIR/warmup-perf.log" >/dev/null
  local pp req
  # Flat profile: every sample, no call chains.
  perf record -q -e cpu-clock -F 2000 -p "$PROXY_PID" -o "$OUT_DIR/perf-flat.data" -- sleep $(( DURATION + 30 )) 2>/dev/null &
  pp=$!; STARTED+=("$pp"); sleep 0.3
  req=$(run_wrk "$DURATION" "$OUT_DIR/wrk-perf.log")
  kill -INT "$pp" 2>/dev/null || true; wait "$pp" 2>/dev/null || true; forget_pid "$pp"
  # Call chains (DWARF unwinding: release builds have no frame pointers), shorter run.
  perf record -q -e cpu-clock -F 500 --call-graph dwarf,16384 -p "$PROXY_PID" \
    -o "$OUT_DIR/perf-dwarf.data" -- sleep 40 2>/dev/null &
  pp=$!; STARTED+=("$pp"); sleep 0.3
  run_wrk 3 "$OUT_DIR/wrk-perf-dwarf.log" >/dev/null
  kill -INT "$pp" 2>/dev/null || true; wait "$pp" 2>/dev/null || true; forget_pid "$pp"
  stop_candidate
  perf report -i "$OUT_DIR/perf-flat.data" --no-children --sort sym --stdio 2>/dev/null \
    | grep -v '^#' | grep -v '^$' >"$OUT_DIR/perf-flat.txt" || true
  perf report -i "$OUT_DIR/perf-dwarf.data" --children --sort sym --stdio -g none --percent-limit 2 2>/dev/null \
    | grep -v '^#' | grep -v '^$' >"$OUT_DIR/perf-children.txt" || true
  {
    echo "## perf (cpu-clock, kernel + user), $req requests in ${DURATION}s"
    echo
    echo "Self time by bucket (symbol-name patterns; see perf-flat.txt for every symbol):"
    echo
    awk '{ p = $1; sub(/%/, "", p); s = $0;
      if (s ~ /\[k\]/) {
        if (s ~ /tcp_|ip_|__dev_|net_|skb|sock|napi|__netif|loopback|inet_/) b = "kernel: TCP/IP loopback stack";
        else if (s ~ /spin_unlock_irqrestore|try_to_wake_up|ttwu|wake_up|__schedule|schedule|pick_next|enqueue|dequeue|finish_task_switch/) b = "kernel: wakeups and scheduling";
        else if (s ~ /epoll|ep_|poll/) b = "kernel: epoll";
        else if (s ~ /syscall|entry_|do_sys|__x64|fdget|fput|copy_(to|from)_user|iov|rw_verify|__fsnotify|security_/) b = "kernel: syscall entry, copies";
        else b = "kernel: other" }
      else if (s ~ /malloc|free|_int_|cfree|realloc|unlink_chunk|tcache|arena/) b = "user: malloc/free";
      else if (s ~ /memmove|memcpy|memset|memcmp|bcmp|strlen/) b = "user: memcpy/memset/memcmp";
      else if (s ~ /httparse|hyper::proto::h1::role|Http1Transaction|hyper::proto::h1::encode|hyper::proto::h1::decode|HeaderMap|http::header|hash_elem|HeaderName|HeaderValue/) b = "user: HTTP parse/encode, header maps";
      else if (s ~ /hyper_util::client|pool|Pool|legacy/) b = "user: hyper-util legacy client + pool";
      else if (s ~ /hyper::/) b = "user: hyper dispatch, bodies, conn state";
      else if (s ~ /tokio::|mio::|tokio_util|task_tracker|futures_util|RawTask|Harness/) b = "user: tokio runtime, timers, tasks";
      else if (s ~ /sticky_cluster/) b = "user: sticky_cluster (routing, rewrite, bodies)";
      else if (s ~ /__GI___writev|__libc_recv|__libc_send|__GI___libc_write|__libc_read|epoll_wait|syscall/) b = "user: libc syscall stubs";
      else b = "user: other";
      t[b] += p }
      END { for (b in t) printf "%.1f\t%s\n", t[b], b }' "$OUT_DIR/perf-flat.txt" \
      | sort -t$'\t' -k1,1 -rn | awk -F'\t' 'BEGIN { print "| bucket | % of proxy CPU |"; print "|---|---|" }
          { printf "| %s | %s |\n", $2, $1 }'
    echo
    echo "Top 30 symbols by self time:"
    echo
    echo '```'
    awk 'NR <= 30 { print substr($0, 1, 160) }' "$OUT_DIR/perf-flat.txt"
    echo '```'
    echo
    echo "Inclusive time (DWARF call chains), entries >= 2%:"
    echo
    echo '```'
    awk '/^ +[0-9]/ && n++ < 60 { print substr($0, 1, 170) }' "$OUT_DIR/perf-children.txt"
    echo '```'
    echo
  } >>"$SUMMARY"
}

# ------------------------------------------------------------------ callgrind
cg_calls() {        # cg_calls CALLERS_FILE REQUESTS: calls of malloc/calloc/realloc/free per request
  awk -v req="$2" '
    /^$/ { inblk = 0; next }
    / \* .*malloc\.c:(malloc|calloc|realloc|free|cfree(@[A-Z_.0-9]*)?) / { tgt = 1 }
    { lines[++n] = $0 }
    / \* / { if (tgt) for (i = 1; i < n; i++) if (lines[i] ~ /\([0-9,]+x\)/) {
                c = lines[i]; sub(/.*\(/, "", c); sub(/x\).*/, "", c); gsub(/,/, "", c); calls += c }
              tgt = 0; n = 0; delete lines }
    END { printf "%.1f", calls / req }' "$1"
}
cg_rows() {         # cg_rows ANNOTATE_FILE REQUESTS MAX [REGEX]: "Ir/req pct function" rows, no stack roots
  awk -v req="$2" -v max="$3" -v re="${4:-.}" '/^-+$/ {sep++; next}
    sep >= 3 && /^ *[0-9,]+ \( *[0-9.]+%\)/ {
      ir = $1; gsub(/,/, "", ir); pct = $2 $3; gsub(/[()%]/, "", pct);
      if (pct + 0 >= 95) next
      f = $0; sub(/^ *[0-9,]+ \( *[0-9.]+%\) +/, "", f); sub(/ \[[^]]*\]$/, "", f)
      sub(/^.*\/(src|library)\/[^:]*:/, "", f)
      if (f !~ re || shown >= max + 0) next
      shown++
      printf "%7d Ir/req %6.2f%%  %s\n", ir / req, pct, substr(f, 1, 150) }' "$1"
}
part_callgrind() {
  command -v valgrind >/dev/null || { log "valgrind missing: skipped"; return 0; }
  {
    echo "## callgrind: user-space instructions per request, $CG_LOAD (CG_REQUESTS=$CG_REQUESTS after 500 of warm-up, CG_CONNS=$CG_CONNS)"
    echo
    echo "Instruction counts do not depend on the machine's load, unlike CPU time. Kernel work"
    echo "(the syscalls above) is not included."
    echo
    echo "| proxy | requests | Ir per request | malloc+free calls per request |"
    echo "|---|---|---|---|"
  } >>"$SUMMARY"
  local name
  for name in $CG_CANDIDATES; do
    log "callgrind: $name (slow: valgrind)"
    local cg=$OUT_DIR/callgrind-$name.out
    rm -f "$cg".*
    # nginx in one process (master_process off) so the worker is the process under valgrind
    NGINX_MASTER=off WAIT_S=120 start_candidate "$name" valgrind --tool=callgrind --callgrind-out-file="$cg.%p" \
      --dump-instr=no --collect-jumps=no
    # warm-up: pool connections, table entries, allocator; then zero the counters (every
    # process under callgrind: nginx's master and worker)
    run_bounded 500 "$OUT_DIR/warmup-callgrind-$name.log" "$CG_CONNS" >/dev/null
    callgrind_control -z >/dev/null 2>&1 || log "callgrind_control -z failed"
    local req
    req=$(run_bounded "$CG_REQUESTS" "$OUT_DIR/wrk-callgrind-$name.log" "$CG_CONNS")
    callgrind_control -d >/dev/null 2>&1 || log "callgrind_control -d failed"
    sleep 2
    stop_candidate
    # the dump made by -d with the most instructions (nginx: the worker, not the master)
    local dump="" best=0 f t
    for f in "$cg".*.[0-9]*; do
      [[ -f $f ]] || continue
      t=$(awk '/^(summary|totals):/ {print $2; exit}' "$f")
      if (( ${t:-0} > best )); then best=$t; dump=$f; fi
    done
    [[ -n $dump && -n $req && $req -gt 0 ]] || { log "no callgrind dump or no requests for $name"; continue; }
    callgrind_annotate --threshold=100 --inclusive=no "$dump" 2>/dev/null >"$OUT_DIR/callgrind-$name-self.txt" || true
    callgrind_annotate --threshold=100 --inclusive=yes "$dump" 2>/dev/null >"$OUT_DIR/callgrind-$name-inclusive.txt" || true
    callgrind_annotate --threshold=100 --tree=caller "$dump" 2>/dev/null >"$OUT_DIR/callgrind-$name-callers.txt" || true
    local allocs
    allocs=$(cg_calls "$OUT_DIR/callgrind-$name-callers.txt" "$req")
    printf '| %s | %d | %d | %s |\n' "$name" "$req" $(( best / req )) "$allocs" >>"$SUMMARY"
    echo "$name $dump" >>"$OUT_DIR/callgrind-dumps.txt"
  done
  echo >>"$SUMMARY"
  local req ours
  ours=$(awk '$1 == "sticky-cluster" {print $2}' "$OUT_DIR/callgrind-dumps.txt" 2>/dev/null || true)
  [[ -n $ours ]] || return 0
  req=$(sed -nE 's/^BENCH requests=([0-9]+).*/\1/p' "$OUT_DIR/wrk-callgrind-sticky-cluster.log")
  {
    # Frames that were on the stack when the counters were zeroed show up with ~100 %
    # even in the self view: left out.
    echo "### sticky-cluster: top functions by self Ir (Ir per request first)"
    echo
    echo '```'
    cg_rows "$OUT_DIR/callgrind-sticky-cluster-self.txt" "$req" 40
    echo '```'
    echo
    echo "### sticky-cluster: inclusive Ir of its own functions and of the hyper-util client/pool"
    echo
    echo '```'
    cg_rows "$OUT_DIR/callgrind-sticky-cluster-inclusive.txt" "$req" 45 \
      'sticky_cluster::|hyper_util::client::legacy::(pool|client)|hash_one|time::timeout|fmt::write|IpAddr as core::fmt' 
    echo '```'
    echo
  } >>"$SUMMARY"
}

{ echo "# sticky-cluster profile $STAMP"; echo; sed 's/^/    /' "$OUT_DIR/env.txt"; echo; } >"$SUMMARY"
for p in $PARTS; do
  case $p in
    syscalls) part_syscalls ;;
    perf) part_perf ;;
    callgrind) part_callgrind ;;
    *) die "unknown part $p (syscalls, perf, callgrind)" ;;
  esac
done
cat "$SUMMARY"
log "outputs in $OUT_DIR"
