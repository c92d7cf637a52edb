#!/usr/bin/env python3
"""The semantic cache through the protocol (issue #17).

Two servers get the same N entries of 384 dimensions, in the same order (so
the same ids), from a seeded, clustered synthetic set (100 centres uniform
in [-1, 1]^384, each entry a centre plus uniform noise of ±0.3 a
component): A with the default `--semantic-approx-from` (an HNSW graph past
10,000 entries), B exact (`--semantic-approx-from` 10^9). Then, on A once
its graph is built: CACHE.VGET latency (client side, one at a time, and
the server's own time from its /metrics histogram over the same requests;
A alone, then the same queries to B) and recall@1 against B's answers for 500 queries of two kinds, "fresh" (a new
point of a cluster) and "near-dup" (a stored entry plus ±0.01 noise: the
semantic cache's own case); throughput of VGET with redis-benchmark (-c 20);
RSS per entry; the same recall after replacing half the entries twice
(churn, identical on both servers); A's start-up (median of 3) and the time
until its graph is rebuilt after it. A benchmark, not a test: it asserts
nothing.

Run (after `cargo build --release` and scripts/test, which installs
redis-py): target/clients/py/bin/python benches/semantic.py [N]; or, with
a real set made by benches/embed_sentences.py (numpy needed):
benches/semantic.py --vectors real.npz. `--ef 48,96` (first) measures each
of those ef values (CACHE.VCONFIG bench EF n on A) on the same queries;
the namespace's default otherwise.
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
import urllib.request

import redis

rng = random.Random(17)
EFS: list[int | None] = [None]
if len(sys.argv) > 2 and sys.argv[1] == "--ef":
    EFS = [int(x) for x in sys.argv[2].split(",")]
    del sys.argv[1:3]
# A real set (benches/embed_sentences.py's .npz): its stored vectors go in,
# its held-out sentences are the fresh queries and its rewritten stored
# sentences the near-dup ones; churn puts removed vectors back under new
# ids (the set has no others).
REAL = None
if len(sys.argv) > 2 and sys.argv[1] == "--vectors":
    import numpy as np

    # Read out of the .npz once (indexing an NpzFile reads the array again).
    REAL = {k: v.tolist() for k, v in np.load(sys.argv[2]).items()}
    N = len(REAL["stored"])
    DIM = len(REAL["stored"][0])
else:
    N = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    DIM = 384
    centres = [[rng.uniform(-1, 1) for _ in range(DIM)] for _ in range(100)]
loaded = 0


def fresh() -> list[float]:
    """A query that is no stored entry."""
    if REAL is not None:
        return REAL["fresh"][rng.randrange(len(REAL["fresh"]))]
    c = centres[rng.randrange(len(centres))]
    return [x + rng.uniform(-0.3, 0.3) for x in c]


def entry() -> list[float]:
    """The next vector to store."""
    global loaded
    if REAL is not None:
        loaded += 1
        return REAL["stored"][(loaded - 1) % N]
    return fresh()


def near_dup(stored: dict[int, list[float]], ids: list[int]) -> list[float]:
    """A query close to a stored entry."""
    if REAL is not None:
        return REAL["near_dup"][rng.randrange(len(REAL["near_dup"]))]
    return [x + rng.uniform(-0.01, 0.01) for x in stored[rng.choice(ids)]]


def quantile(before: list[tuple[float, int]], after: list[tuple[float, int]], q: float) -> str:
    """The q-quantile of the requests between two cumulative histograms,
    as the bucket bound it falls under (Prometheus' histogram_quantile
    would interpolate; the bound is the honest upper figure)."""
    counts = [(le, n - m) for (le, n), (_, m) in zip(after, before)]
    total = counts[-1][1]
    for le, n in counts:
        if n >= q * total:
            return f"≤ {le * 1000:g} ms" if le != float("inf") else "> 1 s"
    return "?"


def blob(v: list[float]) -> bytes:
    return struct.pack(f"<{DIM}f", *v)


class Server:
    def __init__(self, *flags: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="spendb-semantic-")
        self.flags = flags
        self.start()

    def start(self) -> float:
        began = time.monotonic()
        self.proc = subprocess.Popen(
            ["target/release/spendb", "serve", "--port", "0", "--admin-port", "0",
             "--durability", "none", "--cache-max-bytes", str(4 << 30),
             "--data-dir", self.dir, *self.flags],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            ready = re.search(r"spendb ready.*resp=127\.0\.0\.1:(\d+) admin=127\.0\.0\.1:(\d+)", line)
            if ready:
                self.port = int(ready[1])
                self.admin = int(ready[2])
                self.r = redis.Redis(port=self.port)
                return time.monotonic() - began
        raise SystemExit("spendb did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()

    def stats(self) -> dict[str, object]:
        return {k.decode(): v for k, v in self.r.execute_command("CACHE.STATS", "bench").items()}

    def graph_ready(self, timeout: float = 900) -> float:
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            s = self.stats()
            if s["semantic_approximate"] == 1 and s["semantic_building"] == 0:
                return time.monotonic() - began
            time.sleep(0.2)
        raise SystemExit("no graph")

    def vget_buckets(self) -> list[tuple[float, int]]:
        """The server's own CACHE.VGET latency histogram: (bound in s, count)."""
        url = f"http://127.0.0.1:{self.admin}/metrics"
        text = urllib.request.urlopen(url).read().decode()
        found = re.findall(
            r'spendb_request_duration_seconds_bucket\{command="cache.vget",le="([^"]+)"\} (\d+)', text)
        return [(float("inf") if le == "+Inf" else float(le), int(n)) for le, n in found]

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            status = f.read()
        return int(status.split("VmRSS:")[1].split()[0]) * 1024


a = Server()
b = Server("--semantic-approx-from", "1000000000")
stored: dict[int, list[float]] = {}
try:
    def vset_both(entries: list[tuple[int, list[float]]], label: str) -> None:
        """Stores each (id, vector) in both servers, in the same order (so
        under the same entry ids), in pipelines of 1,000."""
        pipes = [a.r.pipeline(transaction=False), b.r.pipeline(transaction=False)]
        for k, (i, v) in enumerate(entries):
            for p in pipes:
                p.execute_command("CACHE.VSET", "bench", "FP32", blob(v), f"{label} {i}")
            stored[i] = v
            if k % 1000 == 999:
                for p in pipes:
                    p.execute()
        for p in pipes:
            p.execute()

    began = time.monotonic()
    vset_both([(i, entry()) for i in range(N)], "answer")
    print(f"{N} VSETs into each server: {time.monotonic() - began:.1f} s")
    print(f"A's graph ready {a.graph_ready():.1f} s after the last VSET")

    def measure(label: str) -> None:
        # The queries go to A alone first (timed, on both sides), then to B
        # for the reference answers: B's exact scan reads its whole 150 MB
        # arena per query, and interleaved it would evict A's graph from
        # the CPU caches before every timed query, which no real server
        # with one index would see.
        kinds = ["fresh", "near-dup"] * 500
        ids = list(stored)
        queries = [
            blob(fresh() if kind == "fresh" else near_dup(stored, ids))
            for kind in kinds
        ]
        answers = {}
        for ef in EFS:
            if ef is not None:
                a.r.execute_command("CACHE.VCONFIG", "bench", "EF", ef)
            lat: list[float] = []
            got = []
            server_before = a.vget_buckets()
            for q in queries:
                t = time.monotonic()
                got.append(a.r.execute_command("CACHE.VGET", "bench", "FP32", q, "THRESHOLD", "-1"))
                lat.append((time.monotonic() - t) * 1000)
            answers[ef] = (got, lat, server_before, a.vget_buckets())
        want = [b.r.execute_command("CACHE.VGET", "bench", "FP32", q, "THRESHOLD", "-1")
                for q in queries]
        for ef, (got, lat, server_before, server_after) in answers.items():
            hits = {"fresh": 0, "near-dup": 0}
            for kind, mine, exact in zip(kinds, got, want):
                if mine[b"id"] == exact[b"id"] or mine[b"score"] == exact[b"score"]:
                    hits[kind] += 1
            lat.sort()
            n = len(lat)
            ef_label = f" (ef {ef})" if ef is not None else ""
            print(f"{label}{ef_label}: recall@1 fresh {hits['fresh'] / 500:.3f}, near-dup "
                  f"{hits['near-dup'] / 500:.3f}; VGET p50 {lat[n // 2]:.3f} ms, "
                  f"p99 {lat[n * 99 // 100]:.3f} ms (client side); server time p50 "
                  f"{quantile(server_before, server_after, 0.5)}, p99 "
                  f"{quantile(server_before, server_after, 0.99)}, max "
                  f"{quantile(server_before, server_after, 1.0)} (its /metrics histogram)")

    measure("fresh graph")
    st = a.stats()
    print(f"A: RSS {a.rss() / 1e6:.0f} MB = {a.rss() / N:.0f} B an entry (raw vector {DIM * 4} B); "
          f"index {int(st['semantic_index_bytes']) / 1e6:.0f} MB")
    if shutil.which("redis-benchmark"):
        q = [f"{x:.4f}" for x in fresh()]
        out = subprocess.run(
            ["redis-benchmark", "-p", str(a.port), "-c", "20", "-n", "20000", "-q",
             "CACHE.VGET", "bench", "VALUES", str(DIM), *q],
            check=False, capture_output=True, text=True,
        ).stdout
        rate = re.findall(r"[\d.]+ requests per second.*", out.replace("\r", "\n"))
        print("redis-benchmark -c 20 -n 20000 CACHE.VGET (one query vector):", rate[-1] if rate else out)
    next_id = N
    for round in range(2):
        ids = list(stored)
        gone = [i for i in ids if rng.random() < 0.5]
        for s in (a, b):
            p = s.r.pipeline(transaction=False)
            for k, i in enumerate(gone):
                p.execute_command("CACHE.VDEL", "bench", i)
                if k % 1000 == 999:
                    p.execute()
            p.execute()
        stored_before = dict(stored)
        for i in gone:
            del stored[i]
        vset_both(
            [(next_id + k, stored_before[g] if REAL is not None else fresh())
             for k, g in enumerate(gone)],
            "new",
        )
        next_id += len(gone)
        print(f"churn {round + 1}: replaced {len(gone)}; graph settled {a.graph_ready():.1f} s later")
        measure(f"after churn {round + 1}")
    a.stop()
    b.stop()
    took, ready = [], []
    for _ in range(3):
        took.append(a.start())
        ready.append(a.graph_ready())
        a.stop()
    print(f"A's start-up with {len(stored)} entries: {', '.join(f'{x:.2f}' for x in took)} s "
          f"(median {statistics.median(took):.2f} s); graph rebuilt "
          f"{', '.join(f'{x:.1f}' for x in ready)} s after (the exact index answers meanwhile)")
finally:
    for s in (a, b):
        if s.proc.poll() is None:
            s.stop()
        shutil.rmtree(s.dir, ignore_errors=True)
