"""The two anomaly scorers alone, per round of readings, side by side in one process.

One round = every (twin, channel) cell scored once (what the bank's scorer call sees for a
batch in which each cell has one reading). Cells get 5-minute readings of a daily wave with
noise (innovations are the noise). The two scorers are timed *alternately*, round after round,
and the fastest of ``--repeat`` rounds of each is kept, so that a machine shared with other work
slows both alike; the ratio is the figure to quote.

    python benchmarks/bench_anomaly_scorers.py [--cells 1000 100000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import UTC, datetime

import numpy as np

from dte_stream.twins.anomaly import AnomalyScorer
from dte_stream.twins.contextual import ContextualScorer

WARM_ROUNDS = 60  # past both scorers' warm-up (20 readings)


def measure(cells: int, repeat: int) -> tuple[float, float, int, int]:
    """(best seconds per round: contextual, innovation; state bytes per cell: contextual, innovation)."""
    rng = np.random.default_rng(1)
    rows = np.arange(cells, dtype=np.intp)
    ch = np.zeros(cells, dtype=np.intp)
    phase = rng.uniform(0, 86_400, cells)
    scorers = {"contextual": ContextualScorer(1, cells), "innovation": AnomalyScorer(1, cells)}
    best = {name: float("inf") for name in scorers}
    for k in range(WARM_ROUNDS + repeat):
        t = np.full(cells, k * 300 * 10**9, dtype=np.int64)
        noise = rng.normal(size=cells)
        value = 10 * np.sin(2 * np.pi * (k * 300 + phase) / 86_400) + noise
        ones = np.ones(cells)
        for name, scorer in scorers.items():
            start = time.perf_counter()
            scorer.score(rows, ch, t, value, noise, ones)
            elapsed = time.perf_counter() - start
            if k >= WARM_ROUNDS:
                best[name] = min(best[name], elapsed)
    ctx = scorers["contextual"]
    inn = scorers["innovation"]
    inn_bytes = sum(a.itemsize for a in inn.snapshot(1).values())
    return best["contextual"], best["innovation"], ctx.nbytes_per_cell(), inn_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, nargs="+", default=[1000, 100_000])
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    print(f"# anomaly scorers alone; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
          f"{platform.platform()}, load average {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    print("| cells | contextual cells/s | innovation cells/s | contextual / innovation time "
          "| state B/cell contextual | state B/cell innovation |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|")
    for cells in args.cells:
        ctx, inn, ctx_b, inn_b = measure(cells, args.repeat)
        print(
            f"| {cells:,} | {cells / ctx:,.0f} | {cells / inn:,.0f} | {ctx / inn:.2f}x | {ctx_b} | {inn_b} |"
        )


if __name__ == "__main__":
    main()
