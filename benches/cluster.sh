#!/usr/bin/env bash
# Cluster mode against single-node mode, in one run (issue #15):
# redis-benchmark RESERVE -c 50 (random hold ids) against
#   single  one spendb without --etcd
#   c1      one cluster node (a three-member etcd on loopback)
#   c2, c3  two and three cluster nodes, each loaded by its own
#           redis-benchmark at once (throughput summed, p99 the worst)
# with room plentiful (TOKENS 10^12 PER MONTH), --durability fsync.
# Rounds alternate between the setups; medians are printed with the ratios,
# and each cluster node's store requests per second (its
# spendb_cluster_store_ops_total over the run).
# Everything runs on 127.0.0.1 and stops by itself.
#
#   benches/cluster.sh [rounds=3] [requests per node=50000]
# Needs: etcd (Debian's etcd-server), redis-benchmark (redis-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
n=${2:-50000}
. benches/lib.sh

# Three etcd members.
peers=() clients=()
for i in 0 1 2; do peers+=("$(free_port)"); clients+=("$(free_port)"); done
initial=""
for i in 0 1 2; do initial+="e$i=http://127.0.0.1:${peers[$i]},"; done
for i in 0 1 2; do
  etcd --name "e$i" --data-dir "$work/e$i" \
    --listen-client-urls "http://127.0.0.1:${clients[$i]}" --advertise-client-urls "http://127.0.0.1:${clients[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${peers[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${peers[$i]}" \
    --initial-cluster "${initial%,}" --initial-cluster-state new --initial-cluster-token bench \
    --heartbeat-interval 100 --election-timeout 1000 >/dev/null 2>"$work/e$i.log" &
  pids+=($!)
done
endpoints=$(printf 'http://127.0.0.1:%s,' "${clients[@]}")
endpoints=${endpoints%,}
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:${clients[0]}/health" | grep -q true && break
  sleep 0.1
done

start() { # start <name> [cluster node name]: prints "<resp port> <admin port>"
  local name=$1 node=${2:-} port admin
  port=$(free_port); admin=$(free_port)
  if [ -n "$node" ]; then
    "$bin" serve --port "$port" --admin-port "$admin" --data-dir "$work/$name" \
      --etcd "$endpoints" --node "$node" >/dev/null 2>"$work/$name.log" &
  else
    "$bin" serve --port "$port" --admin-port "$admin" --data-dir "$work/$name" >/dev/null 2>"$work/$name.log" &
  fi
  # start runs in a command substitution's subshell: its pids+= would be
  # lost, and the node left running; the parent reads this file.
  echo $! >>"$work/started.pids"
  for _ in $(seq 100); do redis-cli -p "$port" PING >/dev/null 2>&1 && break; sleep 0.1; done
  if [ -n "$node" ]; then
    for _ in $(seq 100); do curl -s "http://127.0.0.1:$admin/v1/cluster" | grep -q '"registered":true' && break; sleep 0.1; done
  fi
  echo "$port $admin"
}

read -r single _ <<<"$(start single)"
# A month's tokens and a rate limit (a rolling window: in cluster mode its
# room is taken per grant period of 10 s), neither of them binding.
budget=(org:bench TOKENS 1000000000000 PER MONTH REQUESTS 1000000000 ROLLING 1m)
redis-cli -p "$single" BUDGET.SET "${budget[@]}" >/dev/null
ports=() admins=()
for i in 1 2 3; do
  read -r p a <<<"$(start "node$i" "n$i")"
  ports+=("$p"); admins+=("$a")
done
mapfile -t started <"$work/started.pids"
pids+=("${started[@]}")
redis-cli -p "${ports[0]}" BUDGET.SET "${budget[@]}" >/dev/null
for p in "${ports[@]}"; do
  for _ in $(seq 100); do redis-cli -p "$p" BUDGET.GET org:bench 2>/dev/null | grep -q org:bench && break; sleep 0.1; done
done

ops() { curl -s "http://127.0.0.1:$1/metrics" | awk '/^spendb_cluster_store_ops_total/ {print $2}'; }

declare -A rps=() p99=() opsps=()
for r in $(seq "$rounds"); do
  for k in single c1 c2 c3; do
    case $k in
      single) targets=("$single"); adm=() ;;
      c1) targets=("${ports[0]}"); adm=("${admins[0]}") ;;
      c2) targets=("${ports[@]:0:2}"); adm=("${admins[@]:0:2}") ;;
      c3) targets=("${ports[@]}"); adm=("${admins[@]}") ;;
    esac
    before=()
    for a in "${adm[@]}"; do before+=("$(ops "$a")"); done
    t0=$(date +%s.%N)
    for i in "${!targets[@]}"; do
      rb -p "${targets[$i]}" -c 50 -n "$n" -r 1000000000 RESERVE "h$r$k$i:__rand_int__" \
        org:bench/agent:x gpt-4o INPUT 100 OUTPUT 100 >"$work/out.$i" &
    done
    wait $(jobs -p | tail -n "${#targets[@]}") 2>/dev/null || true
    t1=$(date +%s.%N)
    sum=$(cat "$work"/out.* | awk '{s+=$1} END {print s}')
    worst=$(cat "$work"/out.* | awk '{if ($2>m) m=$2} END {print m}')
    rm -f "$work"/out.*
    rps[$k]+="$sum "
    p99[$k]+="$worst "
    for i in "${!adm[@]}"; do
      after=$(ops "${adm[$i]}")
      opsps[$k]+="$(echo "(${after} - ${before[$i]}) / ($t1 - $t0)" | bc -l | xargs printf '%.2f') "
    done
  done
done

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); etcd $(etcd --version | head -1 | awk '{print $3}')"
declare -A m q
for k in single c1 c2 c3; do
  m[$k]=$(tr ' ' '\n' <<<"${rps[$k]}" | grep . | median)
  q[$k]=$(tr ' ' '\n' <<<"${p99[$k]}" | grep . | median)
  echo "  $k RESERVE/s (all nodes): ${rps[$k]} median ${m[$k]}; p99 ms: ${p99[$k]} median ${q[$k]}"
  [ "$k" != single ] && echo "     store requests/s per node: ${opsps[$k]}"
done
awk -v s="${m[single]}" -v c1="${m[c1]}" -v c2="${m[c2]}" -v c3="${m[c3]}" \
    -v qs="${q[single]}" -v q1="${q[c1]}" 'BEGIN {
  printf "  one cluster node / single node: throughput %.2f, p99 %.2f\n", c1 / s, q1 / qs
  printf "  2 nodes / single: %.2f; 3 nodes / single: %.2f (all on the same 2 cores)\n", c2 / s, c3 / s
}'
