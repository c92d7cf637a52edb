#!/usr/bin/env python3
"""Draws benches/sweep.sh's CSV: RESERVE throughput and p99 latency against
connections, spendb vs the Redis + Lua peer. Needs matplotlib.

    python3 benches/plot.py [docs/bench/sweep.csv] [docs/bench/sweep.svg]
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src = sys.argv[1] if len(sys.argv) > 1 else "docs/bench/sweep.csv"
dst = sys.argv[2] if len(sys.argv) > 2 else "docs/bench/sweep.svg"
rows = list(csv.DictReader(open(src)))
servers = sorted({r["server"] for r in rows}, reverse=True)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
for s in servers:
    pts = sorted((int(r["connections"]), float(r["rps"]), float(r["p99_ms"])) for r in rows if r["server"] == s)
    c = [p[0] for p in pts]
    label = "spendb (fsync)" if s == "spendb" else "Redis + Lua (appendfsync always)"
    ax1.plot(c, [p[1] / 1000 for p in pts], marker="o", label=label)
    ax2.plot(c, [p[2] for p in pts], marker="o", label=label)
for ax in (ax1, ax2):
    ax.set_xscale("log")
    ax.set_xlabel("connections (redis-benchmark, no pipelining)")
    ax.grid(True, alpha=0.3)
    ax.legend()
ax1.set_ylabel("RESERVE, thousands per second")
ax2.set_ylabel("p99 latency, ms")
ax1.set_title("Throughput")
ax2.set_title("p99 latency")
fig.suptitle("RESERVE with every write durable, 2-core machine, one run")
fig.tight_layout()
fig.savefig(dst)
print(f"wrote {dst}")
