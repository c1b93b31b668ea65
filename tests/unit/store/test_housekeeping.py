"""Housekeeping of the local store: retention by day partitions, compaction of small files."""

from __future__ import annotations

import time
from pathlib import Path

import bytewax.operators as op
import polars as pl
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

from dte_stream.store import LocalStore
from dte_stream.store.housekeeping import Housekeeper
from dte_stream.store.sink import LocalStoreSink

DAY = 86_400 * 10**9
T0 = 20_000 * DAY  # 2024-10-04, a day boundary


def rows(time_ns: int, n: int = 3) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "time": [time_ns + k for k in range(n)],
            "twin_id": [f"p{k}" for k in range(n)],
            "channel": ["t"] * n,
            "value": [float(k) for k in range(n)],
        }
    )


def test_expire_deletes_whole_days_that_end_before_the_cutoff(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, fsync=False)
    for day in range(4):
        store.append("readings", rows(T0 + day * DAY + DAY // 2))
    gone = store.expire("readings", T0 + 2 * DAY + DAY // 3)  # inside day 2: days 0 and 1 end before
    assert [d.isoformat() for d in gone] == ["2024-10-04", "2024-10-05"]
    left = store.query("readings")
    assert left["time"].cast(pl.Int64).min() == T0 + 2 * DAY + DAY // 2
    assert left.height == 6
    assert sorted(p.name for p in (tmp_path / "readings").iterdir() if not p.name.startswith(".")) == [
        "date=2024-10-06",
        "date=2024-10-07",
    ]


def test_compaction_merges_small_files_and_leaves_large_ones(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, fsync=False)
    store.append("readings", rows(T0, n=20_000))  # a large file
    for k in range(5):
        store.append("readings", rows(T0 + (k + 1) * 10**9))
    big = max(store.files("readings"), key=lambda p: p.stat().st_size)
    merged = store.compact("readings", min_files=2, max_file_bytes=big.stat().st_size)
    assert merged == 5
    files = store.files("readings")
    assert len(files) == 2
    assert big in files
    assert store.query("readings").height == 20_015


def test_retention_counts_back_from_the_newest_data_not_the_wall_clock(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, fsync=False)
    for day in range(5):
        for _ in range(3):
            store.append("readings", rows(T0 + day * DAY + DAY // 2))
    keeper = Housekeeper(store, retention_ns=2 * DAY, min_files=3)
    result = keeper.run_once(latest_ns=T0 + 4 * DAY + DAY // 2)  # old data: a replay of 2024
    assert result.expired_days == 2  # days 0 and 1 end before latest - 2 days
    assert result.merged_files == 9  # the 3 days left had 3 files each
    assert len(store.files("readings")) == 3
    assert store.query("readings").height == 3 * 3 * 3


def test_the_housekeeping_thread_runs_until_stopped(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, fsync=False)
    for _ in range(4):
        store.append("readings", rows(T0))
    keeper = Housekeeper(store, min_files=4, interval=0.05)
    keeper.start()
    deadline = time.monotonic() + 10
    while len(store.files("readings")) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    keeper.stop()
    assert len(store.files("readings")) == 1


def test_a_store_sink_with_housekeeping_keeps_few_files_and_recent_days(tmp_path: Path) -> None:
    frames = [("readings", rows(T0 + day * DAY + k * 10**9)) for day in range(6) for k in range(10)]
    flow = Dataflow("housekeeping")
    stream = op.input("frames", flow, TestingSource(frames, batch_size=1))

    def slowly(item: tuple[str, pl.DataFrame]) -> tuple[str, pl.DataFrame]:
        time.sleep(0.01)
        return item

    sink = LocalStoreSink(
        tmp_path,
        flush_rows=1,  # a file per frame: the worst case for small files
        fsync=False,
        retention=3 * 86_400,
        compact_min_files=4,
        housekeeping_interval=0.05,
    )
    op.output("store", op.map("slowly", stream, slowly), sink)
    run_main(flow)
    store = LocalStore(tmp_path)
    days = sorted(p.name for p in (tmp_path / "readings").iterdir() if p.name.startswith("date="))
    assert days[0] >= "date=2024-10-06"  # the first days went (retention: 3 days before the newest)
    assert len(store.files("readings")) < 60 // 2  # many small files were merged
