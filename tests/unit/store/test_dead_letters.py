"""DeadLetterLog: JSON lines that round-trip, concurrent appends, torn and corrupt lines."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from dte_stream.errors import StoreError
from dte_stream.readings import DeadLetter
from dte_stream.store import DeadLetterLog


def test_round_trip_text_and_binary_payloads(tmp_path: Path) -> None:
    log = DeadLetterLog(tmp_path / "sub" / "dead.jsonl")
    letters = [
        DeadLetter("mqtt:plant/pump-1", "not JSON", b'{"v": 1', received_ns=1),
        DeadLetter("kafka:readings/0@17", "bad UTF-8", b"\xff\x00\n", received_ns=2),
        DeadLetter("file:x.csv:3", "value 'nan' is not finite", "größe,nan".encode(), 3),
    ]
    assert log.append(letters) == 3
    assert log.append([]) == 0
    assert log.read() == letters
    lines = log.path.read_text().splitlines()
    assert len(lines) == 3
    assert json.loads(lines[1]) == {
        "received_ns": 2,
        "source": "kafka:readings/0@17",
        "reason": "bad UTF-8",
        "raw": "ff000a",
        "raw_encoding": "hex",
    }


def test_absent_file_reads_as_empty(tmp_path: Path) -> None:
    assert DeadLetterLog(tmp_path / "none.jsonl").read() == []


def test_appends_from_many_threads_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    payload = b"x" * 10_000  # long lines, so that interleaving would show

    def write(worker: int) -> None:
        log = DeadLetterLog(path)  # one instance per worker, as the sink builds them
        for k in range(50):
            log.append([DeadLetter(f"w{worker}", f"n{k}", payload, k)] * 3)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    letters = DeadLetterLog(path).read()
    assert len(letters) == 4 * 50 * 3
    assert all(letter.raw == payload for letter in letters)


def test_torn_last_line_is_skipped_corrupt_line_is_an_error(tmp_path: Path) -> None:
    log = DeadLetterLog(tmp_path / "dead.jsonl")
    log.append([DeadLetter("s", "r", b"ok", 1)])
    with open(log.path, "ab") as fh:
        fh.write(b'{"received_ns": 2, "sour')  # a writer died here
    assert [d.raw for d in log.read()] == [b"ok"]
    with open(log.path, "ab") as fh:
        fh.write(b"\n")
    with pytest.raises(StoreError, match="line 2 is not a dead letter"):
        log.read()


def test_the_file_rotates_by_size_and_keeps_the_newest(tmp_path: Path) -> None:
    log = DeadLetterLog(tmp_path / "dead.jsonl", max_bytes=2000, keep=2)
    for n in range(60):
        log.append([DeadLetter("test", f"reason {n}", b"x" * 100, received_ns=n)])
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["dead.jsonl", "dead.jsonl.1", "dead.jsonl.2"]
    assert all(p.stat().st_size < 2000 + 300 for p in tmp_path.iterdir())
    newest = [d.received_ns for d in log.read()]
    previous = [d.received_ns for d in DeadLetterLog(log.rotated(1)).read()]
    assert newest[-1] == 59
    assert previous[-1] == newest[0] - 1  # nothing lost between files
