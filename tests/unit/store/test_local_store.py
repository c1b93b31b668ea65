"""LocalStore: round trips, filters, limits, day partitions, atomic writes, errors, compaction."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import re
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from store_helpers import DAY0, NS_PER_S, ReadingsFactory, make_readings

from dte_stream.errors import ConfigError, StoreError
from dte_stream.store import READINGS_SCHEMA, LocalStore, day_of_ns
from dte_stream.store import compaction as compaction_module


def _ns(frame: pl.DataFrame) -> list[int]:
    return frame["time"].dt.epoch("ns").to_list()


def _all_files(data_dir: Path) -> list[Path]:
    """Every file in the day partitions, hidden ones included."""
    return sorted(p for p in data_dir.glob("*/date=*/*") if p.is_file())


# ------------------------------------------------------------------------------- round trip


def test_round_trip_keeps_every_column_and_nanosecond(store: LocalStore, readings: ReadingsFactory) -> None:
    frame = readings(100, start_ns=DAY0 + 123_456_789)
    store.append("readings", frame)
    out = store.query("readings")
    assert out.schema == READINGS_SCHEMA
    expected = frame.with_columns(pl.col("time").cast(pl.Datetime("ns", "UTC")))
    assert_frame_equal(out, expected.sort("time", "twin_id", "channel"))
    assert _ns(out)[0] == DAY0 + 123_456_789


def test_files_are_day_partitioned_zstd_parquet(store: LocalStore, data_dir: Path) -> None:
    paths = store.append("readings", make_readings(10))
    assert len(paths) == 1
    path = paths[0]
    assert path.parent == data_dir / "readings" / "date=2026-01-02"
    assert path.name.startswith(f"part-{store.writer_id}-")
    assert path.suffix == ".parquet"
    # the file is plain Parquet that any polars can read, with the table schema
    assert pl.read_parquet_schema(path) == dict(READINGS_SCHEMA)
    assert path.read_bytes()[:4] == b"PAR1"


def test_append_accepts_tz_aware_datetimes_and_fills_missing_columns(store: LocalStore) -> None:
    plus_two = timezone(timedelta(hours=2))
    frame = pl.DataFrame(
        {
            "time": [datetime(2026, 1, 2, 2, 0, tzinfo=plus_two)],
            "twin_id": ["gauge-1"],
            "channel": ["level"],
            "value": [3],  # an int column is cast to Float64
        }
    )
    store.append("readings", frame)
    out = store.query("readings")
    assert _ns(out) == [DAY0]
    row = out.row(0, named=True)
    assert row["value"] == 3.0
    assert row["twin_type"] is None
    assert row["estimate"] is None


def test_append_refuses_bad_frames(store: LocalStore) -> None:
    good = {"time": [DAY0], "twin_id": ["a"], "channel": ["c"], "value": [1.0]}
    with pytest.raises(StoreError, match=r"unknown column.*vlaue"):
        store.append("readings", pl.DataFrame({**good, "vlaue": [1.0]}))
    with pytest.raises(StoreError, match="no column twin_id"):
        store.append("readings", pl.DataFrame({"time": [DAY0], "value": [1.0]}))
    with pytest.raises(StoreError, match="naive datetime"):
        store.append("readings", pl.DataFrame({**good, "time": [datetime(2026, 1, 2)]}))
    with pytest.raises(StoreError, match="null"):
        store.append("readings", pl.DataFrame({**good, "twin_id": [None]}))
    with pytest.raises(StoreError, match="cannot convert"):
        store.append("readings", pl.DataFrame({**good, "value": ["high"]}))
    with pytest.raises(StoreError, match="invalid table name"):
        store.append("../etc", pl.DataFrame(good))
    assert not store.data_dir.exists()


def test_empty_frame_writes_nothing(store: LocalStore) -> None:
    assert store.append("readings", make_readings(0)) == []
    assert not store.data_dir.exists()


def test_other_tables_take_any_columns(store: LocalStore) -> None:
    alerts = pl.DataFrame(
        {"time": [DAY0, DAY0 + 1], "twin_id": ["a", "b"], "rule": ["hot", "cold"], "level": [2, 1]}
    )
    store.append("events", alerts)
    out = store.query("events", twin_id="b")
    assert out.columns == ["time", "twin_id", "rule", "level"]
    assert out["rule"].to_list() == ["cold"]
    assert store.tables() == ["events"]
    with pytest.raises(StoreError, match="no channel column"):
        store.query("events", channel="temp")


# ------------------------------------------------------------------------------- filters, limits


def test_filters(store: LocalStore) -> None:
    store.append("readings", make_readings(40))  # 1 s apart, twins alternate, channels in pairs
    out = store.query("readings", twin_id="pump-1", channel="flow")
    assert set(out["twin_id"]) == {"pump-1"}
    assert set(out["channel"]) == {"flow"}
    assert out.height == 10
    # since is inclusive, until exclusive
    out = store.query("readings", since_ns=DAY0 + 5 * NS_PER_S, until_ns=DAY0 + 8 * NS_PER_S)
    assert _ns(out) == [DAY0 + k * NS_PER_S for k in (5, 6, 7)]
    assert store.query("readings", twin_id="nobody").height == 0
    assert store.query("readings", twin_id="nobody").schema == READINGS_SCHEMA


def test_limit_returns_newest_rows_in_ascending_order(store: LocalStore) -> None:
    # written newest first, in two files, to show that order on disk does not matter
    store.append("readings", make_readings(10, start_ns=DAY0 + 10 * NS_PER_S))
    store.append("readings", make_readings(10, start_ns=DAY0))
    out = store.query("readings", limit=3)
    assert _ns(out) == [DAY0 + k * NS_PER_S for k in (17, 18, 19)]
    assert store.query("readings", limit=0).height == 0
    assert store.query("readings", limit=1000).height == 20
    assert store.query("readings", twin_id="pump-2", limit=2)["twin_id"].to_list() == [
        "pump-2",
        "pump-2",
    ]
    with pytest.raises(ConfigError, match="limit must be >= 0"):
        store.query("readings", limit=-1)
    with pytest.raises(ConfigError, match="before its end"):
        store.query("readings", since_ns=DAY0 + 5, until_ns=DAY0 + 5)


def test_equal_times_are_ordered_by_twin_and_channel(store: LocalStore) -> None:
    frame = pl.DataFrame(
        {
            "time": [DAY0] * 4,
            "twin_id": ["b", "a", "b", "a"],
            "channel": ["y", "y", "x", "x"],
            "value": [1.0, 2.0, 3.0, 4.0],
        }
    )
    store.append("readings", frame)
    out = store.query("readings")
    assert list(zip(out["twin_id"], out["channel"], strict=True)) == [
        ("a", "x"),
        ("a", "y"),
        ("b", "x"),
        ("b", "y"),
    ]


# ------------------------------------------------------------------------------- day partitions


def test_frames_across_midnight_are_split_by_utc_day(store: LocalStore, data_dir: Path) -> None:
    # 10 readings a minute apart, from 23:55 on Jan 1 to 00:04 on Jan 2
    frame = make_readings(10, start_ns=DAY0 - 5 * 60 * NS_PER_S, step_ns=60 * NS_PER_S)
    paths = store.append("readings", frame)
    assert [p.parent.name for p in paths] == ["date=2026-01-01", "date=2026-01-02"]
    assert pl.read_parquet(paths[0]).height == 5
    assert pl.read_parquet(paths[1]).height == 5
    # day pruning: a range inside Jan 2 only lists Jan 2 files; the end is exclusive
    assert store.files("readings", since_ns=DAY0) == [paths[1]]
    assert store.files("readings", until_ns=DAY0) == [paths[0]]
    assert store.files("readings", since_ns=DAY0 - 1, until_ns=DAY0 + 1) == paths
    assert store.query("readings", since_ns=DAY0).height == 5
    assert store.query("readings").height == 10


def test_day_of_ns() -> None:
    assert day_of_ns(DAY0).isoformat() == "2026-01-02"
    assert day_of_ns(DAY0 - 1).isoformat() == "2026-01-01"
    assert day_of_ns(0).isoformat() == "1970-01-01"


# ------------------------------------------------------------------------------- atomic writes


def test_appends_leave_no_temp_files(data_dir: Path) -> None:
    store = LocalStore(data_dir)  # with fsync, as in production
    for k in range(5):
        store.append("readings", make_readings(50, start_ns=DAY0 + k * 100 * NS_PER_S))
    files = _all_files(data_dir)
    assert len(files) == 5
    assert all(f.name.startswith("part-") and f.suffix == ".parquet" for f in files)
    assert len({f.name for f in files}) == 5


def test_failed_write_leaves_nothing_behind(
    store: LocalStore, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_then_fail(self: pl.DataFrame, file: Path, **kwargs: object) -> None:
        Path(file).write_bytes(b"PAR1 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", half_then_fail)
    with pytest.raises(StoreError, match=r"cannot write .*No space left on device"):
        store.append("readings", make_readings(10))
    assert _all_files(data_dir) == []


def test_readers_ignore_temp_files_of_writers_in_progress(store: LocalStore, data_dir: Path) -> None:
    store.append("readings", make_readings(10))
    day_dir = data_dir / "readings" / "date=2026-01-02"
    (day_dir / ".part-other-00000001.parquet.1234abcd.tmp").write_bytes(b"PAR1 being written")
    assert store.query("readings").height == 10


def test_two_writers_in_threads_never_collide(data_dir: Path) -> None:
    stores = [LocalStore(data_dir, fsync=False) for _ in range(2)]
    assert stores[0].writer_id != stores[1].writer_id

    def write(store: LocalStore, offset: int) -> None:
        for k in range(20):
            store.append("readings", make_readings(25, start_ns=DAY0 + offset + k * NS_PER_S))

    threads = [threading.Thread(target=write, args=(s, i)) for i, s in enumerate(stores)]
    # and two threads sharing one store
    threads += [threading.Thread(target=write, args=(stores[0], 10 + i)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(_all_files(data_dir)) == 80
    assert stores[1].query("readings").height == 80 * 25


def _write_in_process(data_dir: str, offset: int) -> None:
    store = LocalStore(Path(data_dir), fsync=False)
    for k in range(10):
        store.append("readings", make_readings(20, start_ns=DAY0 + offset + k * NS_PER_S))


def test_two_writer_processes_never_collide(data_dir: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_in_process, args=(str(data_dir), i)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    files = _all_files(data_dir)
    assert len(files) == 20
    assert len({f.name.split("-")[1] for f in files}) == 2  # two writer ids
    assert LocalStore(data_dir).query("readings").height == 400


# ------------------------------------------------------------------------------- errors


def test_missing_or_empty_data_dir_says_how_to_get_data(tmp_path: Path) -> None:
    for data_dir in (tmp_path / "absent", tmp_path):
        with pytest.raises(StoreError, match=r"no data in .*dte-stream demo --data-dir"):
            LocalStore(data_dir).query("readings")


def test_unknown_table_lists_existing_tables(store: LocalStore) -> None:
    store.append("readings", make_readings(3))
    with pytest.raises(StoreError, match=r"no table 'alerts' .*tables there: readings"):
        store.query("alerts")
    with pytest.raises(StoreError, match="invalid table name"):
        store.query("Readings")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_file_gives_store_error_naming_it(store: LocalStore, damage: str) -> None:
    store.append("readings", make_readings(200, seed=1))
    bad = store.append("readings", make_readings(200, start_ns=DAY0 + 10**12, seed=2))[0]
    data = bad.read_bytes()
    if damage == "garbage":
        bad.write_bytes(b"this is not parquet at all")
    elif damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    else:  # what a crash can leave on a file system that lost the data but kept the rename
        bad.write_bytes(b"")
    with pytest.raises(StoreError, match=re.escape(bad.name)):
        store.query("readings")
    with pytest.raises(StoreError, match=re.escape(bad.name)):
        store.twins()


def test_file_with_wrong_schema_is_named(store: LocalStore, data_dir: Path) -> None:
    store.append("readings", make_readings(5))
    odd = data_dir / "readings" / "date=2026-01-02" / "part-foreign-00000001.parquet"
    make_readings(5).with_columns(pl.col("value").cast(pl.String)).write_parquet(odd)
    with pytest.raises(StoreError, match=re.escape("part-foreign-00000001.parquet")):
        store.query("readings")


# ------------------------------------------------------------------------------- twins


def test_twins_summarises_each_twin(store: LocalStore) -> None:
    store.append("readings", make_readings(10, twins=("a", "b")))
    store.append("readings", make_readings(4, start_ns=DAY0 + 100 * NS_PER_S, twins=("c",)))
    summary = store.twins()
    assert summary.columns == ["twin_id", "twin_type", "rows", "first_time", "last_time"]
    assert summary["twin_id"].to_list() == ["a", "b", "c"]
    assert summary["rows"].to_list() == [5, 5, 4]
    assert summary["twin_type"].to_list() == ["pump"] * 3
    c = summary.row(2, named=True)
    assert c["first_time"] == datetime(2026, 1, 2, 0, 1, 40, tzinfo=UTC)
    assert c["last_time"] == datetime(2026, 1, 2, 0, 1, 43, tzinfo=UTC)


# ------------------------------------------------------------------------------- compaction


def test_compact_merges_the_files_of_each_day(store: LocalStore, data_dir: Path) -> None:
    for k in range(6):  # three files on Jan 1, three on Jan 2, written out of order
        start = DAY0 + (-1) ** k * (k + 1) * 1000 * NS_PER_S
        store.append("readings", make_readings(30, start_ns=start, seed=k))
    before = store.query("readings")
    assert store.compact("readings") == 6
    files = _all_files(data_dir)
    assert [f.parent.name for f in files] == ["date=2026-01-01", "date=2026-01-02"]
    assert_frame_equal(store.query("readings"), before)
    merged = pl.read_parquet(files[1])
    assert merged["time"].is_sorted()
    assert store.compact("readings") == 0  # nothing left to merge


def test_a_crash_during_compaction_never_shows_duplicates(
    store: LocalStore, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k in range(3):
        store.append("readings", make_readings(10, start_ns=DAY0 + k * 100 * NS_PER_S))
    # crash after the merged file is in place but before the old files are deleted
    monkeypatch.setattr(compaction_module, "finish_journals", lambda day_dir: None)
    store.compact("readings")
    day_dir = data_dir / "readings" / "date=2026-01-02"
    assert len(list(day_dir.glob("part-*.parquet"))) == 4
    assert len(list(day_dir.glob(".compact-*.json"))) == 1
    assert store.query("readings").height == 30  # the journal hides the replaced files
    monkeypatch.undo()
    store.compact("readings")  # the next run finishes the job
    assert [f.name.startswith("part-") for f in _all_files(data_dir)] == [True]
    assert store.query("readings").height == 30


def test_crash_before_the_merged_file_keeps_the_old_files(store: LocalStore, data_dir: Path) -> None:
    for k in range(2):
        store.append("readings", make_readings(10, start_ns=DAY0 + k * 100 * NS_PER_S))
    day_dir = data_dir / "readings" / "date=2026-01-02"
    names = sorted(p.name for p in day_dir.iterdir())
    journal = {"merged": "part-x-00000009.parquet", "replaces": names}
    (day_dir / ".compact-part-x-00000009.json").write_text(json.dumps(journal))
    assert store.query("readings").height == 20


def test_only_one_compaction_at_a_time(store: LocalStore, data_dir: Path) -> None:
    store.append("readings", make_readings(5))
    with open(data_dir / "readings" / ".compact.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(StoreError, match="another compaction"):
            store.compact("readings")


def test_query_lists_again_when_compaction_replaced_files(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k in range(3):
        store.append("readings", make_readings(10, start_ns=DAY0 + k * 100 * NS_PER_S))
    real_files = LocalStore.files
    calls: list[int] = []

    def files_then_compact(self: LocalStore, table: str, **kwargs: int | None) -> list[Path]:
        listed = real_files(self, table, **kwargs)
        if not calls:
            calls.append(1)
            self.compact(table)  # the listed files vanish before the scan
        return listed

    monkeypatch.setattr(LocalStore, "files", files_then_compact)
    assert store.query("readings").height == 30


def test_bad_writer_id_is_refused(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="invalid writer id"):
        LocalStore(data_dir, writer_id="a/b")
