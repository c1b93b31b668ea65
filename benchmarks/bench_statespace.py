"""State-space kernel throughput against the per-reading reference, in the same run.

Both apply the same readings to the level+trend preset observed by 2 channels: N twins,
micro-batches of ~2,000 readings (as the dataflow delivers them) with irregular gaps, each
batch split into rounds of one reading per twin (the bank's contract for the kernel). The
reference is :mod:`dte_stream.twins.statespace_reference`, one reading at a time; it runs on
a prefix of the readings (--ref-readings) because it is slow, and its rate is per reading.

    python benchmarks/bench_statespace.py --twins 1000 100000 --readings 400000

Prints a Markdown table with the date and machine.
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import UTC, datetime

import numpy as np

from dte_stream.twins.bank import rounds_of
from dte_stream.twins.presets import local_linear_trend
from dte_stream.twins.statespace import StateSpaceKernel, StateSpaceState
from dte_stream.twins.statespace_reference import ReferenceFilter

MODEL = local_linear_trend(level_noise=1e-3, slope_noise=1e-7, measurement_noise=[0.25, 1.0])


def make_readings(twins: int, count: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Readings in arrival order: random twin and channel, event times ~1 s apart per twin, jittered."""
    rng = np.random.default_rng(seed)
    twin = rng.integers(0, twins, size=count).astype(np.intp)
    channel = rng.integers(0, 2, size=count).astype(np.intp)
    base = np.arange(count, dtype=np.int64) * (twins * 10**9 // max(count // twins, 1)) // twins
    time_ns = base + rng.integers(0, 5 * 10**8, size=count)
    value = 0.001 * time_ns / 1e9 + rng.normal(0, 0.5, size=count)
    return twin, channel, time_ns, value


def run_kernel(twins: int, data: tuple[np.ndarray, ...], batch: int) -> float:
    twin, channel, time_ns, value = data
    kernel = StateSpaceKernel(MODEL, horizons_s=[60.0, 3600.0])
    state = StateSpaceState.allocate(MODEL, twins)
    start = time.perf_counter()
    for lo in range(0, twin.shape[0], batch):
        sl = slice(lo, lo + batch)
        rows, ch, t, v = twin[sl], channel[sl], time_ns[sl], value[sl]
        for idx in rounds_of(rows, t):
            kernel.step(state, rows[idx], ch[idx], t[idx], v[idx])
    return twin.shape[0] / (time.perf_counter() - start)


def run_reference(data: tuple[np.ndarray, ...], count: int) -> float:
    twin, channel, time_ns, value = (a[:count].tolist() for a in data)
    ref = ReferenceFilter(MODEL, horizons_s=[60.0, 3600.0])
    start = time.perf_counter()
    for i in range(count):
        ref.update(str(twin[i]), channel[i], time_ns[i], value[i])
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--twins", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--readings", type=int, default=400_000)
    parser.add_argument("--ref-readings", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=2_000)
    args = parser.parse_args()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = (
        f"{platform.machine()}, {platform.processor() or platform.node()}, Python {platform.python_version()}"
    )
    print(f"State-space kernel, level+trend preset, 2 channels, horizons 60 s and 1 h; {stamp}; {machine}\n")
    print(
        "| twins | readings | vectorised kernel (readings/s) | per-reading reference (readings/s) | ratio |"
    )
    print("|---:|---:|---:|---:|---:|")
    for twins in args.twins:
        data = make_readings(twins, args.readings)
        fast = run_kernel(twins, data, args.batch)
        slow = run_reference(data, min(args.ref_readings, args.readings))
        print(f"| {twins:,} | {args.readings:,} | {fast:,.0f} | {slow:,.0f} | {fast / slow:,.0f}x |")


if __name__ == "__main__":
    main()
