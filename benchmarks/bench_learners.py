"""Learner bank cost per reading and snapshot size per twin, for every learner kind at its defaults.

For each kind, one learner (``scope: twin``) on one channel of ``--twins`` twins: every twin is
first warmed up with ``--warm`` readings (so HalfSpaceTrees is past its first window and
scoring), then ``--readings`` readings in arrival order (random twin) go through
:meth:`LearnerBank.update` in micro-batches of ``--batch``. Reported per kind:

- readings/s and us/reading of ``update`` in that steady state;
- the same readings through a bare loop of river calls (dict of models, score/forecast then
  learn, no standardisation or grouping): the floor the per-reading river work sets;
- snapshot bytes per twin, and the time of ``snapshot()`` and ``restore()`` for all twins.

    python benchmarks/bench_learners.py --twins 1000

Prints a Markdown table with the date and machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np

from dte_stream.spec.learners import LEARNER_KINDS, LearnerSpec
from dte_stream.twins.learners import LearnerBank


def readings(twins: int, count: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    twin = rng.integers(0, twins, size=count)
    value = 20.0 + rng.normal(0, 1, count)
    feats = {"value": value, "innovation": rng.normal(0, 1, count), "delta": rng.normal(0, 1.4, count)}
    return twin, feats


def bare_loop(
    spec: LearnerSpec,
    warm: tuple[np.ndarray, dict[str, np.ndarray]],
    twin: np.ndarray,
    feats: dict[str, np.ndarray],
) -> float:
    """Seconds for the river calls alone on the timed readings, after the same untimed warm-up."""
    models: dict[int, Any] = {}
    bare_calls(spec, models, *warm)
    start = time.perf_counter()
    bare_calls(spec, models, twin, feats)
    return time.perf_counter() - start


def bare_calls(
    spec: LearnerSpec, models: dict[int, Any], twin: np.ndarray, feats: dict[str, np.ndarray]
) -> None:
    cls = LEARNER_KINDS[spec.kind].river_type()
    params = spec.model_params()
    names = list(spec.features)
    rows = np.column_stack([feats[f] for f in names]).tolist()
    for t, row in zip(twin.tolist(), rows, strict=True):
        model = models.get(t)
        if model is None:
            model = models[t] = cls(**params)
        if spec.kind == "half_space_trees":
            x = dict(zip(names, row, strict=True))
            model.score_one(x)
            model.learn_one(x)
        elif spec.kind == "gaussian_score":
            model.score_one(None, row[0])
            model.learn_one(None, row[0])
        elif spec.role == "drift":
            model.update(row[0])
        else:
            with contextlib.suppress(IndexError, TypeError):  # not enough history yet
                model.forecast(spec.horizon)
            model.learn_one(row[0])


def run(kind: str, twins: int, warm: int, count: int, batch: int) -> dict[str, float]:
    spec = LearnerSpec(name="learner", kind=kind)  # type: ignore[arg-type]
    bank = LearnerBank([spec], ["temp"])
    ids = np.array([f"twin-{i:06d}" for i in range(twins)])
    # warm-up: every twin gets `warm` readings, round-robin, in batches of `batch`
    w_twin = np.tile(np.arange(twins), warm)
    _, w_feats = readings(twins, w_twin.size, 1)
    for lo in range(0, w_twin.size, batch):
        sl = slice(lo, lo + batch)
        n = w_twin[sl].size
        bank.update(
            ids[w_twin[sl]],
            np.zeros(n, dtype=np.intp),
            np.zeros(n, dtype=np.int64),
            {f: v[sl] for f, v in w_feats.items()},
        )
    twin, feats = readings(twins, count, 2)
    start = time.perf_counter()
    for lo in range(0, count, batch):
        sl = slice(lo, lo + batch)
        n = twin[sl].size
        bank.update(
            ids[twin[sl]],
            np.zeros(n, dtype=np.intp),
            np.zeros(n, dtype=np.int64),
            {f: v[sl] for f, v in feats.items()},
        )
    elapsed = time.perf_counter() - start
    bare = bare_loop(spec, (w_twin, w_feats), twin, feats)
    t0 = time.perf_counter()
    data = bank.snapshot()
    t_snap = time.perf_counter() - t0
    t0 = time.perf_counter()
    restored = LearnerBank.restore([spec], ["temp"], data)
    t_restore = time.perf_counter() - t0
    empty = len(LearnerBank([spec], ["temp"]).snapshot())
    return {
        "rate": count / elapsed,
        "us": elapsed / count * 1e6,
        "bare_us": bare / count * 1e6,
        "bytes_per_twin": (len(data) - empty) / twins,
        "snapshot_ms": t_snap * 1e3,
        "restore_ms": t_restore * 1e3,
        "models": float(len(restored)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--twins", type=int, default=1000)
    parser.add_argument("--warm", type=int, default=160, help="readings per twin before timing")
    parser.add_argument("--readings", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--kinds", nargs="*", default=list(LEARNER_KINDS))
    args = parser.parse_args()
    print(
        f"# learner bank, {args.twins} twins, 1 channel, batches of {args.batch}; "
        f"{datetime.now(UTC):%Y-%m-%d}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )
    print()
    print(
        "| kind | readings/s | us/reading | bare river us/rdg | snapshot B/twin | snapshot ms | restore ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for kind in args.kinds:
        r = run(kind, args.twins, args.warm, args.readings, args.batch)
        if int(r["models"]) != args.twins:
            raise SystemExit(f"{kind}: restored {r['models']:.0f} models, expected {args.twins}")
        print(
            f"| {kind} | {r['rate']:,.0f} | {r['us']:.1f} | {r['bare_us']:.1f} | {r['bytes_per_twin']:,.0f} "
            f"| {r['snapshot_ms']:.0f} | {r['restore_ms']:.0f} |"
        )


if __name__ == "__main__":
    main()
