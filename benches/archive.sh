#!/usr/bin/env bash
# What shipping the ledger costs RESERVE throughput (issue #29 part 2):
# `spendb bench` (RESERVE + COMMIT, -c 50, fsync, --ledger-retain 1000000)
# against a fresh server per round, alternating modes in each round:
#   none      no --archive
#   file      --archive file://… (a directory on the same disk)
#   parquet   --archive file://… --archive-parquet
#   s3        --archive s3://… on moto's S3 server on 127.0.0.1 (from
#             target/clients/s3, which scripts/test installs; moto is a
#             Python server sharing the two cores: its CPU is in the figure)
# At the default --archive-interval (10s). Prints each round's RESERVE/s,
# what the archive had shipped at the end, the shipper thread's share of
# the server's CPU time, the medians and each mode's ratio to none.
#
#   benches/archive.sh [rounds] [seconds]      (default 3 rounds of 20 s)
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
rounds=${1:-3}
secs=${2:-20}
modes=(none file parquet s3)
moto=target/clients/s3/bin/moto_server
if [[ ! -x $moto ]]; then
  echo "benches/archive.sh: $moto is missing (run scripts/test, which installs it)" >&2
  exit 1
fi
s3port=$(free_port)
"$moto" -H 127.0.0.1 -p "$s3port" >/dev/null 2>&1 &
pids+=("$!")
for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$s3port/" && break; sleep 0.1; done
curl -s -X PUT "http://127.0.0.1:$s3port/books" >/dev/null
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 \
  AWS_ENDPOINT="http://127.0.0.1:$s3port" AWS_ALLOW_HTTP=true

round() { # round <mode> <n> → "RESERVE/s shipped_seq durable_seq"
  local mode=$1 n=$2 args=()
  local data="$work/$mode-$n" port admin pid
  case $mode in
    file) args=(--archive "file://$work/bucket-$n" --archive-node "$mode") ;;
    parquet) args=(--archive "file://$work/bucket-$n" --archive-node pq --archive-parquet) ;;
    s3) args=(--archive "s3://books/run-$n" --archive-node "$mode") ;;
  esac
  port=$(free_port); admin=$(free_port)
  "$bin" serve --port "$port" --admin-port "$admin" --data-dir "$data" \
    --ledger-retain 1000000 "${args[@]}" >"$work/out-$mode-$n" 2>&1 &
  pid=$!
  for _ in $(seq 600); do grep -q 'spendb ready' "$work/out-$mode-$n" && break; sleep 0.05; done
  local rps
  rps=$("$bin" bench -p "$port" -q -c 50 -d "${secs}s" --tree 4x8x64 --json - 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print(round(dict(r["commands"])["reserve"]["per_second"]))')
  # The shipper thread's CPU against the whole server's (clock ticks).
  local share
  share=$(python3 - "$pid" <<'PY'
import os, sys
pid = sys.argv[1]
total = ship = 0
for t in os.listdir(f"/proc/{pid}/task"):
    try:
        stat = open(f"/proc/{pid}/task/{t}/stat").read()
    except OSError:
        continue
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    f = stat[stat.rindex(")") + 2:].split()
    ticks = int(f[11]) + int(f[12])
    total += ticks
    if name == "spendb-archive":
        ship += ticks
print(f"{100 * ship / max(total, 1):.1f}%")
PY
)
  local shipped="-"
  if [[ $mode != none ]]; then
    shipped=$(curl -s "http://127.0.0.1:$admin/v1/archive" |
      python3 -c 'import json,sys; a=json.load(sys.stdin); print("%d/%d" % (a["shipped_seq"], a["durable_seq"]))')
  fi
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$data"
  echo "$rps $shipped $share"
}

declare -A got
for r in $(seq "$rounds"); do
  line="round $r:"
  # Each round starts with another mode: the first run of a round was
  # faster or slower by itself in an earlier run (the order, not the mode).
  k=$(((r - 1) % ${#modes[@]}))
  for m in "${modes[@]:k}" "${modes[@]:0:k}"; do
    read -r rps shipped share < <(round "$m" "$r")
    got[$m]+="$rps "
    line+=" $m $rps (shipped/durable at the end $shipped, shipper CPU $share of the server's);"
  done
  echo "$line"
done
base=$(printf '%s\n' ${got[none]} | median)
for m in "${modes[@]}"; do
  med=$(printf '%s\n' ${got[$m]} | median)
  echo "median $m: $med RESERVE/s; $m/none $(echo "scale=3; $med / $base" | bc)"
done
