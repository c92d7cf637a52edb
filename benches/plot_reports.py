#!/usr/bin/env python3
"""Draws benches/reports.sh's CSV: what a month's spend report for one org
and the runs report cost (p50 and p99, ms) against the ledger's length.
Needs matplotlib.

    python3 benches/plot_reports.py [docs/bench/reports.csv] [docs/bench/reports.svg]
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src = sys.argv[1] if len(sys.argv) > 1 else "docs/bench/reports.csv"
dst = sys.argv[2] if len(sys.argv) > 2 else "docs/bench/reports.svg"
rows = sorted(csv.DictReader(open(src)), key=lambda r: int(r["entries"]))
n = [int(r["entries"]) / 1e6 for r in rows]
fig, ax = plt.subplots(figsize=(7, 4.2))
for report, label in [("spend", "spend report, a month of one org"), ("runs", "runs report, by scope")]:
    for q, style in [("p50", "-"), ("p99", "--")]:
        ax.plot(n, [float(r[f"{report}_{q}_ms"]) for r in rows], style, marker="o", label=f"{label}, {q}")
ax.axhline(50, color="grey", linewidth=0.8)
ax.text(n[0], 51, "target: p99 ≤ 50 ms", color="grey", fontsize=8)
ax.set_xscale("log")
ax.set_xlabel("ledger entries (millions; 30 days of them)")
ax.set_ylabel("ms per report")
ax.set_ylim(0, 60)
ax.grid(True, alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(dst)
print(dst)
