#!/usr/bin/env bash
# Soak: spendb under a fixed open-loop rate for MINUTES (default 10) minutes,
# with holds left to expire and the cache churning, on 127.0.0.1 only.
# Each minute is one `spendb bench` run (so latency per minute shows drift);
# every 10 s the server's RSS and open file descriptors are sampled.
# Prints a CSV (minute, rate, p50/p99/p99.9 of RESERVE in ms, RSS MiB, fds)
# and a summary. Not run in CI (docs/BENCHMARKS.md has the latest figures).
#
#   benches/soak.sh [minutes] [rate]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
rate=${2:-2000}
source benches/lib.sh
port=$(free_port)
# Settled ids are kept 1 minute (default 10): memory reaches its plateau
# after a minute, so "flat" is visible within a 10-minute run.
"$bin" serve --port "$port" --admin-port 0 --data-dir "$work/data" \
  --id-retention 1m --cache-max-bytes $((16 << 20)) >"$work/out" 2>"$work/err" &
pid=$!
pids+=("$pid")
until grep -q ready "$work/out" 2>/dev/null; do sleep 0.05; done
sample() { # rss_mib fds
  echo "$(( $(ps -o rss= -p "$pid") / 1024 )) $(ls /proc/"$pid"/fd | wc -l)"
}
(
  while kill -0 "$pid" 2>/dev/null; do
    echo "$(date +%s) $(sample)" >>"$work/samples"
    sleep 10
  done
) &
sampler=$!
echo "minute,rate,reserve_p50_ms,reserve_p99_ms,reserve_p999_ms,abandoned,errors,rss_mib,fds"
for m in $(seq 1 "$minutes"); do
  "$bin" bench -p "$port" -q -c 20 --rate "$rate" -d 60s \
    --abandon-ratio 0.1 --ttl 2000 --release-ratio 0.1 \
    --cache-ratio 0.2 --cache-set-ratio 0.2 --json "$work/m$m.json" >/dev/null
  read -r rss fds < <(sample)
  python3 - "$work/m$m.json" "$m" "$rss" "$fds" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
res = dict(r["commands"])["reserve"]
print(f'{sys.argv[2]},{r["transactions"]/r["seconds"]:.0f},{res["p50_us"]/1000:.3f},{res["p99_us"]/1000:.3f},{res["p999_us"]/1000:.3f},{r["abandoned"]},{r["errors"]},{sys.argv[3]},{sys.argv[4]}')
PY
done
kill "$sampler" 2>/dev/null || true
echo "# samples every 10 s (unix time, RSS MiB, fds):"
awk '{print "#", $0}' "$work/samples" | sed -n '1p;$p'
awk 'NR>6 {print $2}' "$work/samples" | sort -n | sed -n '1p;$p' | paste -sd' ' | awk '{print "# RSS after the first minute: min " $1 " MiB, max " $2 " MiB"}'
awk '{print $3}' "$work/samples" | sort -n | uniq -c | awk '{print "# fds " $2 ": " $1 " samples"}'
kill -TERM "$pid"; wait "$pid" || true
"$bin" ledger verify --data-dir "$work/data" | sed 's/^/# /'
