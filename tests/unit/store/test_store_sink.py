"""LocalStoreSink and DeadLetterSink in real Bytewax dataflows (run_main, cluster_main)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import polars as pl
import pytest
from bytewax.dataflow import Dataflow
from bytewax.errors import BytewaxRuntimeError
from bytewax.testing import TestingSource, cluster_main, run_main
from store_helpers import DAY0, NS_PER_S, make_readings

from dte_stream.errors import ConfigError, StoreError
from dte_stream.readings import DeadLetter
from dte_stream.store import DeadLetterLog, LocalStore
from dte_stream.store.sink import DeadLetterSink, LocalStoreSink

Item = tuple[str, pl.DataFrame]


def _frames(count: int, rows: int) -> list[Item]:
    return [
        ("readings", make_readings(rows, start_ns=DAY0 + k * rows * NS_PER_S, seed=k)) for k in range(count)
    ]


def _run(items: list[object], sink: LocalStoreSink) -> None:
    flow = Dataflow("sink_test")
    stream = op.input("frames", flow, TestingSource(items))
    op.output("local_store", stream, sink)
    run_main(flow)


def _files(data_dir: Path) -> list[Path]:
    return sorted(data_dir.glob("*/date=*/*"))


def test_rows_are_flushed_on_close(tmp_path: Path) -> None:
    items = _frames(5, 10)
    _run(list(items), LocalStoreSink(tmp_path, flush_rows=10**6, flush_seconds=3600, fsync=False))
    files = _files(tmp_path)
    assert len(files) == 1  # everything buffered, one file written on close
    out = LocalStore(tmp_path).query("readings")
    assert out.height == 50
    assert out["time"].is_sorted()


def test_rows_are_flushed_by_size(tmp_path: Path) -> None:
    _run(list(_frames(7, 4)), LocalStoreSink(tmp_path, flush_rows=10, flush_seconds=3600))
    files = _files(tmp_path)
    heights = [pl.read_parquet(f).height for f in files]
    assert sum(heights) == 28
    assert len(files) >= 2
    # every flush but the last (on close) waited for at least flush_rows rows
    by_age = sorted(files, key=lambda f: f.name)
    assert all(pl.read_parquet(f).height >= 10 for f in by_age[:-1])


def test_rows_are_flushed_by_age_while_the_stream_is_idle(tmp_path: Path) -> None:
    seen_on_disk: list[int] = []

    def look(item: Item) -> Item:
        seen_on_disk.append(len(_files(tmp_path)))
        return item

    first, second = _frames(2, 3)
    flow = Dataflow("sink_age")
    source = TestingSource([first, TestingSource.PAUSE(timedelta(seconds=0.8)), second])
    stream = op.map("look", op.input("frames", flow, source), look)
    op.output("local_store", stream, LocalStoreSink(tmp_path, flush_rows=10**6, flush_seconds=0.2))
    run_main(flow)
    # the first frame was on disk before the second arrived: the timer wrote it, no batch did
    assert seen_on_disk == [0, 1]
    files = _files(tmp_path)
    assert [pl.read_parquet(f).height for f in files] == [3, 3]


def test_frames_go_to_their_tables(tmp_path: Path) -> None:
    alerts = pl.DataFrame({"time": [DAY0], "twin_id": ["pump-1"], "rule": ["too hot"]})
    items: list[object] = [*_frames(2, 5), ("alerts", alerts), ("readings", make_readings(0))]
    _run(items, LocalStoreSink(tmp_path))
    store = LocalStore(tmp_path)
    assert store.tables() == ["alerts", "readings"]
    assert store.query("readings").height == 10
    assert store.query("alerts")["rule"].to_list() == ["too hot"]


def test_every_worker_writes_its_own_files(tmp_path: Path) -> None:
    flow = Dataflow("sink_workers")
    stream = op.input("frames", flow, TestingSource(_frames(20, 5)))
    stream = op.redistribute("spread", stream)
    op.output("local_store", stream, LocalStoreSink(tmp_path, fsync=False))
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    files = _files(tmp_path)
    writers = {f.name.split("-")[1] for f in files}
    assert len(writers) == len(files) == 2
    assert {w.split("_")[1] for w in writers} == {"w0", "w1"}
    assert LocalStore(tmp_path).query("readings").height == 100


def test_bad_items_stop_the_dataflow_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BytewaxRuntimeError) as info:
        _run([("readings", {"time": 1})], LocalStoreSink(tmp_path))
    assert isinstance(info.value.__cause__, StoreError)
    assert "must be a polars.DataFrame or a columnar batch, got dict" in str(info.value.__cause__)
    with pytest.raises(BytewaxRuntimeError) as info:
        _run(["readings"], LocalStoreSink(tmp_path))
    assert "(table, polars.DataFrame) tuples" in str(info.value.__cause__)


def test_a_failed_timed_flush_is_raised_on_the_dataflow_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    partition = LocalStoreSink(tmp_path, flush_seconds=0.05).build("local_store", 0, 1)

    def disk_full(self: LocalStore, table: str, frame: pl.DataFrame) -> list[Path]:
        raise StoreError("cannot write x: No space left on device")

    monkeypatch.setattr(LocalStore, "append", disk_full)
    partition.write_batch(_frames(1, 3))
    deadline = time.monotonic() + 5
    while partition._error is None and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(StoreError, match="No space left"):
        partition.write_batch(_frames(1, 3))


def test_timer_thread_ends_on_close_and_when_the_partition_is_dropped(tmp_path: Path) -> None:
    def timers() -> int:
        return sum(t.name == "timer_test-flush" for t in threading.enumerate())

    sink = LocalStoreSink(tmp_path, flush_seconds=0.05)
    partition = sink.build("timer_test", 0, 1)
    assert timers() == 1
    partition.close()
    assert timers() == 0
    dropped = sink.build("timer_test", 1, 1)  # as when an aborted dataflow drops it
    assert timers() == 1
    del dropped
    deadline = time.monotonic() + 5
    while timers() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert timers() == 0


def test_sink_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="flush_rows"):
        LocalStoreSink("x", flush_rows=0)
    with pytest.raises(ConfigError, match="flush_seconds"):
        LocalStoreSink("x", flush_seconds=0)


def test_dead_letter_sink_appends_every_letter(tmp_path: Path) -> None:
    path = tmp_path / "dead_letters.jsonl"
    letters = [DeadLetter("mqtt:t", f"reason {k}", f"payload {k}".encode(), k) for k in range(30)]
    flow = Dataflow("dead_letters")
    stream = op.redistribute("spread", op.input("letters", flow, TestingSource(letters)))
    op.output("dead_letters", stream, DeadLetterSink(path))
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert sorted(DeadLetterLog(path).read(), key=lambda d: d.received_ns) == letters


def test_dead_letter_sink_refuses_other_items(tmp_path: Path) -> None:
    flow = Dataflow("dead_letters_bad")
    stream = op.input("letters", flow, TestingSource(["not a dead letter"]))
    op.output("dead_letters", stream, DeadLetterSink(tmp_path / "d.jsonl"))
    with pytest.raises(BytewaxRuntimeError) as info:
        run_main(flow)
    assert "DeadLetterSink items must be DeadLetter, got str" in str(info.value.__cause__)
