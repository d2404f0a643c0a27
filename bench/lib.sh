# Shared helpers of the bench/ scripts (sourced, not run). Same conventions as
# ../shared/bench/run-peers.sh: everything on 127.0.0.1, proxy pinned to PROXY_CPU, load and
# backends to LOAD_CPU, every process we start recorded by PID and stopped by the EXIT trap
# (TERM to the PID and its descendants, found by parent PID, never by name; KILL after 5 s).
#
# The sourcing script sets RUN_DIR (a private temp dir, removed on exit) before calling
# anything, and may set OUT_DIR (kept: logs and results).

PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
SHARED_BENCH=${SHARED_BENCH:-$REPO/../shared/bench}
[[ -f $SHARED_BENCH ]] && SHARED_BENCH=$(dirname "$SHARED_BENCH")
BIN=${BIN:-$REPO/target/release/sticky-cluster}
# shellcheck disable=SC2034  # used by the scripts that source this file
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

STARTED=()
tree_pids() {       # a PID and all its descendants (by parent PID, not by name)
  local p=$1 c
  echo "$p"
  for c in $(pgrep -P "$p" 2>/dev/null || true); do tree_pids "$c"; done
}
stop_tree() {       # TERM a PID and its descendants, wait (<= 5 s), then KILL leftovers
  local root=$1 pids p alive
  kill -0 "$root" 2>/dev/null || { wait "$root" 2>/dev/null || true; return 0; }
  pids=$(tree_pids "$root")
  for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    alive=0
    for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
    [[ $alive == 0 ]] && break
    sleep 0.1
  done
  for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
  wait "$root" 2>/dev/null || true
}
forget_pid() {      # drop a PID (already stopped) from STARTED
  local keep=() p
  for p in "${STARTED[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  STARTED=("${keep[@]}")
}
stop_one() { [[ -n ${1:-} ]] || return 0; stop_tree "$1"; forget_pid "$1"; }
lib_cleanup() {
  local rc=$? p
  for p in "${STARTED[@]}"; do stop_tree "$p"; done
  [[ -n ${RUN_DIR:-} && -d $RUN_DIR ]] && rm -rf "$RUN_DIR"
  exit $rc
}
trap lib_cleanup EXIT
trap 'exit 130' INT TERM

start_bg() {        # start_bg CPU LOGFILE CMD... ; sets LAST_PID
  taskset -c "$1" "${@:3}" >"$2" 2>&1 &
  LAST_PID=$!
  STARTED+=("$LAST_PID")
}

port_busy() { ss -Htln "sport = :$1" 2>/dev/null | grep -q .; }
wait_port() {       # wait_port PORT [seconds]: until something listens
  for _ in $(seq 1 $(( ${2:-10} * 10 ))); do port_busy "$1" && return 0; sleep 0.1; done
  return 1
}
wait_port_free() {
  for _ in $(seq 1 50); do port_busy "$1" || return 0; sleep 0.1; done
  return 1
}
wait_http() {       # wait_http URL [seconds] [curl args...]
  local url=$1 t=${2:-10}
  for _ in $(seq 1 $((t * 10))); do
    curl -s -o /dev/null --max-time 1 "${@:3}" "$url" && return 0
    sleep 0.1
  done
  return 1
}

proc_ticks() {      # utime+stime of one PID (all its threads), clock ticks
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  s=${s##*) }
  # shellcheck disable=SC2086
  set -- $s
  echo $(( ${12} + ${13} ))
}
tree_ticks() {
  local sum=0 p
  for p in $(tree_pids "$1"); do sum=$(( sum + $(proc_ticks "$p") )); done
  echo $sum
}
tree_ticks_split() { # "user system" ticks summed over a PID and its descendants
  local u=0 k=0 p s
  for p in $(tree_pids "$1"); do
    s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    s=${s##*) }
    # shellcheck disable=SC2086
    set -- $s
    u=$(( u + ${12} )); k=$(( k + ${13} ))
  done
  echo "$u $k"
}
tree_rss_kib() {    # VmRSS summed over a PID and its descendants, KiB
  local sum=0 p v
  for p in $(tree_pids "$1"); do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
    sum=$(( sum + ${v:-0} ))
  done
  echo $sum
}

machine_info() {    # the lines RESULTS.md wants about the machine and the peers
  echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc: $(nproc)"
  echo "cpu_model: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "kernel: $(uname -r)"
  echo "nginx: $(nginx -v 2>&1)"
  echo "haproxy: $(haproxy -v 2>/dev/null | head -1)"
  command -v node >/dev/null && echo "node: $(node -v)"
  command -v wrk >/dev/null && echo "wrk: $(wrk -v 2>&1 | head -1)"
  # STICKY_COMMIT names what BIN was built from, when it is not this checkout's build
  if [[ -n ${STICKY_COMMIT:-} ]]; then
    echo "sticky-cluster: $STICKY_COMMIT (binary $BIN)"
  else
    echo "sticky-cluster: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(
      git -C "$REPO" diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' + uncommitted src/ changes') (binary $BIN)"
  fi
}

# ------------------------------------------------------------------ nginx configs
nginx_common() {    # nginx_common DIR -> top of an nginx.conf (1 worker, like the harness)
  cat <<EOF
daemon off;
master_process ${NGINX_MASTER:-on};
worker_processes 1;
worker_rlimit_nofile ${NGINX_NOFILE:-65536};
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections ${NGINX_CONNS:-8192}; multi_accept on; }
EOF
}
nginx_http_common() {  # nginx_http_common DIR -> first lines of the http block
  cat <<EOF
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 120s;
  client_body_temp_path $1/tmp/body;
  proxy_temp_path $1/tmp/proxy;
  fastcgi_temp_path $1/tmp/fastcgi;
  uwsgi_temp_path $1/tmp/uwsgi;
  scgi_temp_path $1/tmp/scgi;
EOF
}
write_backend_conf() {  # write_backend_conf NAME PORT: `return 200 "NAME"`, as the harness
  local d=$RUN_DIR/$1
  mkdir -p "$d/tmp"
  { nginx_common "$d"
    cat <<EOF
http {
$(nginx_http_common "$d")
  server {
    listen 127.0.0.1:$2 backlog=4096;
    location / { default_type text/plain; return 200 "$1"; }
  }
}
EOF
  } >"$d/nginx.conf"
}
start_nginx() {     # start_nginx CPU NAME (config in $RUN_DIR/NAME/nginx.conf); sets LAST_PID
  local d=$RUN_DIR/$2
  start_bg "$1" "$d/stdout.log" nginx -p "$d" -c "$d/nginx.conf" -e "$d/error.log"
}
BACKEND_PIDS=()
start_backends() {  # nginx b0 :18000 and b1 :18001 on LOAD_CPU, as the harness; sets BACKEND_PIDS
  local b port
  for b in b0 b1; do
    port=18000; [[ $b == b1 ]] && port=18001
    port_busy $port && die "port $port already in use"
    write_backend_conf $b $port
    start_nginx "$LOAD_CPU" $b
    BACKEND_PIDS+=("$LAST_PID")
    wait_http "http://127.0.0.1:$port/" 10 || die "backend $b did not start"
  done
}

# ------------------------------------------------------------------ peer proxy configs
# The same nginx and HAProxy setups as run-peers.sh (nginx: consistent hash of the
# connect.sid cookie, upstream keepalive; HAProxy: stick-table on the cookie, http-reuse
# always), optionally terminating TLS with CERT/KEY (nginx) or a PEM bundle (HAProxy).
write_nginx_proxy_conf() {  # write_nginx_proxy_conf NAME PORT [CERT KEY [h2]]
  local d=$RUN_DIR/$1 listen="listen 127.0.0.1:$2 backlog=4096" tls=""
  mkdir -p "$d/tmp"
  if [[ -n ${3:-} ]]; then
    listen="$listen ssl"
    [[ ${5:-} == h2 ]] && listen="$listen http2"
    tls="    ssl_certificate $3;
    ssl_certificate_key $4;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;"
  fi
  { nginx_common "$d"
    cat <<EOF
http {
$(nginx_http_common "$d")
  map \$http_cookie \$sticky_sid {
    default "";
    "~(?:^|;)\\s*connect\\.sid=(?<sid>[^;]*)" \$sid;
  }
  map \$http_upgrade \$connection_upgrade { default upgrade; "" ""; }
  upstream backends {
    hash \$sticky_sid consistent;
    server 127.0.0.1:${UP0:-18000};
    server 127.0.0.1:${UP1:-18001};
    keepalive ${NGINX_UP_KEEPALIVE:-128};
    keepalive_requests 100000000;
    keepalive_timeout 120s;
  }
  server {
    $listen;
$tls
    location / {
      proxy_pass http://backends;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_read_timeout 600s;
      proxy_send_timeout 600s;
    }
  }
}
EOF
  } >"$d/nginx.conf"
  nginx -t -q -p "$d" -c "$d/nginx.conf" -e "$d/error.log" || die "nginx config $1 invalid"
}
write_haproxy_conf() {  # write_haproxy_conf FILE PORT [PEM [alpn]]
  local bind="bind 127.0.0.1:$2"
  [[ -n ${3:-} ]] && bind="$bind ssl crt $3"
  [[ ${4:-} == alpn ]] && bind="$bind alpn h2,http/1.1"
  cat >"$1" <<EOF
global
  nbthread 1
  maxconn ${HAPROXY_MAXCONN:-4096}
defaults
  mode http
  timeout connect 5s
  timeout client 120s
  timeout server 120s
  timeout tunnel 600s
  timeout http-keep-alive 120s
  http-reuse always
frontend fe
  $bind
  default_backend be
backend be
  balance roundrobin
  stick-table type string len 64 size 1m expire 30m
  stick on req.cook(connect.sid)
  server b0 127.0.0.1:${UP0:-18000}
  server b1 127.0.0.1:${UP1:-18001}
EOF
  haproxy -c -q -f "$1" || die "haproxy config $1 invalid"
}

# ------------------------------------------------------------------ noise (as run-peers.sh)
cpu_snap() {        # "cpuN busy total steal" for PROXY_CPU and LOAD_CPU
  awk -v a="cpu$PROXY_CPU" -v b="cpu$LOAD_CPU" '$1==a||$1==b {
      tot=0; for(i=2;i<=9;i++) tot+=$i; idle=$5+$6; steal=$9;
      printf "%s %d %d %d\n", $1, tot-idle-steal, tot, steal }' /proc/stat
}
self_ticks() {      # this shell + every child it has reaped (wrk, h2load, curl, node ...)
  local s; s=$(cat /proc/$$/stat); s=${s##*) }
  # shellcheck disable=SC2086
  set -- $s
  echo $(( ${12} + ${13} + ${14} + ${15} ))
}
QUIET_MAX=${QUIET_MAX:-10}
QUIET_WAIT=${QUIET_WAIT:-60}
wait_quiet() {      # until both cores are <= QUIET_MAX % busy (others' load), <= QUIET_WAIT s
  local a b busy=0
  for _ in $(seq 1 "$QUIET_WAIT"); do
    a=$(cpu_snap); sleep 1; b=$(cpu_snap)
    busy=$(awk 'NR==FNR { b0[$1]=$2; t0[$1]=$3; next } { db += $2-b0[$1]; dt = $3-t0[$1] }
                END { if (dt<=0) dt=1; printf "%.0f", 100*db/dt }' <(echo "$a") <(echo "$b"))
    (( busy <= QUIET_MAX )) && return 0
  done
  log "  machine still busy (${busy}% of a core by others) after ${QUIET_WAIT}s; measuring anyway"
}
foreign_pct() {     # foreign_pct SNAP0 SNAP1 OUR_TICKS: % of one core used by others
  awk -v a="cpu$PROXY_CPU" -v ours="$3" 'NR==FNR { b0[$1]=$2; t0[$1]=$3; next }
        { db += $2 - b0[$1]; if ($1==a) dt = $3 - t0[$1] }
        END { if (dt<=0) dt=1; f = 100*(db-ours)/dt; printf "%.0f", (f<0)?0:f }' \
        <(echo "$1") <(echo "$2")
}

# ------------------------------------------------------------------ stickiness check
prepare_run() {     # prepare_run "PARAMS" PORT...: tools there, ports 18000/18001 and PORTs free,
                    # the release build (unless SKIP_BUILD), $OUT_DIR/env.txt with PARAMS
  local params=$1; shift
  local b p
  for b in node wrk nginx haproxy curl taskset ss; do command -v "$b" >/dev/null || die "missing $b"; done
  for p in 18000 18001 "$@"; do port_busy "$p" && die "port $p already in use"; done
  if [[ -z ${SKIP_BUILD:-} ]]; then
    log "building: cargo build --release"
    (cd "$REPO" && cargo build --release --quiet)
  fi
  [[ -x $BIN ]] || die "no binary at $BIN"
  { machine_info; echo "params: $params"; } | tee "$OUT_DIR/env.txt" >&2
}

# Needs PORT_P and CONNS (the caller's) set.
run_wrk() {         # run_wrk SECONDS LOG [CONNS] [SCRIPT]; prints the request count
  local c=${3:-$CONNS} s=${4:-$SHARED_BENCH/sessions.lua} pid rc=0
  timeout $(( $1 + 60 )) taskset -c "$LOAD_CPU" wrk -t1 -c"$c" -d"$1"s --timeout 10s --latency \
    -s "$s" "http://127.0.0.1:$PORT_P/" >"$2" 2>&1 &
  pid=$!; STARTED+=("$pid")
  wait "$pid" || rc=$?
  forget_pid "$pid"
  [[ $rc == 0 ]] || log "wrk exited $rc (see $2)"
  sed -nE 's/^BENCH requests=([0-9]+).*/\1/p' "$2"
}
start_tls_proxy() { # start_tls_proxy NAME LOG NGINX_CONF_NAME: one TLS-terminating candidate on
                    # PORT_P with CERT/KEY (nginx: RUN_DIR/NGINX_CONF_NAME, HAProxy:
                    # RUN_DIR/haproxy-tls.cfg); sets PROXY_PID
  case $1 in
    nginx) start_nginx "$PROXY_CPU" "$3" ;;
    haproxy) start_bg "$PROXY_CPU" "$2" haproxy -db -f "$RUN_DIR/haproxy-tls.cfg" ;;
    sticky-cluster) start_bg "$PROXY_CPU" "$2" "$BIN" --threads 1 --bind 127.0.0.1 \
        --proxy-port "$PORT_P" --tls-cert "$CERT" --tls-key "$KEY" \
        --upstream 127.0.0.1:18000 --upstream 127.0.0.1:18001 \
        --secret-file "$RUN_DIR/affinity.key" --delay 0s ;;
    *) die "unknown candidate $1" ;;
  esac
  PROXY_PID=$LAST_PID
}

make_cert() {       # make_cert ec|rsa: a self-signed localhost certificate in RUN_DIR;
                    # sets CERT, KEY and PEM (certificate + key, for HAProxy)
  CERT=$RUN_DIR/cert.pem KEY=$RUN_DIR/key.pem PEM=$RUN_DIR/haproxy.pem
  case $1 in
    ec)  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$KEY" 2>/dev/null ;;
    rsa) openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$KEY" 2>/dev/null ;;
    *) die "TLS_KEY must be ec or rsa" ;;
  esac
  openssl req -x509 -new -key "$KEY" -out "$CERT" -days 2 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null || die "openssl req failed"
  cat "$CERT" "$KEY" >"$PEM"
}

# The awk function med(LIST): the median of the space-separated numbers in LIST. Use as
# awk "$AWK_MED"' ...program...'.
AWK_MED='function med(s,   n, a, i, j, t) { n = split(s, a, " ");
  for (i = 2; i <= n; i++) { t = a[i]; j = i - 1; while (j > 0 && a[j] + 0 > t + 0) { a[j+1] = a[j]; j-- } a[j+1] = t }
  return (n % 2) ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2 }'

sticky_check() {    # sticky_check URL [curl args]: 40 ids x 3 rounds over ONE keep-alive connection
  local url=$1 ids=40 rounds=3 args=() k out
  for _ in $(seq 1 $rounds); do
    for k in $(seq 0 $((ids - 1))); do
      args+=(--next -s --max-time 5 "${@:2}" -H "Cookie: foo=1; connect.sid=s$k; bar=2"
             -w ' %{num_connects}\n' "$url")
    done
  done
  out=$(curl "${args[@]:1}") || { echo "FAIL curl"; return 0; }
  echo "$out" | awk -v ids=$ids -v rounds=$rounds '
      { id=(NR-1)%ids; if (!(id in first)) first[id]=$1; else if (first[id]!=$1) bad++;
        if (!($1 in cnt)) nb++; cnt[$1]++; conns+=$2 }
      END { spread=""; for (b in cnt) spread=spread b "=" cnt[b]/rounds " ";
            printf "%s ids=%d rounds=%d inconsistent=%d tcp_connects=%d spread: %s\n",
              (bad||nb<2||NR!=ids*rounds) ? "FAIL" : "OK", ids, rounds, bad+0, conns, spread }'
}
