# Shared by the benchmark scripts (source it after `cd` to the repo root):
# a release build, a work dir and the servers started, all removed or
# stopped on exit, and free loopback ports.
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
