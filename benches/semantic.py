#!/usr/bin/env python3
"""The semantic cache through the protocol (issue #17): N entries of 384
dimensions from a seeded, clustered synthetic set (100 centres uniform in
[-1, 1]^384, each entry a centre plus uniform noise of ±0.3 a component),
stored with CACHE.VSET in pipelines of 1,000; then 300 CACHE.VGETs of fresh
points from the same clusters (client-side latency, one at a time); the
server's RSS per entry; and the start-up time with the entries on disk
(median of 3). A benchmark, not a test: it asserts nothing.

Run (after `cargo build --release` and scripts/test, which installs
redis-py): target/clients/py/bin/python benches/semantic.py [N]
"""

import random
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import redis

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
DIM = 384
rng = random.Random(17)
centres = [[rng.uniform(-1, 1) for _ in range(DIM)] for _ in range(100)]


def point() -> bytes:
    c = centres[rng.randrange(len(centres))]
    return struct.pack(f"<{DIM}f", *(x + rng.uniform(-0.3, 0.3) for x in c))


data_dir = tempfile.mkdtemp(prefix="spendb-semantic-")


def start() -> tuple[subprocess.Popen[str], int, float]:
    began = time.monotonic()
    proc = subprocess.Popen(
        ["target/release/spendb", "serve", "--port", "0", "--admin-port", "0",
         "--durability", "none", "--cache-max-bytes", str(2 << 30), "--data-dir", data_dir],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        ready = re.search(r"spendb ready.*resp=127\.0\.0\.1:(\d+)", line)
        if ready:
            return proc, int(ready[1]), time.monotonic() - began
    raise SystemExit("spendb did not start")


try:
    proc, port, _ = start()
    r = redis.Redis(port=port)
    began = time.monotonic()
    pipe = r.pipeline(transaction=False)
    for i in range(N):
        pipe.execute_command("CACHE.VSET", "bench", "FP32", point(), f"answer {i}")
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    print(f"{N} VSETs: {time.monotonic() - began:.1f} s")
    lat = []
    for _ in range(300):
        q = point()
        t = time.monotonic()
        r.execute_command("CACHE.VGET", "bench", "FP32", q, "THRESHOLD", "-1")
        lat.append((time.monotonic() - t) * 1000)
    lat.sort()
    print(f"VGET (client side, one at a time): p50 {lat[150]:.2f} ms, p99 {lat[296]:.2f} ms")
    stats = r.execute_command("CACHE.STATS", "bench")
    print(f"semantic_bytes {stats[b'semantic_bytes']}, index bytes {stats[b'semantic_index_bytes']}")
    status = open(f"/proc/{proc.pid}/status").read()
    rss = int(status.split("VmRSS:")[1].split()[0]) * 1024
    print(f"RSS {rss / 1e6:.0f} MB: {rss / N:.0f} B an entry (the raw vector: {DIM * 4} B)")
    proc.terminate()
    proc.wait()
    took = []
    for _ in range(3):
        proc, port, seconds = start()
        took.append(seconds)
        proc.terminate()
        proc.wait()
    print(f"start-up with {N} entries: {', '.join(f'{x:.2f}' for x in took)} s "
          f"(median {statistics.median(took):.2f} s)")
finally:
    shutil.rmtree(data_dir, ignore_errors=True)
