#!/usr/bin/env bash
# Throughput and p99 latency of RESERVE against the number of connections,
# spendb (--durability fsync) and the peer (Redis 7 + reserve.lua,
# appendfsync always), unpipelined, through redis-benchmark, in one run.
# Writes CSV (default docs/bench/sweep.csv); benches/plot.py draws it.
#
#   benches/sweep.sh [out.csv] [connections="1 4 16 50 100 200"]
# Needs: redis-server, redis-benchmark. 127.0.0.1 only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/bench/sweep.csv}
conns=${2:-"1 4 16 50 100 200"}
. benches/lib.sh
rb() { redis-benchmark --csv "$@" 2>/dev/null | tail -1 | tr -d '"' | awk -F, '{print $2","$7}'; }

sp=$(free_port); rp=$(free_port)
"$bin" serve --port "$sp" --admin-port 0 --data-dir "$work/spendb" --durability fsync >/dev/null 2>&1 &
pids+=($!)
redis-server --port "$rp" --bind 127.0.0.1 --dir "$work" --appendonly yes --appendfsync always --save '' --daemonize no >/dev/null &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$sp" PING >/dev/null 2>&1 && redis-cli -p "$rp" PING >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$sp" BUDGET.SET org:bench TOKENS 1000000000000 PER MONTH >/dev/null
sha=$(redis-cli -p "$rp" SCRIPT LOAD "$(cat "$peer/reserve.lua")")
mkdir -p "$(dirname "$out")"
echo "server,connections,rps,p99_ms" >"$out"
for c in $conns; do
  n=$((c < 16 ? 20000 : 100000))
  echo "spendb,$c,$(rb -p "$sp" -c "$c" -n "$n" -r 1000000000 RESERVE "s$c:__rand_int__" org:bench/agent:x gpt-4o INPUT 100 OUTPUT 100)" >>"$out"
  echo "redis+lua,$c,$(rb -p "$rp" -c "$c" -n "$n" -r 1000000000 EVALSHA "$sha" 2 budget:b "r$c:__rand_int__" 200 1000000000000 600000)" >>"$out"
  tail -2 "$out"
done
