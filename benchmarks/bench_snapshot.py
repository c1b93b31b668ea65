"""Shard snapshot cost per epoch, full against incremental, and memory per twin.

The twin type is ``pump`` of ``dataflows/kafka_to_influxdb.yaml`` (3 channels, a Kalman filter
each, the default anomaly scorer), in one shard. Every twin first reports its 3 channels
(three rounds, so every cell has a filter state and a score); then each *epoch* a few twins
(``--changed``) report once more, and the shard is snapshotted as the Bytewax adapter does at
each epoch's end: ``TwinShard.snapshot()`` then ``pickle.dumps`` (what Bytewax writes to the
recovery SQLite partitions, one row per state key).

- *full* (the baseline): one state key per shard, every twin's arrays every epoch;
- *incremental*: :class:`~dte_stream.twins.snapshot_log.SnapshotLog`, a part file with the
  twins changed since the last snapshot (written and fsynced) plus the pickled manifest Bytewax
  would store; a new base whenever the parts reach half the base. After the epochs the restore
  (base + parts) is checked equal to the shard's full snapshot.

Both run in the same process on the same shard, epochs interleaved; CPU ms are medians.
RSS per twin: the growth of the process's resident set from before the shard was built to
after every twin reported (a fresh forked process per twin count), divided by the twins.

With ``--memory``, instead: where the memory of a grown shard goes (no epochs). The RSS growth
per twin (fresh forked process, no tracing), then in another fork the live Python allocations
by source line (``tracemalloc``, numpy arrays included), and numpy bytes by component of the
bank (allocated capacity, so spare rows count) with the capacity the bank grew to.

    python benchmarks/bench_snapshot.py                    # 1,000 and 100,000 twins
    python benchmarks/bench_snapshot.py --twins 1000 --epochs 5
    python benchmarks/bench_snapshot.py --memory --twins 100000
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from dte_stream.readings import ReadingBatch
from dte_stream.spec import load_spec, parse_spec
from dte_stream.twins.bank import CELL_ARRAYS
from dte_stream.twins.routing import Router
from dte_stream.twins.shard import TwinShard
from dte_stream.twins.snapshot_log import SnapshotLog, restore_snapshot

CELLS = tuple(CELL_ARRAYS)
SPEC = Path(__file__).resolve().parents[1] / "dataflows" / "kafka_to_influxdb.yaml"


def bench_spec() -> Any:
    """The Kafka spec's twin type, in one shard and on the event clock (no wall-clock timers)."""
    base = load_spec(SPEC, env={})
    pump = base.twin_type("pump").model_dump(exclude_none=True)
    return parse_spec(
        {
            "name": "snap",
            "sources": [{"kind": "simulator", "twin_type": "pump"}],
            "twin_types": [pump],
            "sinks": [{"kind": "local_store"}],
            "engine": {"shards": 1, "clock": "event"},
        }
    )


def readings(ids: list[str], second: int, seed: int) -> ReadingBatch:
    channels = ["temperature", "pressure", "flow"]
    n = len(ids)
    rng = np.random.default_rng(seed)
    return ReadingBatch.from_columns(
        [i for i in ids for _ in channels],
        channels * n,
        np.full(3 * n, second * 10**9, dtype=np.int64),
        rng.normal(20, 1, 3 * n),
    )


def feed(shard: TwinShard, router: Router, ids: list[str], second: int, seed: int) -> None:
    shard.on_batch([b for _, b in router.route(readings(ids, second, seed), "bench", "pump").routed])


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def grown_shard(twins: int) -> tuple[TwinShard, Router, list[str]]:
    spec = bench_spec()
    shard = TwinShard(spec, "shard-0000")
    router = Router(spec)
    ids = [f"pump-{i:06d}" for i in range(twins)]
    for second in range(3):
        for start in range(0, twins, 20_000):
            feed(shard, router, ids[start : start + 20_000], second, second)
    return shard, router, ids


def measure(twins: int, epochs: int, changed: int, queue: Any) -> None:
    """One twin count, in a fresh process: RSS per twin, then snapshot cost per epoch."""
    gc.collect()
    before = rss_bytes()
    shard, router, ids = grown_shard(twins)
    gc.collect()
    rss_per_twin = (rss_bytes() - before) / twins
    rng = np.random.default_rng(7)
    full_ms: list[float] = []
    full_bytes: list[int] = []
    inc_ms: list[float] = []
    inc_bytes: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        log = SnapshotLog(Path(tmp))
        log.snapshot(shard)  # the first epoch writes the base (a fresh recovery directory)
        for epoch in range(epochs):
            some = sorted(rng.choice(twins, size=min(changed, twins), replace=False).tolist())
            feed(shard, router, [ids[i] for i in some], 3 + epoch, 100 + epoch)
            start = time.process_time()
            data = pickle.dumps(shard.snapshot(), protocol=pickle.HIGHEST_PROTOCOL)
            full_ms.append((time.process_time() - start) * 1e3)
            full_bytes.append(len(data))
            start = time.process_time()
            manifest = pickle.dumps(log.snapshot(shard), protocol=pickle.HIGHEST_PROTOCOL)
            inc_ms.append((time.process_time() - start) * 1e3)
            inc_bytes.append(len(manifest) + log.last_written)
        restored = restore_snapshot(log.folder(), log_manifest(log, shard))
        if not same(restored, shard.snapshot()):
            raise SystemExit("incremental restore differs from the shard")
    queue.put(
        {
            "twins": twins,
            "rss_per_twin": rss_per_twin,
            "full_ms": statistics.median(full_ms),
            "full_bytes": statistics.median(full_bytes),
            "inc_ms": statistics.median(inc_ms),
            "inc_bytes": statistics.median(inc_bytes),
        }
    )


def same(a: Any, b: Any) -> bool:
    """Equal snapshots: same keys and values, arrays element by element (NaN equal to NaN)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        kind = a.dtype.kind in "fc"
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=kind)
    return bool(a == b)


def log_manifest(log: SnapshotLog, shard: TwinShard) -> dict[str, Any]:
    """A manifest of the shard as it is now (nothing changed since the last one: an empty part)."""
    return log.snapshot(shard)


def array_bytes(obj: Any) -> int:
    """``nbytes`` of every distinct numpy array (that owns its data) reachable from ``obj``."""
    seen: set[int] = set()
    total, stack = 0, [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen or o is None or isinstance(o, str | int | float | bool):
            continue
        seen.add(id(o))
        if isinstance(o, np.ndarray):
            total += o.nbytes if o.base is None else 0
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, list | tuple | set):
            stack.extend(o)
        elif type(o).__module__.startswith("dte_stream.twins"):
            stack.extend(vars(o).values() if hasattr(o, "__dict__") else ())
            stack.extend(getattr(o, n) for n in getattr(type(o), "__slots__", ()) if hasattr(o, n))
    return total


def memory(twins: int, traced: bool, queue: Any) -> None:
    """RSS growth per twin of a grown shard; with ``traced``, where tracemalloc sees it go."""
    import tracemalloc

    gc.collect()
    if traced:
        tracemalloc.start()
    before = rss_bytes()
    shard, router, _ = grown_shard(twins)
    router_ids = array_bytes(router._placement)  # the router's own id cache (left out of the RSS)
    del router
    gc.collect()
    out: dict[str, Any] = {"rss_per_twin": (rss_bytes() - before) / twins}
    if traced:
        stats = tracemalloc.take_snapshot().statistics("lineno")
        out["traced_per_twin"] = sum(s.size for s in stats) / twins
        out["top"] = [(str(s.traceback), s.size / twins, s.count) for s in stats[:12]]
        tracemalloc.stop()
    bank = shard.banks["pump"]
    out["capacity"] = bank.capacity
    out["parts"] = {
        "filters": array_bytes([g.state for g in bank.groups]),
        "quality": array_bytes(bank.quality),
        "anomaly scorer": array_bytes(bank.scorer),
        "twin ids and their sort order (bank.index)": array_bytes(bank.index),
        "bank's own": array_bytes([getattr(bank, n) for n in ("last_seen", "changed", "dirty", *CELLS)]),
        "router's id cache (not in the figures above)": router_ids,
    }
    queue.put(out)


def memory_report(args: argparse.Namespace) -> None:
    ctx = multiprocessing.get_context("fork")
    for twins in args.twins:
        results = []
        for traced in (False, True):
            queue = ctx.Queue()
            proc = ctx.Process(target=memory, args=(twins, traced, queue))
            proc.start()
            results.append(queue.get())
            proc.join()
        plain, traced_run = results
        print(f"\n{twins:,} twins, bank capacity {plain['capacity']:,} rows\n")
        print(f"- RSS growth: {plain['rss_per_twin']:,.0f} B per twin")
        print(f"- live Python allocations (tracemalloc): {traced_run['traced_per_twin']:,.0f} B per twin\n")
        print("| component | B per twin |")
        print("|---|---:|")
        for name, size in plain["parts"].items():
            print(f"| {name} | {size / twins:,.0f} |")
        print("\n| allocated at (tracemalloc, top 12) | B per twin | blocks |")
        print("|---|---:|---:|")
        for where, per_twin, count in traced_run["top"]:
            print(f"| `{where.replace(str(SPEC.parents[1]) + '/', '')}` | {per_twin:,.0f} | {count:,} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--twins", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--epochs", type=int, default=7)
    parser.add_argument("--changed", type=int, default=100, help="twins that report in each epoch")
    parser.add_argument("--memory", action="store_true", help="where a grown shard's memory goes")
    args = parser.parse_args()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"Shard snapshot per epoch, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} cores, load average {load} (shared machine: CPU ms)"
    )
    command = " ".join(["python", *sys.argv])
    if args.memory:
        print(f"`{command}`")
        memory_report(args)
        return
    print(f"`{command}`; {args.changed} twins change per epoch, median of {args.epochs}\n")
    print("| twins | full: CPU ms | full: bytes | incremental: CPU ms | incremental: bytes | RSS per twin |")
    print("|---:|---:|---:|---:|---:|---:|")
    ctx = multiprocessing.get_context("fork")
    for twins in args.twins:
        queue = ctx.Queue()
        proc = ctx.Process(target=measure, args=(twins, args.epochs, args.changed, queue))
        proc.start()
        r = queue.get()
        proc.join()
        print(
            f"| {twins:,} | {r['full_ms']:,.1f} | {r['full_bytes'] / 1e6:,.2f} MB | {r['inc_ms']:,.1f} "
            f"| {r['inc_bytes'] / 1e6:,.3f} MB | {r['rss_per_twin']:,.0f} B |",
            flush=True,
        )


if __name__ == "__main__":
    main()
