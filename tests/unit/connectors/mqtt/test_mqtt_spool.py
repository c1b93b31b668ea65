"""The MQTT source's disk spool: append and read back, segments, torn tails, damage, release."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from dte_stream.connectors.mqtt._ledger import ACK_AGAIN, NEW, REPEAT, AckLedger
from dte_stream.connectors.mqtt._spool import START, Spool, SpoolRecord
from dte_stream.connectors.mqtt._spooled import open_spool
from dte_stream.connectors.mqtt.source import MqttSource
from dte_stream.errors import ConfigError
from dte_stream.spec.mqtt import MqttSourceSpec


def _payload(i: int, size: int) -> bytes:
    return (f"{i:08d}" * (size // 8 + 1)).encode()[:size]


def _records(n: int, start: int = 0, size: int = 20) -> list[SpoolRecord]:
    return [
        SpoolRecord(f"plant/p{i % 7}", _payload(i, size), 1000 + i, i % 65535 + 1, 1, i)
        for i in range(start, start + n)
    ]


def _read_all(spool: Spool, position: tuple[int, int] = START) -> list[SpoolRecord]:
    out = []
    while True:
        records, position, damaged = spool.read(position, 1000)
        assert not damaged
        if not records:
            return out
        out.extend(records)


def test_records_come_back_in_order_across_segments_and_reopening(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1000)
    written = []
    for k in range(20):
        batch = _records(13, 13 * k, size=30 + k)
        spool.append(batch)
        written.extend(batch)
    assert len(list(tmp_path.glob("*.seg"))) > 5
    assert _read_all(spool) == written
    spool.close()
    again = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1000)
    assert again.cut_bytes == 0
    assert _read_all(again) == written
    more = _records(3, 1000)
    again.append(more)
    assert _read_all(again) == written + more
    again.close()


def test_a_read_stops_at_max_records_and_goes_on_from_its_position(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=500)
    written = _records(50)
    for i in range(0, 50, 5):
        spool.append(written[i : i + 5])
    got, position = [], START
    while len(got) < 50:
        records, position, _ = spool.read(position, 7)
        assert 0 < len(records) <= 7
        got.extend(records)
    assert got == written
    assert position == spool.end()
    assert spool.read(position, 7)[0] == []
    spool.close()


def test_a_record_cut_short_by_a_crash_is_cut_off_and_writing_goes_on(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    first = _records(10)
    spool.append(first)
    spool.close()
    [segment] = tmp_path.glob("*.seg")
    torn = _records(1, 99)[0].encode()[:-5]
    with segment.open("ab") as fh:
        fh.write(torn)
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert again.cut_bytes == len(torn)
    later = _records(2, 200)
    again.append(later)
    assert _read_all(again) == first + later
    again.close()


def test_a_damaged_record_is_reported_with_its_bytes_and_the_others_are_read(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=200)
    written = _records(12)
    for i in range(0, 12, 3):
        spool.append(written[i : i + 3])
    spool.close()
    first = min(tmp_path.glob("*.seg"))
    data = bytearray(first.read_bytes())
    data[20] ^= 0xFF  # inside the first record's header
    first.write_bytes(bytes(data))
    again = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=200)
    got, damaged, position = [], [], START
    while True:
        records, position, bad = again.read(position, 100)
        damaged += bad
        if not records and not bad:
            break
        got += records
    assert got == written[1:]
    assert len(damaged) == 1
    assert "CRC" in damaged[0].reason
    assert len(damaged[0].raw) > 20
    again.close()


def test_released_segments_are_deleted_and_free_room(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=4000, segment_bytes=1000)
    while spool.room(600):
        spool.append(_records(10, size=40))
    assert not spool.room(600)
    used = spool.used_bytes
    records, position, _ = spool.read(START, 10_000)
    assert spool.release(position) > 0  # every segment but the active one
    assert spool.used_bytes < used
    assert spool.room(600)
    kept = _read_all(spool)  # a released position reads from the oldest segment kept
    assert kept
    assert kept == records[-len(kept) :]
    assert len(kept) < len(records)
    spool.close()


def test_a_write_that_fails_leaves_the_spool_as_it_was(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(_records(3))
    end = spool.end()
    fd = spool._fd
    spool._fd = os.open(os.devnull, os.O_RDONLY)  # writing fails like a dead disk
    with pytest.raises(OSError, match="Bad file descriptor"):
        spool.append(_records(2, 50))
    os.close(spool._fd)
    spool._fd = fd
    assert spool.end() == end
    spool.append(_records(1, 60))
    assert [r.mid for r in _read_all(spool)] == [1, 2, 3, 61]
    spool.close()


def test_a_restart_knows_the_spooled_messages_the_broker_may_send_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(_records(5))  # mids 1..5, digests 0..4
    spool.close()
    ledger = AckLedger()
    again, position = open_spool(tmp_path, 1 << 20, (0, 0), ledger, "test")
    assert position == (0, 0)
    assert ledger.receive(3, True, 2, connection=1) == ACK_AGAIN  # spooled: drop, acknowledge
    assert ledger.receive(3, True, 99, connection=1) == NEW  # another message with that id
    assert ledger.receive(9, True, 8, connection=1) == NEW
    again.close()
    ledger = AckLedger()
    end_spool, _ = open_spool(tmp_path, 1 << 20, again.end(), ledger, "test")
    assert len(ledger) == 0  # everything committed: nothing read again, nothing to recognise
    end_spool.close()


def test_spooled_messages_are_repeats_until_acknowledged_and_in_the_resume_state() -> None:
    ledger = AckLedger()
    assert ledger.receive(4, False, 40, connection=1) == NEW
    assert ledger.resume_state(due=[]) == []  # held, not durable: a restart must apply it
    ledger.spooled([4])
    assert ledger.receive(4, True, 40, connection=2) == REPEAT
    assert ledger.resume_state(due=[]) == [(4, 40)]


def test_the_spec_takes_sizes_and_refuses_an_ack_mode_the_spool_cannot_keep() -> None:
    base = {"kind": "mqtt", "url": "mqtt://127.0.0.1:1883", "subscriptions": [{"topic": "p/#"}]}
    spec = MqttSourceSpec(**base, spool={"max_bytes": "64MiB"})
    assert spec.spool is not None
    assert spec.spool.max_bytes == 64 * 2**20
    with pytest.raises(ValueError, match="spool: a spooled message is acknowledged once"):
        MqttSourceSpec(**base, ack="on_receive", spool={})
    with pytest.raises(ValueError, match="not a size"):
        MqttSourceSpec(**base, spool={"max_bytes": "lots"})


def test_a_spool_without_a_folder_is_one_clear_error(tmp_path: Path) -> None:
    base = {"kind": "mqtt", "url": "mqtt://127.0.0.1:1883", "subscriptions": [{"topic": "p/#"}]}
    spec = MqttSourceSpec(**base, spool={})
    with pytest.raises(
        ConfigError, match=r"spool needs a folder: set spool.path, or run with --recovery-dir"
    ):
        MqttSource(spec)
    assert MqttSource(spec, recovery_dir=tmp_path).spool_dir == tmp_path / "spool"
    at = MqttSourceSpec(**base, spool={"path": str(tmp_path / "here")})
    assert MqttSource(at, recovery_dir=tmp_path).spool_dir == tmp_path / "here"


def test_the_pump_spools_what_fits_acknowledges_it_and_stops_when_full(tmp_path: Path) -> None:
    from collections import deque

    from dte_stream.connectors.mqtt._spooled import SpoolPump

    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=64 << 10)
    ledger = AckLedger()
    queue: deque[tuple[str, bytes, int, int, int, int]] = deque()
    for i in range(3000):  # about 1.5 MiB: more than the spool holds
        ledger.receive(i % 65535 + 1, False, i, connection=1)
        queue.append((f"plant/p{i % 5}", b"x" * 500, i, i % 65535 + 1, 1, 1))
    due: list[tuple[int, int]] = []
    acked: list[int] = []

    def acknowledge() -> None:
        acked.extend(mid for mid, _ in due)
        due.clear()

    pump = SpoolPump(
        who="test",
        key="c-0",
        queue=queue,
        queue_lock=threading.Lock(),
        spool=spool,
        ledger=ledger,
        due=due,
        acknowledge=acknowledge,
        confirm=lambda: None,
        pending_acks=lambda: bool(due),
    )
    assert pump._spool_some()
    while pump._spool_some():
        pass
    assert pump._full  # the rest waits in the queue, unacknowledged
    assert 0 < len(acked) < 3000
    assert len(queue) == 3000 - len(acked)
    assert spool.used_bytes <= 1 << 20
    records, position, _ = spool.read(START, 10_000)
    assert [r.mid for r in records] == acked  # acknowledged exactly what is on disk, in order
    assert ledger.resume_state(due=[])[: len(acked)] == sorted((m, m - 1) for m in acked)[: len(acked)]
    spool.release(position)  # the dataflow read and committed it all
    assert pump._spool_some()
    assert not pump._full
    spool.close()


def test_the_pump_copes_with_messages_arriving_while_it_copies_the_queue(tmp_path: Path) -> None:
    """paho's thread appends while the pump copies the queue's head (it once raised "deque
    mutated during iteration" and stopped the daemon): every message is spooled, in order."""
    from collections import deque

    from dte_stream.connectors.mqtt._spooled import SpoolPump

    spool = Spool(tmp_path, max_bytes=64 << 20)
    ledger = AckLedger()
    queue: deque[tuple[str, bytes, int, int, int, int]] = deque()
    lock = threading.Lock()
    due: list[tuple[int, int]] = []
    total = 60_000

    def network_thread() -> None:
        for i in range(total):
            with lock:  # as MqttPartition._enqueue appends with a spool
                queue.append((f"plant/p{i % 5}", b"x" * 20, i, i % 65535 + 1, 1, 1))

    pump = SpoolPump(
        who="test",
        key="c-0",
        queue=queue,
        queue_lock=lock,
        spool=spool,
        ledger=ledger,
        due=due,
        acknowledge=due.clear,
        confirm=lambda: None,
        pending_acks=lambda: bool(due),
    )
    appender = threading.Thread(target=network_thread)
    appender.start()
    while appender.is_alive() or queue:
        pump._spool_some()
    appender.join()
    records, _, damaged = spool.read(START, 2 * total)
    assert not damaged
    assert [r.received_ns for r in records] == list(range(total))
    spool.close()
