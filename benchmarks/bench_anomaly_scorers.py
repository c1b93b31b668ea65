"""The anomaly scorers alone, per round of readings, side by side in one process.

One round = every (twin, channel) cell scored once (what the bank's scorer call sees for a
batch in which each cell has one reading). Cells get 5-minute readings of a daily wave with
noise (innovations are the noise). The scorers are timed *alternately*, round after round, and
the fastest of ``--repeat`` rounds of each is kept, so that a machine shared with other work
slows all alike; the ratios are the figures to quote.

Scorers: the default (``contextual``: innovation, time-of-day context, likelihood stage), the
same with ``likelihood=False``, the ``innovation`` scorer, and with ``--before FILE`` the
``ContextualScorer`` of an earlier release's ``contextual.py`` (for example
``git show <commit>:dte_stream/twins/contextual.py > /tmp/before.py``), loaded beside today's.

    python benchmarks/bench_anomaly_scorers.py [--cells 1000 100000] [--repeat 15] [--before FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from dte_stream.twins.anomaly import AnomalyScorer
from dte_stream.twins.contextual import ContextualScorer

WARM_ROUNDS = 60  # past the scorers' warm-up (20 readings)


def load_before(path: Path) -> Any:
    """The ``ContextualScorer`` class of another copy of ``contextual.py``."""
    spec = importlib.util.spec_from_file_location("contextual_before", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ContextualScorer


def state_bytes(scorer: Any) -> int:
    """Bytes of state per cell (numpy arrays of one row, one channel)."""
    if hasattr(scorer, "nbytes_per_cell"):
        return int(scorer.nbytes_per_cell())
    return sum(a.itemsize for a in scorer.snapshot(1).values())


def measure(cells: int, repeat: int, before: Any) -> dict[str, tuple[float, int]]:
    """Per scorer: (best seconds per round, state bytes per cell)."""
    rng = np.random.default_rng(1)
    rows = np.arange(cells, dtype=np.intp)
    ch = np.zeros(cells, dtype=np.intp)
    phase = rng.uniform(0, 86_400, cells)
    scorers: dict[str, Any] = {
        "contextual (default)": ContextualScorer(1, cells),
        "contextual, likelihood off": ContextualScorer(1, cells, likelihood=False),
        "innovation": AnomalyScorer(1, cells),
    }
    if before is not None:
        scorers["contextual before (--before)"] = before(1, cells)
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
    return {name: (best[name], state_bytes(scorer)) for name, scorer in scorers.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, nargs="+", default=[1000, 100_000])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--before", type=Path, help="contextual.py of an earlier release, timed beside today's")
    args = ap.parse_args()
    before = load_before(args.before) if args.before else None
    print(f"# anomaly scorers alone; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
          f"{platform.platform()}, load average {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    print("| cells | scorer | cells/s | time / default's | state B/cell |")
    print("|---:|---|---:|---:|---:|")
    for cells in args.cells:
        results = measure(cells, args.repeat, before)
        base = results["contextual (default)"][0]
        for name, (seconds, nbytes) in results.items():
            print(f"| {cells:,} | {name} | {cells / seconds:,.0f} | {seconds / base:.2f}x | {nbytes} |")


if __name__ == "__main__":
    main()
