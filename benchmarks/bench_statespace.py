"""State-space kernel throughput against the per-reading reference, in the same run.

Two cases, each applied by the vectorised kernel and by the per-reading reference
(:mod:`dte_stream.twins.statespace_reference`, one reading at a time, run on a prefix of the
readings (--ref-readings) because it is slow; its rate is per reading):

- ``trend``: the level+trend preset observed by 2 channels, horizons 60 s and 1 h, micro-batches
  of 2,000 readings with irregular (jittered) gaps, for each ``--twins`` count.
- ``walk``: the random-walk preset, 1 channel, no horizons, 100,000 twins each read every 1 s
  exactly (regular gaps), micro-batches of 10,000 readings (one round each). ``walk-adaptive``
  is the same with ``adaptive_noise=True`` and a per-reading ``r_scale`` (when the kernel has it).

Each batch is split into rounds of one reading per twin (the bank's contract for the kernel)
before the clock starts: the figures are readings/s of ``StateSpaceKernel.step`` alone.

    python benchmarks/bench_statespace.py --twins 1000 100000 --readings 200000

Prints a Markdown table with the date and machine.
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from dte_stream.twins.kalman import StateSpaceKernel
from dte_stream.twins.presets import local_linear_trend, random_walk
from dte_stream.twins.statespace import StateSpaceModel, StateSpaceState
from dte_stream.twins.statespace_reference import ReferenceFilter

TREND = local_linear_trend(level_noise=1e-3, slope_noise=1e-7, measurement_noise=[0.25, 1.0])
WALK = random_walk(level_noise=1e-3, measurement_noise=[0.25])


def rounds_of(twins: np.ndarray, time_ns: np.ndarray) -> list[np.ndarray]:
    """Positions in rounds of at most one reading per twin, in time order (as the bank splits them)."""
    order = np.lexsort((time_ns, twins))
    starts = np.ones(order.shape[0], dtype=bool)
    starts[1:] = twins[order][1:] != twins[order][:-1]
    if starts.all():
        return [order]
    rank = np.arange(order.shape[0]) - np.flatnonzero(starts)[np.cumsum(starts) - 1]
    return [order[rank == k] for k in range(int(rank.max()) + 1)]


@dataclass
class Case:
    label: str
    model: StateSpaceModel
    twins: int
    batch: int
    horizons_s: list[float]
    data: tuple[np.ndarray, ...]
    options: dict[str, Any]


def irregular_readings(twins: int, count: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Arrival order: random twin and channel, event times ~1 s apart per twin, jittered."""
    rng = np.random.default_rng(seed)
    twin = rng.integers(0, twins, size=count).astype(np.intp)
    channel = rng.integers(0, 2, size=count).astype(np.intp)
    base = np.arange(count, dtype=np.int64) * (twins * 10**9 // max(count // twins, 1)) // twins
    time_ns = base + rng.integers(0, 5 * 10**8, size=count)
    value = 0.001 * time_ns / 1e9 + rng.normal(0, 0.5, size=count)
    return twin, channel, time_ns, value, np.ones(count)


def regular_readings(twins: int, count: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Every twin once per second at its own fixed phase, twins in a fixed order within the second."""
    rng = np.random.default_rng(seed)
    i = np.arange(count, dtype=np.int64)
    twin = (i % twins).astype(np.intp)
    phase = rng.integers(0, 10**9, size=twins)
    time_ns = (i // twins) * 10**9 + phase[twin]
    value = 20.0 + np.sin(twin) + rng.normal(0, 0.5, size=count)
    r_scale = np.where(rng.random(count) < 0.05, 4.0, 1.0)  # 5 % of readings with a quality flag
    return twin, np.zeros(count, dtype=np.intp), time_ns, value, r_scale


def run_kernel(case: Case) -> float:
    twin, channel, time_ns, value, r_scale = case.data
    kernel = StateSpaceKernel(case.model, horizons_s=case.horizons_s, **case.options)
    trust = "r_scale" in inspect.signature(kernel.step).parameters and bool(case.options)
    state = StateSpaceState.allocate(case.model, case.twins)
    rounds = []
    for lo in range(0, twin.shape[0], case.batch):
        sl = slice(lo, lo + case.batch)
        rows, ch, t, v, rs = twin[sl], channel[sl], time_ns[sl], value[sl], r_scale[sl]
        rounds += [(rows[idx], ch[idx], t[idx], v[idx], rs[idx]) for idx in rounds_of(rows, t)]
    start = time.perf_counter()
    for rows, ch, t, v, rs in rounds:
        if trust:
            kernel.step(state, rows, ch, t, v, r_scale=rs)
        else:
            kernel.step(state, rows, ch, t, v)
    return twin.shape[0] / (time.perf_counter() - start)


def run_reference(case: Case, count: int) -> float:
    twin, channel, time_ns, value, r_scale = (a[:count].tolist() for a in case.data)
    ref = ReferenceFilter(case.model, horizons_s=case.horizons_s, **case.options)
    trust = "r_scale" in inspect.signature(ref.update).parameters and bool(case.options)
    start = time.perf_counter()
    for i in range(count):
        if trust:
            ref.update(str(twin[i]), channel[i], time_ns[i], value[i], r_scale=r_scale[i])
        else:
            ref.update(str(twin[i]), channel[i], time_ns[i], value[i])
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--twins", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--readings", type=int, default=200_000, help="readings of the trend cases")
    parser.add_argument("--walk-readings", type=int, default=1_000_000, help="readings of the walk case")
    parser.add_argument("--ref-readings", type=int, default=10_000)
    parser.add_argument("--cases", nargs="+", default=["trend", "walk", "walk-adaptive"])
    args = parser.parse_args()
    cases: list[Case] = []
    if "trend" in args.cases:
        for twins in args.twins:
            label = f"level+trend, 2 channels, {twins:,} twins, irregular gaps, batches of 2,000"
            data = irregular_readings(twins, args.readings)
            cases.append(Case(label, TREND, twins, 2_000, [60.0, 3600.0], data, {}))
    walk = regular_readings(100_000, args.walk_readings)
    if "walk" in args.cases:
        label = "random walk, 1 channel, 100,000 twins, regular 1 s gaps, batches of 10,000"
        cases.append(Case(label, WALK, 100_000, 10_000, [], walk, {}))
    adaptive = "adaptive_noise" in inspect.signature(StateSpaceKernel).parameters
    if "walk-adaptive" in args.cases and adaptive:
        label = "the same, adaptive noise scale and r_scale"
        cases.append(Case(label, WALK, 100_000, 10_000, [], walk, {"adaptive_noise": True}))
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, numpy {np.__version__}"
    )
    print(f"State-space kernel step; {stamp}; {machine}\n")
    print("| case | readings | vectorised kernel (readings/s) | per-reading reference (readings/s) | ratio |")
    print("|---|---:|---:|---:|---:|")
    for case in cases:
        fast = run_kernel(case)
        slow = run_reference(case, min(args.ref_readings, case.data[0].shape[0]))
        count = case.data[0].shape[0]
        print(f"| {case.label} | {count:,} | {fast:,.0f} | {slow:,.0f} | {fast / slow:,.0f}x |", flush=True)


if __name__ == "__main__":
    main()
