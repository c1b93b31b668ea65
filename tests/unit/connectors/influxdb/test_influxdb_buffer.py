"""LineBuffer: batches by size and age, blocks when full, drops the oldest only after max_block."""

from __future__ import annotations

import threading
import time

import polars as pl
import pytest

from dte_stream.connectors.influxdb import InfluxDBError, LineBuffer


def _lines(start: int, count: int) -> pl.Series:
    return pl.Series([f"l{i}" for i in range(start, start + count)], dtype=pl.String)


def _flat(chunks: list[pl.Series] | None) -> list[str]:
    assert chunks is not None
    return [line for chunk in chunks for line in chunk.to_list()]


def test_take_splits_chunks_into_batches_of_max_lines() -> None:
    buffer = LineBuffer(capacity=100, max_block=None)
    buffer.put(_lines(0, 3))
    buffer.put(_lines(3, 4))
    assert _flat(buffer.take(max_lines=5, max_age=60)) == ["l0", "l1", "l2", "l3", "l4"]
    assert len(buffer) == 2
    buffer.close()
    assert _flat(buffer.take(max_lines=5, max_age=60)) == ["l5", "l6"]  # closed: no waiting
    assert buffer.take(max_lines=5, max_age=60) is None


def test_take_waits_for_the_oldest_line_to_age() -> None:
    buffer = LineBuffer(capacity=100, max_block=None)
    buffer.put(_lines(0, 2))
    start = time.monotonic()
    assert _flat(buffer.take(max_lines=10, max_age=0.2)) == ["l0", "l1"]
    assert 0.15 <= time.monotonic() - start < 2.0


def test_put_blocks_while_full_until_the_writer_takes() -> None:
    buffer = LineBuffer(capacity=4, max_block=None)
    buffer.put(_lines(0, 4))
    taken: list[str] = []

    def writer() -> None:
        time.sleep(0.3)
        taken.extend(_flat(buffer.take(max_lines=4, max_age=0)))

    thread = threading.Thread(target=writer)
    thread.start()
    result = buffer.put(_lines(4, 2))
    thread.join()
    assert result.dropped == 0
    assert result.blocked >= 0.2
    assert taken == ["l0", "l1", "l2", "l3"]
    assert len(buffer) == 2


def test_a_chunk_larger_than_the_buffer_goes_in_piece_by_piece() -> None:
    buffer = LineBuffer(capacity=3, max_block=None)
    taken: list[str] = []

    def writer() -> None:
        while len(taken) < 10:
            taken.extend(_flat(buffer.take(max_lines=3, max_age=0)))

    thread = threading.Thread(target=writer)
    thread.start()
    assert buffer.put(_lines(0, 10)).dropped == 0
    thread.join(5)
    assert taken == [f"l{i}" for i in range(10)]


def test_no_drop_while_the_server_answers() -> None:
    buffer = LineBuffer(capacity=2, max_block=0.0)
    buffer.put(_lines(0, 2))
    buffer.mark_failure()
    buffer.mark_success()  # the outage ended: a full buffer blocks again

    def writer() -> None:
        time.sleep(0.2)
        buffer.take(max_lines=2, max_age=0)

    thread = threading.Thread(target=writer)
    thread.start()
    assert buffer.put(_lines(2, 1)).dropped == 0
    thread.join()


def test_drops_the_oldest_after_max_block_of_outage() -> None:
    buffer = LineBuffer(capacity=4, max_block=0.3)
    buffer.put(_lines(0, 4))
    buffer.mark_failure()
    start = time.monotonic()
    result = buffer.put(_lines(4, 2))
    assert 0.25 <= time.monotonic() - start < 2.0  # it blocked until max_block passed
    assert result.dropped == 2
    # the outage goes on: the next put drops at once
    start = time.monotonic()
    assert buffer.put(_lines(6, 3)).dropped == 3
    assert time.monotonic() - start < 0.2
    buffer.close()
    assert _flat(buffer.take(max_lines=10, max_age=0)) == ["l5", "l6", "l7", "l8"]  # the newest


def test_never_drops_without_max_block() -> None:
    buffer = LineBuffer(capacity=1, max_block=None)
    buffer.put(_lines(0, 1))
    buffer.mark_failure()
    thread = threading.Thread(target=lambda: (time.sleep(0.7), buffer.take(max_lines=1, max_age=0)))
    thread.start()
    result = buffer.put(_lines(1, 1))
    thread.join()
    assert result.dropped == 0
    assert result.blocked >= 0.5


def test_abort_fail_and_drain() -> None:
    buffer = LineBuffer(capacity=10, max_block=None)
    buffer.put(_lines(0, 3))
    buffer.abort()
    assert buffer.take(max_lines=10, max_age=60) is None
    assert [s.to_list() for s in buffer.drain()] == [["l0", "l1", "l2"]]
    with pytest.raises(InfluxDBError, match="closed"):
        buffer.put(_lines(0, 1))
    failed = LineBuffer(capacity=10, max_block=None)
    failed.fail(InfluxDBError("boom"))
    with pytest.raises(InfluxDBError, match="boom"):
        failed.put(_lines(0, 1))


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        LineBuffer(capacity=0, max_block=None)
