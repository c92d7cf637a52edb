#!/usr/bin/env bash
# Start-up time with a 10-million-entry ledger (issue #7's target: < 3 s).
# Writes ENTRIES/2 RESERVE + COMMIT pairs as fast as spendb takes them
# (durability none, pipelined), then measures the time from exec to the
# "spendb ready" line: after a SIGKILL (newest periodic snapshot + replay of
# the tail) and after a clean stop (snapshot at the end, nothing to replay),
# ROUNDS times each; prints medians and the recovery log lines.
#
#   benches/startup.sh [id-retention, default 10m] [entries, default 10000000] [rounds, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
retention=${1:-10m}
entries=${2:-10000000}
rounds=${3:-3}
source benches/lib.sh
port=$(free_port)
data="$work/data"
serve() { exec "$bin" serve --port "$port" --admin-port 0 --data-dir "$data" --id-retention "$retention" "$@"; }
wait_ready() { # <pid> <stdout file> <stderr file>: until it prints "ready", or fail if it exits
  until grep -q ready "$2" 2>/dev/null; do
    kill -0 "$1" 2>/dev/null || { cat "$3" >&2; exit 1; }
    sleep 0.01
  done
}
serve --durability none >"$work/gen.out" 2>"$work/gen.err" &
gen=$!
pids+=("$gen")
wait_ready "$gen" "$work/gen.out" "$work/gen.err"
"$bin" bench -p "$port" -q -c 16 -P 32 -n $((entries / 2)) -d 3600s | sed -n 2p
start_once() { # appends the seconds to ready to $times; leaves the server running as $srv
  local t0 t1
  : >"$work/s.out"
  t0=$(date +%s.%N)
  serve >"$work/s.out" 2>"$work/s.err" &
  srv=$!
  pids+=("$srv")
  wait_ready "$srv" "$work/s.out" "$work/s.err"
  t1=$(date +%s.%N)
  times+=("$(echo "$t1 - $t0" | bc)")
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
kill -KILL "$gen"; wait "$gen" 2>/dev/null || true
times=()
for _ in $(seq "$rounds"); do
  start_once
  grep recovered "$work/s.err" | sed 's/.*INFO spendb: /#   /'
  kill -KILL "$srv"; wait "$srv" 2>/dev/null || true
done
echo "after SIGKILL: median $(printf '%s\n' "${times[@]}" | median) s to ready (${times[*]})"
start_once
kill -TERM "$srv"; wait "$srv" || true
grep "snapshot at ledger" "$work/s.err" | tail -1 | sed 's/.*INFO spendb::engine: /#   /'
times=()
for _ in $(seq "$rounds"); do
  start_once
  grep recovered "$work/s.err" | sed 's/.*INFO spendb: /#   /'
  echo "#   RSS $(( $(ps -o rss= -p "$srv") / 1024 )) MiB"
  kill -KILL "$srv"; wait "$srv" 2>/dev/null || true
done
echo "after a clean stop: median $(printf '%s\n' "${times[@]}" | median) s to ready (${times[*]})"
du -sh "$data/ledger" "$data/snapshots" | sed 's/^/# /'
