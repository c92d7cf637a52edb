#!/usr/bin/env bash
# One-run comparison of spendb with the peer (Redis 7 + the Lua scripts of
# ../shared/peer/) at matched durability, through the same client:
#   spendb --durability fsync         vs  redis --appendfsync always
#   spendb --durability interval:1000 vs  redis --appendfsync everysec
# redis-benchmark -c 50, with and without -P 16, RESERVE with random hold ids,
# plus spendb's own PING through the same client (the protocol ceiling).
# Rounds alternate between the servers; medians of throughput and of p99
# latency are printed, with the ratios.
# Everything runs on 127.0.0.1 and stops by itself.
#
#   benches/compare.sh [rounds=3] [requests=100000]
# Needs: redis-server, redis-benchmark (Debian's redis-server, redis-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
n=${2:-100000}
. benches/lib.sh

run_mode() { # run_mode <spendb durability> <redis appendfsync>
  local dur=$1 fsync=$2 sp rp
  sp=$(free_port); rp=$(free_port)
  "$bin" serve --port "$sp" --admin-port 0 --data-dir "$work/spendb-$fsync" --durability "$dur" >/dev/null 2>"$work/spendb-$fsync.log" &
  pids+=($!)
  mkdir -p "$work/redis-$fsync"
  redis-server --port "$rp" --bind 127.0.0.1 --dir "$work/redis-$fsync" --appendonly yes --appendfsync "$fsync" \
    --save '' --daemonize no >/dev/null &
  pids+=($!)
  for _ in $(seq 50); do redis-cli -p "$sp" PING >/dev/null 2>&1 && redis-cli -p "$rp" PING >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -p "$sp" BUDGET.SET org:bench TOKENS 1000000000000 PER MONTH >/dev/null
  local sha
  sha=$(redis-cli -p "$rp" SCRIPT LOAD "$(cat "$peer/reserve.lua")")
  local -A rps=() p99=()
  local k out
  for r in $(seq "$rounds"); do
    for k in ping s1 r1 s16 r16; do
      case $k in
        ping) out=$(rb -p "$sp" -c 50 -n "$n" -t ping_mbulk) ;;
        s1) out=$(rb -p "$sp" -c 50 -n "$n" -r 1000000000 RESERVE "h$r:__rand_int__" org:bench/agent:x gpt-4o INPUT 100 OUTPUT 100) ;;
        r1) out=$(rb -p "$rp" -c 50 -n "$n" -r 1000000000 EVALSHA "$sha" 2 budget:b "hold$r:__rand_int__" 200 1000000000000 600000) ;;
        s16) out=$(rb -p "$sp" -c 50 -P 16 -n $((n * 2)) -r 1000000000 RESERVE "p$r:__rand_int__" org:bench/agent:x gpt-4o INPUT 100 OUTPUT 100) ;;
        r16) out=$(rb -p "$rp" -c 50 -P 16 -n $((n * 2)) -r 1000000000 EVALSHA "$sha" 2 budget:b "phold$r:__rand_int__" 200 1000000000000 600000) ;;
      esac
      rps[$k]+="${out% *} "
      p99[$k]+="${out#* } "
    done
  done
  declare -A m q
  for k in ping s1 r1 s16 r16; do
    m[$k]=$(tr ' ' '\n' <<<"${rps[$k]}" | grep . | median)
    q[$k]=$(tr ' ' '\n' <<<"${p99[$k]}" | grep . | median)
    echo "  $k rounds (req/s): ${rps[$k]} median ${m[$k]}; p99 ms: ${p99[$k]} median ${q[$k]}"
  done
  awk -v s1="${m[s1]}" -v r1="${m[r1]}" -v s16="${m[s16]}" -v r16="${m[r16]}" -v p="${m[ping]}" \
      -v qs1="${q[s1]}" -v qr1="${q[r1]}" -v qs16="${q[s16]}" -v qr16="${q[r16]}" -v d="$dur" -v f="$fsync" 'BEGIN {
    printf "spendb %s vs redis appendfsync %s:\n", d, f
    printf "  RESERVE -c50       spendb %.0f/s (p99 %.3f ms)  redis+lua %.0f/s (p99 %.3f ms)  ratio %.2fx\n", s1, qs1, r1, qr1, s1 / r1
    printf "  RESERVE -c50 -P16  spendb %.0f/s (p99 %.3f ms)  redis+lua %.0f/s (p99 %.3f ms)  ratio %.2fx\n", s16, qs16, r16, qr16, s16 / r16
    printf "  spendb RESERVE / spendb PING = %.2f (PING %.0f/s)\n", s1 / p, p
  }'
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(redis-server --version | cut -d' ' -f1-3)"
run_mode fsync always
run_mode interval:1000 everysec
