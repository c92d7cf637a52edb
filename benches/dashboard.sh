#!/usr/bin/env bash
# What the dashboard costs RESERVE throughput (issue #29): `spendb bench`
# (RESERVE + COMMIT, -c 50, fsync) against a server whose ledger already
# holds ~1M entries over 30 days (examples/ledger_gen.rs), alternating
# rounds with and without the dashboard's requests running beside it: a
# poller that asks what the page asks (budgets, balances, forecasts, holds,
# cache stats, alerts every 2 s; the spend-per-hour, top-spender and runs
# reports every 10 s), as a browser tab left open does. Prints each
# round's RESERVE/s and the medians' ratio.
#
#   benches/dashboard.sh [rounds] [seconds]      (default 3 rounds of 15 s)
#   BIN=/path/to/other/spendb benches/dashboard.sh   (another build)
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
rounds=${1:-3}
secs=${2:-15}
server=${BIN:-$bin}
cargo build --release --quiet --example ledger_gen
./target/release/examples/ledger_gen "$work/data" 1000000 30 2>/dev/null
port=$(free_port); admin=$(free_port)
"$server" serve --port "$port" --admin-port "$admin" --data-dir "$work/data" >"$work/out" 2>&1 &
pids+=("$!")
for _ in $(seq 600); do grep -q 'spendb ready' "$work/out" && break; sleep 0.05; done
redis-cli -p "$port" BUDGET.SET org:1 COST 1000000 PER MONTH >/dev/null
poll() {
  python3 - "$admin" "$1" <<'PY'
import http.client, sys, time
admin, until = int(sys.argv[1]), time.time() + float(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", admin)
def get(p):
    c.request("GET", p); r = c.getresponse(); r.read()
tick = 0
while time.time() < until:
    now = int(time.time() * 1000)
    if tick % 5 == 0:
        get(f"/v1/reports/spend?group=hour&from={now // 3600000 * 3600000 - 23 * 3600000}")
        get(f"/v1/reports/spend?group=scope&level=8&top=10&from={now - 30 * 86400000}")
        get(f"/v1/reports/runs?group=scope&level=8&from={now - 30 * 86400000}")
    for p in ["/v1/budgets", "/v1/balances/org:1", "/v1/reports/forecast/org:1",
              "/v1/holds?limit=10", "/v1/cache/stats", "/v1/alerts?limit=1000"]:
        get(p)
    tick += 1
    time.sleep(2)
PY
}
round() { # round <with dashboard: 0|1> → RESERVE/s
  local poller=
  if [[ $1 == 1 ]]; then poll "$((secs + 1))" & poller=$!; fi
  "$bin" bench -p "$port" -q -c 50 -d "${secs}s" --tree 4x8x64 --json - 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print(round(dict(r["commands"])["reserve"]["per_second"]))'
  if [[ -n $poller ]]; then wait "$poller"; fi
}
none=(); dash=()
for r in $(seq "$rounds"); do
  a=$(round 0); b=$(round 1)
  none+=("$a"); dash+=("$b")
  echo "round $r: RESERVE/s without the dashboard $a, with it $b"
done
m0=$(printf '%s\n' "${none[@]}" | median); m1=$(printf '%s\n' "${dash[@]}" | median)
echo "median: without $m0, with $m1; with/without $(echo "scale=3; $m1 / $m0" | bc)"
