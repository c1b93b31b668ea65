"""The dead-letter log: input that could not become readings, one JSON object per line.

Each line is :meth:`DeadLetter.to_json_dict` (the raw payload as UTF-8 text or hex, where it
came from, why it was refused, when). The file is opened in append mode and every batch is
one ``write`` system call on a file opened with ``O_APPEND``, under a lock shared by all logs
of the same file in the process: several Bytewax workers can share one file without
interleaving lines, and so can processes on a local Linux file system (not over NFS).

>>> import tempfile
>>> tmp = tempfile.TemporaryDirectory()
>>> log = DeadLetterLog(Path(tmp.name) / "dead-letters.jsonl")
>>> log.append([DeadLetter("mqtt:plant/pump-1", "not JSON", b"\\xff", received_ns=5)])
1
>>> [(d.reason, d.raw) for d in log.read()]
[('not JSON', b'\\xff')]
>>> tmp.cleanup()
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

import orjson

from dte_stream.errors import StoreError
from dte_stream.readings import DeadLetter

__all__ = ["DeadLetterLog"]

_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock_for(path: Path) -> threading.Lock:
    key = os.path.realpath(path)
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.Lock())


def _from_json_dict(record: object) -> DeadLetter:
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    raw_text = record["raw"]
    if not isinstance(raw_text, str):
        raise ValueError("raw is not a string")
    raw = bytes.fromhex(raw_text) if record.get("raw_encoding") == "hex" else raw_text.encode()
    return DeadLetter(
        source=str(record["source"]),
        reason=str(record["reason"]),
        raw=raw,
        received_ns=int(record["received_ns"]),
    )


class DeadLetterLog:
    """Append :class:`~dte_stream.readings.DeadLetter` items to a JSON-lines file; read them back.

    The file and its directory are created on the first append. Appends from several
    threads of one process never interleave (a lock); appends of several processes are
    single ``O_APPEND`` writes, which local file systems keep whole. Lines reach the OS
    before :meth:`append` returns (no fsync: a dead letter is diagnostics, not data).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"DeadLetterLog({str(self.path)!r})"

    def append(self, letters: Iterable[DeadLetter]) -> int:
        """Append ``letters`` in one write to the OS; return how many were written."""
        lines = [orjson.dumps(letter.to_json_dict()) + b"\n" for letter in letters]
        if not lines:
            return 0
        data = b"".join(lines)
        with _lock_for(self.path):
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    view = memoryview(data)
                    while view:  # one write() in practice; loop in case it is partial
                        view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
            except OSError as exc:
                raise StoreError(f"cannot write dead letters to {self.path}: {exc.strerror or exc}") from None
        return len(lines)

    def read(self) -> list[DeadLetter]:
        """All dead letters in the file, oldest first; an absent file gives an empty list.

        A last line without its newline (a writer died mid-write) is skipped; any other
        unreadable line raises :class:`StoreError` naming the file and line number.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        lines = data.split(b"\n")
        complete, _torn = lines[:-1], lines[-1]
        letters = []
        for number, line in enumerate(complete, start=1):
            if not line.strip():
                continue
            try:
                letters.append(_from_json_dict(orjson.loads(line)))
            except (orjson.JSONDecodeError, ValueError, KeyError, TypeError) as exc:
                raise StoreError(f"{self.path} line {number} is not a dead letter: {exc}") from None
        return letters
