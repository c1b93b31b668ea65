"""The dead-letter log: input that could not become readings, one JSON object per line.

Each line is :meth:`DeadLetter.to_json_dict` (the raw payload as UTF-8 text or hex, where it
came from, why it was refused, when). The file is opened in append mode and every batch is
one ``write`` system call on a file opened with ``O_APPEND``, under a lock shared by all logs
of the same file in the process: several Bytewax workers can share one file without
interleaving lines, and so can processes on a local Linux file system (not over NFS).

The file rotates by size: an append that finds it at ``max_bytes`` or more first renames it
to ``NAME.1`` (``NAME.1`` to ``NAME.2`` and so on; the oldest beyond ``keep`` is deleted), so
a stream of bad input never fills the disk. :meth:`DeadLetterLog.read` reads the current file.

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

__all__ = ["DEFAULT_KEEP", "DEFAULT_MAX_BYTES", "DeadLetterLog"]

#: Size at which the dead-letter file is rotated (bytes), and how many old files are kept.
DEFAULT_MAX_BYTES = 100 * 1024 * 1024
DEFAULT_KEEP = 3

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

    def __init__(
        self, path: Path | str, *, max_bytes: int | None = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = max(keep, 0)

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
                self._rotate_if_full()
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

    def rotated(self, n: int) -> Path:
        """The ``n``-th older file (1 = the most recent rotation)."""
        return self.path.with_name(f"{self.path.name}.{n}")

    def _rotate_if_full(self) -> None:
        """Rename a file at ``max_bytes`` or more out of the way (under the path's lock)."""
        if self.max_bytes is None:
            return
        try:
            if os.stat(self.path).st_size < self.max_bytes:
                return
        except FileNotFoundError:
            return
        if self.keep == 0:
            os.unlink(self.path)
            return
        self.rotated(self.keep).unlink(missing_ok=True)
        for n in range(self.keep - 1, 0, -1):
            older = self.rotated(n)
            if older.exists():
                older.rename(self.rotated(n + 1))
        self.path.rename(self.rotated(1))

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
