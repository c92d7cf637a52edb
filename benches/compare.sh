#!/usr/bin/env bash
# One-run comparison of spendb with the peer (Redis 7 + the Lua scripts of
# ../shared/peer/) at matched durability, through the same client:
#   spendb --durability fsync         vs  redis --appendfsync always
#   spendb --durability interval:1000 vs  redis --appendfsync everysec
# redis-benchmark -c 50, with and without -P 16, RESERVE with random hold ids,
# plus spendb's own PING through the same client (the protocol ceiling).
# Over TCP on 127.0.0.1 and over each server's Unix socket (spendb
# --unixsocket, redis unixsocket; redis-benchmark -s), in the same run.
# Rounds alternate between the servers; medians of throughput and of p99
# latency are printed, with the ratios.
# Everything runs on this host and stops by itself.
#
#   benches/compare.sh [rounds=3] [requests=100000] [transports="tcp unix"] [modes="fsync interval"]
# Needs: redis-server, redis-benchmark (Debian's redis-server, redis-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
n=${2:-100000}
transports=${3:-tcp unix}
modes=${4:-fsync interval}
. benches/lib.sh

run_mode() { # run_mode <spendb durability> <redis appendfsync> <tcp|unix>
  local dur=$1 fsync=$2 via=$3 sp rp
  sp=$(free_port); rp=$(free_port)
  local d="$work/$fsync-$via"
  mkdir -p "$d/redis"
  "$bin" serve --port "$sp" --admin-port 0 --data-dir "$d/spendb" --durability "$dur" \
    --unixsocket "$d/spendb.sock" >/dev/null 2>"$d/spendb.log" &
  pids+=($!)
  redis-server --port "$rp" --bind 127.0.0.1 --unixsocket "$d/redis.sock" --unixsocketperm 700 \
    --dir "$d/redis" --appendonly yes --appendfsync "$fsync" --save '' --daemonize no >/dev/null &
  pids+=($!)
  for _ in $(seq 50); do redis-cli -p "$sp" PING >/dev/null 2>&1 && redis-cli -p "$rp" PING >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -p "$sp" BUDGET.SET org:bench TOKENS 1000000000000 PER MONTH >/dev/null
  local sha
  sha=$(redis-cli -p "$rp" SCRIPT LOAD "$(cat "$peer/reserve.lua")")
  # Where redis-benchmark connects: the port, or the socket.
  local -a at_s at_r
  if [ "$via" = unix ]; then at_s=(-s "$d/spendb.sock"); at_r=(-s "$d/redis.sock")
  else at_s=(-p "$sp"); at_r=(-p "$rp"); fi
  local -A rps=() p99=()
  local k out
  for r in $(seq "$rounds"); do
    for k in ping s1 r1 s16 r16; do
      case $k in
        ping) out=$(rb "${at_s[@]}" -c 50 -n "$n" -t ping_mbulk) ;;
        s1) out=$(rb "${at_s[@]}" -c 50 -n "$n" -r 1000000000 RESERVE "h$r:__rand_int__" org:bench/agent:x gpt-4o INPUT 100 OUTPUT 100) ;;
        r1) out=$(rb "${at_r[@]}" -c 50 -n "$n" -r 1000000000 EVALSHA "$sha" 2 budget:b "hold$r:__rand_int__" 200 1000000000000 600000) ;;
        s16) out=$(rb "${at_s[@]}" -c 50 -P 16 -n $((n * 2)) -r 1000000000 RESERVE "p$r:__rand_int__" org:bench/agent:x gpt-4o INPUT 100 OUTPUT 100) ;;
        r16) out=$(rb "${at_r[@]}" -c 50 -P 16 -n $((n * 2)) -r 1000000000 EVALSHA "$sha" 2 budget:b "phold$r:__rand_int__" 200 1000000000000 600000) ;;
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
      -v qs1="${q[s1]}" -v qr1="${q[r1]}" -v qs16="${q[s16]}" -v qr16="${q[r16]}" -v d="$dur" -v f="$fsync" -v via="$via" 'BEGIN {
    printf "spendb %s vs redis appendfsync %s, over %s:\n", d, f, via
    printf "  RESERVE -c50       spendb %.0f/s (p99 %.3f ms)  redis+lua %.0f/s (p99 %.3f ms)  ratio %.2fx\n", s1, qs1, r1, qr1, s1 / r1
    printf "  RESERVE -c50 -P16  spendb %.0f/s (p99 %.3f ms)  redis+lua %.0f/s (p99 %.3f ms)  ratio %.2fx\n", s16, qs16, r16, qr16, s16 / r16
    printf "  spendb RESERVE / spendb PING = %.2f (PING %.0f/s)\n", s1 / p, p
  }'
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(redis-server --version | cut -d' ' -f1-3)"
for via in $transports; do
  for mode in $modes; do
    case $mode in
      fsync) run_mode fsync always "$via" ;;
      interval) run_mode interval:1000 everysec "$via" ;;
    esac
  done
done
