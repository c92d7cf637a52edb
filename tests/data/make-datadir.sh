#!/usr/bin/env bash
# Makes a data dir with the spendb binary given ($1): every entry kind, a
# snapshot, and a ledger tail after it.
set -euo pipefail
bin=$1; data=$2
start() {
  "$bin" serve --port 0 --admin-port 0 --admin-token t --data-dir "$data" >out.txt 2>err.txt &
  pid=$!
  for _ in $(seq 100); do grep -q 'spendb ready' out.txt && break; sleep 0.1; done
  port=$(sed -n 's/.*resp=127.0.0.1:\([0-9]*\).*/\1/p' out.txt)
  admin=$(sed -n 's/.*admin=127.0.0.1:\([0-9]*\).*/\1/p' out.txt)
}
c() { redis-cli -p "$port" "$@" >/dev/null; }
start
c BUDGET.SET org:old TOKENS 100000 PER DAY COST 10 PER MONTH
c BUDGET.SET org:old/team:a REQUESTS 100 ROLLING 1m INPUT 50000 PER TOTAL
c PRICE.SET old-model INPUT 1.5 OUTPUT 6 CACHED 0.15
c RESERVE open-1 org:old/team:a/agent:x gpt-4o INPUT 1000 OUTPUT 500 TTL 86400000
c RESERVE done-1 org:old/team:a gpt-4o INPUT 2000 OUTPUT 100
c COMMIT done-1 INPUT 2000 OUTPUT 80 CACHED 500
c RESERVE rel-1 org:old old-model INPUT 10 OUTPUT 10
c RELEASE rel-1
c RESERVE exp-1 org:old old-model INPUT 10 OUTPUT 10 TTL 1
sleep 0.2
c SPEND org:old/team:b old-model INPUT 300 OUTPUT 30 ID sp-1
c STEP run-1 sig-a SCOPE org:old MAX 2
c STEP run-1 sig-b SCOPE org:old MAX 2
c STEP run-1 sig-c SCOPE org:old MAX 2
c CACHE.SET ns k1 cached-answer COST 0.25
c CACHE.GET ns k1 SCOPE org:old
curl -sf -X PUT -H "Authorization: Bearer t" -d '{"thresholds": [1, 50]}' "http://127.0.0.1:$admin/v1/alerts/rules/org:old" >/dev/null
c RESERVE open-2 org:old gpt-4o INPUT 5 TTL 86400000
kill -TERM $pid; wait $pid || true
# A ledger tail after the snapshot.
start
c RESERVE open-3 org:old/team:a gpt-4o INPUT 7 OUTPUT 3 TTL 86400000
c COMMIT open-2 INPUT 5 OUTPUT 1
c SPEND org:old gpt-4o INPUT 11 OUTPUT 2 ID sp-2
c STEP run-2 sig SCOPE org:old/team:a
c RUN.END run-1
kill -KILL $pid; wait $pid 2>/dev/null || true
