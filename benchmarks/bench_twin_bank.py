"""Twin-bank update throughput against a per-reading numpy filter, in the same run.

All apply the same readings (N twins x 3 channels, micro-batches of ~2,000 readings, as the
dataflow delivers them) to the same random-walk Kalman filter:

- bank: TwinBank.update, one vectorised numpy step per batch (per round);
- per-reading numpy: the same numpy kernel step called once per reading (1-element arrays);
- per-reading scalar: dte_stream.twins.reference, plain Python floats one reading at a time
  (the strongest per-reading baseline, no numpy call overhead).

    python benchmarks/bench_twin_bank.py --twins 1000 10000 100000 --readings 300000

Prints a Markdown table for docs/benchmarks.md. Each figure is the median of --repeat runs.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from datetime import UTC, datetime

import numpy as np

from dte_stream.readings import ReadingBatch
from dte_stream.spec.model import TwinTypeSpec
from dte_stream.twins.bank import TwinBank
from dte_stream.twins.batches import TypedBatch
from dte_stream.twins.kalman import RandomWalkState
from dte_stream.twins.reference import PerReadingFilter

SPEC = TwinTypeSpec(
    name="pump",
    channels={
        "temperature": {"filter": {"process_noise": 0.001, "measurement_noise": 0.25}},
        "pressure": {"filter": {"process_noise": 0.00001, "measurement_noise": 0.0025}},
        "flow": {"filter": {"process_noise": 0.05, "measurement_noise": 4.0}},
    },
)
BATCH = 2000


def make_batches(twins: int, readings: int, seed: int = 7) -> list[TypedBatch]:
    """Readings in arrival order: every twin reports its 3 channels once per second."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"pump-{i:06d}" for i in range(twins)])
    n = readings
    k = np.arange(n)
    twin = (k // 3) % twins
    channel = k % 3
    time_ns = (k // (3 * twins)).astype(np.int64) * 10**9
    value = rng.normal(50, 5, n)
    names = np.array(SPEC.channel_names())
    out = []
    for s in range(0, n, BATCH):
        sl = slice(s, s + BATCH)
        rb = ReadingBatch.from_columns(ids[twin[sl]], names[channel[sl]], time_ns[sl], value[sl])
        out.append(TypedBatch("pump", rb, channel[sl].astype(np.intp)))
    return out


def run_bank(batches: list[TypedBatch], warm: int) -> tuple[float, float]:
    """Seconds for the first ``warm`` batches (every twin new) and for the rest (steady state)."""
    bank = TwinBank(SPEC)
    t0 = time.perf_counter()
    for b in batches[:warm]:
        bank.update(b)
    t1 = time.perf_counter()
    for b in batches[warm:]:
        bank.update(b)
    return t1 - t0, time.perf_counter() - t1


def run_numpy_per_reading(batches: list[TypedBatch], limit: int) -> tuple[float, int]:
    bank = TwinBank(SPEC)
    kernel = bank.kernel
    state = RandomWalkState.allocate(200_000, 3)
    row_of: dict[str, int] = {}
    done = 0
    t0 = time.perf_counter()
    for b in batches:
        r = b.readings
        for i in range(len(r)):
            row = row_of.setdefault(str(r.twin_id[i]), len(row_of))
            kernel.step(
                state,
                np.array([row]),
                b.channel_index[i : i + 1],
                r.time_ns[i : i + 1],
                r.value[i : i + 1],
            )
        done += len(r)
        if done >= limit:
            break
    return time.perf_counter() - t0, done


def run_reference(batches: list[TypedBatch], limit: int) -> tuple[float, int]:
    ref = PerReadingFilter(SPEC)
    done = 0
    t0 = time.perf_counter()
    for b in batches:
        r = b.readings
        ids = r.twin_id.tolist()
        ch = b.channel_index.tolist()
        ts = r.time_ns.tolist()
        vs = r.value.tolist()
        for i in range(len(ids)):
            ref.update(ids[i], ch[i], ts[i], vs[i])
        done += len(ids)
        if done >= limit:
            break
    return time.perf_counter() - t0, done


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--twins", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--readings", type=int, default=600_000, help="steady-state readings per run of the bank")
    ap.add_argument("--baseline-readings", type=int, default=20_000, help="readings per run of a baseline")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    print(
        f"# twin bank vs per-reading filter, {datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, "
        f"{platform.processor() or platform.platform()}, "
        f"Python {platform.python_version()}, numpy {np.__version__}"
    )
    print(
        "| twins | bank, first contact readings/s | bank, steady readings/s | per-reading numpy readings/s "
        "| steady bank / numpy | per-reading scalar readings/s | steady bank / scalar |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for twins in args.twins:
        first = 3 * twins  # the first reading of every cell creates the twin
        readings = first + max(args.readings, first)
        batches = make_batches(twins, readings)
        warm = -(-first // BATCH)
        warm_readings = sum(len(b) for b in batches[:warm])
        bank_rates, new_rates, np_rates, ref_rates = [], [], [], []
        for rep in range(args.repeat):
            t_new, t_steady = run_bank(batches, warm)
            new_rates.append(warm_readings / t_new)
            bank_rates.append((readings - warm_readings) / t_steady)
            secs, done = run_numpy_per_reading(batches, args.baseline_readings)
            np_rates.append(done / secs)
            secs, done = run_reference(batches, args.baseline_readings * 5)
            ref_rates.append(done / secs)
            print(
                f"  run {rep + 1}/{args.repeat} at {twins} twins: bank {bank_rates[-1]:,.0f}/s, "
                f"per-reading numpy {np_rates[-1]:,.0f}/s, scalar {ref_rates[-1]:,.0f}/s",
                file=sys.stderr,
            )
        n, b, p, r = (statistics.median(x) for x in (new_rates, bank_rates, np_rates, ref_rates))
        print(f"| {twins:,} | {n:,.0f} | {b:,.0f} | {p:,.0f} | {b / p:.0f}x | {r:,.0f} | {b / r:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
