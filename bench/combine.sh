#!/usr/bin/env bash
# Pools the runs.tsv files of several bench/run.sh (run-peers.sh) or bench/run-tls.sh runs
# into one table: per candidate (and protocol), the number of runs and the median, min and
# max of req/s, p99 and proxy CPU per request. On a shared machine one run's medians move
# by 20 % or more between invocations; pooling interleaved runs is what makes two proxies
# comparable.
#
#   bench/combine.sh /tmp/sticky-bench-results/*/runs.tsv
#   FOREIGN_MAX=10 bench/combine.sh a/runs.tsv b/runs.tsv   # drop runs others disturbed
set -euo pipefail
(( $# > 0 )) || { echo "usage: $0 runs.tsv..." >&2; exit 2; }
FOREIGN_MAX=${FOREIGN_MAX:-100}

awk -F'\t' -v fmax="$FOREIGN_MAX" '
  function sortv(s, a,   n, i, j, t) { n = split(s, a, " ");
    for (i = 2; i <= n; i++) { t = a[i]; j = i - 1; while (j > 0 && a[j] + 0 > t + 0) { a[j+1] = a[j]; j-- } a[j+1] = t }
    return n }
  function med(s,   a, n) { n = sortv(s, a); return (n % 2) ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2 }
  function lo(s,   a) { sortv(s, a); return a[1] }
  function hi(s,   a, n) { n = sortv(s, a); return a[n] }
  FNR == 1 { delete col; for (i = 1; i <= NF; i++) col[$i] = i; next }
  {
    k = $col["candidate"]; if ("proto" in col) k = k " (" $col["proto"] ")"
    if (("foreign_pct" in col) && $col["foreign_pct"] + 0 > fmax) next
    if (!(k in n)) ord[++m] = k
    n[k]++; rps[k] = rps[k] " " $col["rps"]; p99[k] = p99[k] " " $col["p99_ms"]
    cpu[k] = cpu[k] " " $col["cpu_us_per_req"]; err[k] += $col["errors"]
  }
  END {
    print "| candidate | runs | req/s median (min-max) | p99 ms median (min-max) | proxy CPU us/req median (min-max) | errors |"
    print "|---|---|---|---|---|---|"
    for (i = 1; i <= m; i++) { k = ord[i]
      c = (cpu[k] ~ /NA/) ? "n/a" : sprintf("%.1f (%.1f-%.1f)", med(cpu[k]), lo(cpu[k]), hi(cpu[k]))
      printf "| %s | %d | %.0f (%.0f-%.0f) | %.2f (%.2f-%.2f) | %s | %d |\n", k, n[k],
        med(rps[k]), lo(rps[k]), hi(rps[k]), med(p99[k]), lo(p99[k]), hi(p99[k]), c, err[k] }
  }' "$@"
