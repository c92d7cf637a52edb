#!/usr/bin/env bash
# What a report costs at any ledger size (issue #29): a month's spend
# report for one org and the runs report, answered from the rollups, on
# ledgers of 1M, 10M and 50M entries written through the engine over 30
# days (examples/ledger_gen.rs). For each size: the server's start-up (it
# loads the persisted rollup), then 300 of each report over one keep-alive
# connection, alternating, with p50 / p99 / max in ms.
#
#   benches/reports.sh [entries ...]      (default: 1000000 10000000 50000000)
#   REPORTS_DIR=/var/tmp/x benches/reports.sh   keeps the ledgers (~90 B an entry)
#   REPORTS_CSV=docs/bench/reports.csv ...      also writes the figures as CSV
#   (benches/plot_reports.py draws them)
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
cargo build --release --quiet --example ledger_gen
store=${REPORTS_DIR:-$work}
mkdir -p "$store"
sizes=("$@")
((${#sizes[@]})) || sizes=(1000000 10000000 50000000)
printf '%-10s %-9s %-9s %-28s %-28s\n' entries bytes start "spend month/org p50 p99 max" "runs p50 p99 max"
csv=${REPORTS_CSV:-}
[[ -z $csv ]] || echo "entries,start_s,spend_p50_ms,spend_p99_ms,spend_max_ms,runs_p50_ms,runs_p99_ms,runs_max_ms" >"$csv"
for n in "${sizes[@]}"; do
  dir=$store/ledger-$n
  [ -d "$dir" ] || ./target/release/examples/ledger_gen "$dir" "$n" 30 2>/dev/null
  port=$(free_port); admin=$(free_port)
  t0=$(date +%s.%N)
  $bin serve --port "$port" --admin-port "$admin" --data-dir "$dir" >"$work/out-$n" 2>&1 &
  pid=$!; pids+=("$pid")
  for _ in $(seq 600); do grep -q 'spendb ready' "$work/out-$n" && break; sleep 0.05; done
  start=$(echo "$(date +%s.%N) - $t0" | bc)
  figures=$(python3 - "$admin" <<'PY'
import http.client, json, sys, time
admin = int(sys.argv[1])
c = http.client.HTTPConnection("127.0.0.1", admin)
month = int(time.time() * 1000) - 30 * 86_400_000
paths = {
    "spend": f"/v1/reports/spend?group=day&scope=org:1&from={month}",
    "runs": f"/v1/reports/runs?group=scope&level=2&from={month}",
}
times = {k: [] for k in paths}
for i in range(301):
    for k, p in paths.items():
        t = time.perf_counter()
        c.request("GET", p)
        r = c.getresponse()
        body = r.read()
        if r.status != 200:
            sys.exit(f"{p}: {r.status} {body[:200]}")
        if i > 0:  # the first waits for the rollups to catch up
            times[k].append((time.perf_counter() - t) * 1000)
def q(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p * len(v)))]
print(" ".join(f"{q(v, .5):.2f}/{q(v, .99):.2f}/{max(v):.2f}" for v in times.values()))
PY
)
  read -r spend runs <<<"$figures"
  printf '%-10s %-9s %-9s %-28s %-28s\n' "$n" "$(du -sh "$dir" | cut -f1)" "${start}s" "$spend" "$runs"
  [[ -z $csv ]] || echo "$n,$start,${spend//\//,},${runs//\//,}" >>"$csv"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
done
