#!/usr/bin/env bash
# Memory for 1 million open holds: spendb vs the peer (Redis 7 + the Lua
# reserve script of ../shared/peer/, one key with a TTL per hold). Both are
# loaded through redis-benchmark (-P 16) with unique random hold ids, then
# the resident set size of each server process is read from /proc.
#
#   benches/memory.sh [holds=1000000]
# Needs: redis-server, redis-benchmark. Runs on 127.0.0.1, stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
. benches/lib.sh
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

sp=$(free_port); rp=$(free_port)
# Durability does not change memory; fsync would only make loading slower.
"$bin" serve --port "$sp" --admin-port 0 --data-dir "$work/spendb" --durability interval:1000 --default-ttl 1h >/dev/null 2>&1 &
spid=$!; pids+=($spid)
redis-server --port "$rp" --bind 127.0.0.1 --dir "$work" --save '' --appendonly no --daemonize no >/dev/null &
rpid=$!; pids+=($rpid)
for _ in $(seq 50); do redis-cli -p "$sp" PING >/dev/null 2>&1 && redis-cli -p "$rp" PING >/dev/null 2>&1 && break; sleep 0.1; done
sp0=$(rss_kib $spid); rp0=$(rss_kib $rpid)
redis-cli -p "$sp" BUDGET.SET org:mem TOKENS 1000000000000000 PER MONTH >/dev/null
sha=$(redis-cli -p "$rp" SCRIPT LOAD "$(cat "$peer/reserve.lua")")
# __rand_int__ draws from 1e9 values: about 500 of 1M draws collide,
# and DBSIZE counts what was really held.
redis-benchmark -p "$sp" -c 50 -P 16 -n "$n" -r 1000000000 -q \
  RESERVE "hold:__rand_int__" org:mem/team:t/agent:a gpt-4o INPUT 1000 OUTPUT 500 >/dev/null
redis-benchmark -p "$rp" -c 50 -P 16 -n "$n" -r 1000000000 -q \
  EVALSHA "$sha" 2 budget:mem "hold:__rand_int__" 1500 1000000000000000 3600000 >/dev/null
sleep 1
sh=$(redis-cli -p "$sp" DBSIZE); rh=$(redis-cli -p "$rp" DBSIZE)
sp1=$(rss_kib $spid); rp1=$(rss_kib $rpid)
awk -v sh="$sh" -v rh="$rh" -v s0="$sp0" -v s1="$sp1" -v r0="$rp0" -v r1="$rp1" 'BEGIN {
  printf "open holds: spendb %d, redis %d keys\n", sh, rh
  printf "RSS: spendb %.1f MiB (%.1f at start), redis %.1f MiB (%.1f at start)\n", s1/1024, s0/1024, r1/1024, r0/1024
  printf "bytes per hold (RSS growth): spendb %.0f, redis %.0f; spendb/redis RSS = %.2f\n", (s1-s0)*1024/sh, (r1-r0)*1024/rh, s1/r1
}'
