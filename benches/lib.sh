# Shared by the benchmark scripts (source it after `cd` to the repo root):
# a release build, a work dir and the servers started, all removed or
# stopped on exit, free loopback ports, and redis-benchmark's figures.
peer=${PEER_DIR:-../shared/peer}
cargo build --release --quiet
bin=./target/release/spendb
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# redis-benchmark --csv's last line as "<requests/s> <p99 ms>".
rb() { redis-benchmark --csv "$@" 2>/dev/null | tail -1 | tr -d '"' | awk -F, '{print $2, $7}'; }
# The median of numbers on stdin, one a line (the mean of the middle two).
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
