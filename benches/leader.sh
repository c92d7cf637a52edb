#!/usr/bin/env bash
# Group commit in fsync mode, leader against thread (--group-commit), in one
# run: two spendb servers side by side, rounds alternating between them.
#   - redis-benchmark RESERVE with random ids at -c 1, 4 and 50, over TCP and
#     over each server's Unix socket (median req/s and p99 of the rounds);
#   - spendb bench open loop at a fixed rate (RESERVE + COMMIT transactions,
#     median p50 / p99 / p99.9 of RESERVE over the rounds).
# Everything on this host; it stops what it starts.
#
#   benches/leader.sh [rounds=5] [requests=50000] [rate=5000]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
n=${2:-50000}
rate=${3:-5000}
. benches/lib.sh

declare -A port sock
for mode in leader thread; do
  port[$mode]=$(free_port)
  sock[$mode]="$work/$mode.sock"
  "$bin" serve --port "${port[$mode]}" --admin-port 0 --data-dir "$work/$mode" --durability fsync \
    --group-commit "$mode" --unixsocket "${sock[$mode]}" >/dev/null 2>"$work/$mode.log" &
  pids+=($!)
done
for mode in leader thread; do
  for _ in $(seq 50); do redis-cli -p "${port[$mode]}" PING >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -p "${port[$mode]}" BUDGET.SET org:bench TOKENS 1000000000000 PER MONTH >/dev/null
done
declare -A rps p99
for r in $(seq "$rounds"); do
  for via in tcp unix; do
    for c in 1 4 50; do
      for mode in leader thread; do
        if [ "$via" = unix ]; then at=(-s "${sock[$mode]}"); else at=(-p "${port[$mode]}"); fi
        k=$mode,$via,$c
        out=$(rb "${at[@]}" -c "$c" -n $((c == 1 ? n / 5 : n)) -r 1000000000 RESERVE "h$r$via$c:__rand_int__" org:bench/agent:x gpt-4o INPUT 100 OUTPUT 100)
        rps[$k]+="${out% *} "; p99[$k]+="${out#* } "
      done
    done
  done
  for mode in leader thread; do
    json="$work/open-$mode-$r.json"
    "$bin" bench -p "${port[$mode]}" -q -c 20 --rate "$rate" -d 10s --json "$json" >/dev/null
    python3 - "$json" >>"$work/open-$mode" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c = dict(r["commands"])["reserve"]
print(c["p50_us"], c["p99_us"], c["p999_us"])
PY
  done
done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
for via in tcp unix; do
  for c in 1 4 50; do
    for mode in leader thread; do
      k=$mode,$via,$c
      m=$(tr ' ' '\n' <<<"${rps[$k]}" | grep . | median)
      q=$(tr ' ' '\n' <<<"${p99[$k]}" | grep . | median)
      echo "RESERVE $via -c $c  $mode: ${m} req/s (p99 ${q} ms)   rounds: ${rps[$k]}"
    done
  done
done
for mode in leader thread; do
  echo "open loop $rate/s, RESERVE p50 / p99 / p99.9 µs per round ($mode):"
  cat "$work/open-$mode"
done
