"""The MQTT source's disk spool: append-only segment files, one fsync per appended batch.

MQTT cannot be read again: a message the broker handed over and got a PUBACK for exists only
here. While a sink holds the dataflow (InfluxDB down), the broker's queue for the session is
all that keeps new readings, and it is bounded (Mosquitto's ``max_queued_messages``, 1,000 by
default), past which the broker drops messages without telling anyone. With a spool, the
source keeps receiving: each message is written here, and acknowledged to the broker only
after the fsync that made it durable. The dataflow reads the spool in order; the position
of the first record not yet emitted is the source's resume state, snapshotted with the twin
state, so a restart reads on from there (it drains the spool first) and applies every record
once.

Layout: ``<dir>/<16-digit number>.seg`` files, written in order; a segment is closed once it
passes ``segment_bytes`` and deleted as a whole once every record in it was emitted in a
committed epoch (:meth:`Spool.release`). A record::

    u32 length of what follows the CRC | u32 CRC-32 of it |
    u16 message id | u8 QoS | u8 0 | i64 receive time (ns) | u32 digest | u16 topic length |
    topic | payload

After a crash, a record cut short at the end of the newest segment was never acknowledged (the
PUBACK follows the fsync): :meth:`Spool.open` cuts it off, and the broker sends it again. A
record whose CRC does not match anywhere else (a damaged disk) is returned as damaged: the
source makes it a dead letter and counts it as dropped.

>>> import tempfile
>>> spool = Spool(Path(tempfile.mkdtemp()), max_bytes=1 << 20)
>>> end = spool.append([SpoolRecord("plant/p1", b'{"value": 1}', 5, 7, 1, 0xABC)])
>>> records, position, damaged = spool.read(START, 10)
>>> [(r.topic, r.payload, r.mid) for r in records], position == end, damaged
([('plant/p1', b'{"value": 1}', 7)], True, [])
>>> spool.close()
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RECORD_OVERHEAD", "START", "Damaged", "Position", "Spool", "SpoolRecord"]

#: A place in the spool: (segment number, byte offset in it).
Position = tuple[int, int]
#: Where an empty spool starts.
START: Position = (0, 0)

_FRAME = struct.Struct("<II")  # length of the rest, CRC-32 of the rest
_HEAD = struct.Struct("<HBBqIH")  # mid, qos, 0, receive time ns, digest, topic length
#: Bytes of a record besides its topic and payload.
RECORD_OVERHEAD = _FRAME.size + _HEAD.size
_SUFFIX = ".seg"
#: Most bytes one read takes from a segment.
_READ_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One received message as the spool keeps it."""

    topic: str
    payload: bytes
    received_ns: int
    mid: int
    qos: int
    digest: int

    def encode(self) -> bytes:
        topic = self.topic.encode("utf-8", "surrogatepass")
        rest = (
            _HEAD.pack(self.mid, self.qos, 0, self.received_ns, self.digest, len(topic))
            + topic
            + self.payload
        )
        return _FRAME.pack(len(rest), zlib.crc32(rest)) + rest


@dataclass(frozen=True, slots=True)
class Damaged:
    """Bytes of the spool that do not hold a valid record: where, why, what they were."""

    where: str
    reason: str
    raw: bytes


def _name(segment: int) -> str:
    return f"{segment:016d}{_SUFFIX}"


class Spool:
    """Segment files in ``path``, at most about ``max_bytes`` of them.

    :meth:`append` (one writer thread) writes and fsyncs; :meth:`read` (the dataflow thread)
    sees only what an fsync made durable; :meth:`release` deletes segments that were read in
    a committed epoch. :meth:`room` says whether another ``n`` bytes fit.
    """

    def __init__(self, path: Path, max_bytes: int, segment_bytes: int | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or max(64 << 10, min(64 << 20, max_bytes // 8))
        path.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._sizes: dict[int, int] = {}  # segment -> durable size
        for file in path.glob("*" + _SUFFIX):
            if file.stem.isdigit():
                self._sizes[int(file.stem)] = file.stat().st_size
        self.cut_bytes = 0
        if self._sizes:
            self.cut_bytes = self._cut_torn_tail(max(self._sizes))
        else:
            self._sizes[0] = 0
            self._create(0)
        self._active = max(self._sizes)
        self._fd = os.open(self.path / _name(self._active), os.O_WRONLY | os.O_APPEND)
        self._readers: dict[int, int] = {}  # segment -> read-only fd

    # -- writer ----------------------------------------------------------------------------

    def append(self, records: list[SpoolRecord], on_durable: Callable[[], None] | None = None) -> Position:
        """Write ``records`` after the others and fsync; the position after the last one.

        ``on_durable`` is called after the fsync and before :meth:`read` can see the records.
        An OSError (disk full, I/O error) leaves the spool as it was before the call.
        """
        data = b"".join(r.encode() for r in records)
        if self._sizes[self._active] >= self.segment_bytes:
            self._roll()
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, data[written:])
            os.fsync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):  # the error that matters is the one raised
                os.truncate(self.path / _name(self._active), self._sizes[self._active])
            raise
        if on_durable is not None:
            on_durable()
        with self._lock:
            self._sizes[self._active] += len(data)
            return self._active, self._sizes[self._active]

    def room(self, extra: int) -> bool:
        """True when ``extra`` more bytes keep the spool within ``max_bytes`` (or it is empty)."""
        with self._lock:
            used = sum(self._sizes.values())
        return used == 0 or used + extra <= self.max_bytes

    def free_bytes(self) -> int:
        """Bytes that still fit within ``max_bytes`` (negative when over it)."""
        with self._lock:
            return self.max_bytes - sum(self._sizes.values())

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

    def _roll(self) -> None:
        os.close(self._fd)
        segment = self._active + 1
        self._create(segment)
        with self._lock:
            self._sizes[segment] = 0
            self._active = segment
        self._fd = os.open(self.path / _name(segment), os.O_WRONLY | os.O_APPEND)

    def _create(self, segment: int) -> None:
        fd = os.open(self.path / _name(segment), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        dir_fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the new name is durable before a record in it is acknowledged
        finally:
            os.close(dir_fd)

    def _cut_torn_tail(self, segment: int) -> int:
        """Cut a record cut short by a crash off the newest segment; the bytes cut."""
        file = self.path / _name(segment)
        data = file.read_bytes()
        good = 0
        while good + _FRAME.size <= len(data):
            length, crc = _FRAME.unpack_from(data, good)
            end = good + _FRAME.size + length
            if end > len(data) or zlib.crc32(data[good + _FRAME.size : end]) != crc:
                break
            good = end
        if good < len(data):
            os.truncate(file, good)
            self._sizes[segment] = good
        return len(data) - good

    # -- reader ----------------------------------------------------------------------------

    def first(self) -> Position:
        """The oldest position still in the spool."""
        with self._lock:
            return min(self._sizes), 0

    def end(self) -> Position:
        """The position after the last durable record."""
        with self._lock:
            return self._active, self._sizes[self._active]

    def read(self, position: Position, max_records: int) -> tuple[list[SpoolRecord], Position, list[Damaged]]:
        """Up to ``max_records`` durable records from ``position``; the position after them.

        A position before the oldest segment (released, or never there) reads from the oldest.
        """
        segment, offset = position
        with self._lock:
            oldest = min(self._sizes)
            if segment < oldest:
                segment, offset = oldest, 0
            size = self._sizes.get(segment)
            newest = self._active
        records: list[SpoolRecord] = []
        damaged: list[Damaged] = []
        while size is not None and len(records) < max_records:
            if offset >= size:
                if segment >= newest:
                    break
                segment, offset = segment + 1, 0
                with self._lock:
                    size = self._sizes.get(segment)
                continue
            fd = self._reader(segment)
            want = _READ_BYTES
            if size - offset >= _FRAME.size:  # a record longer than one read: read all of it
                want = max(want, _FRAME.size + _FRAME.unpack(os.pread(fd, _FRAME.size, offset))[0])
            data = os.pread(fd, min(size - offset, want), offset)
            used = self._parse(data, segment, offset, size, max_records - len(records), records, damaged)
            if used <= 0:  # a length past the segment's end: the framing is damaged, the rest lost
                damaged.append(Damaged(f"{_name(segment)}@{offset}", "spool record cannot be framed", b""))
                offset = size
            else:
                offset += used
        return records, (segment, offset), damaged

    @staticmethod
    def _parse(
        data: bytes,
        segment: int,
        base: int,
        size: int,
        limit: int,
        records: list[SpoolRecord],
        damaged: list[Damaged],
    ) -> int:
        """Records from ``data`` (read at ``base`` of a segment of ``size`` durable bytes).

        The bytes used; 0 when the first record claims to end past ``size`` (a segment holds
        whole records only, so its frame is damaged).
        """
        pos = 0
        count = 0
        frame, head = _FRAME, _HEAD
        while count < limit and pos + frame.size <= len(data):
            length, crc = frame.unpack_from(data, pos)
            start, end = pos + frame.size, pos + frame.size + length
            if base + end > size:
                break  # damaged framing; reported by the caller when nothing came before it
            if end > len(data):
                break  # read the rest next time
            body = data[start:end]
            if length < head.size or zlib.crc32(body) != crc:
                damaged.append(Damaged(f"{_name(segment)}@{base + pos}", "spool record damaged (CRC)", body))
            else:
                mid, qos, _, received_ns, dig, topic_len = head.unpack_from(body)
                topic = body[head.size : head.size + topic_len].decode("utf-8", "surrogatepass")
                records.append(SpoolRecord(topic, body[head.size + topic_len :], received_ns, mid, qos, dig))
            pos = end
            count += 1
        return pos

    def _reader(self, segment: int) -> int:
        fd = self._readers.get(segment)
        if fd is None:
            fd = self._readers[segment] = os.open(self.path / _name(segment), os.O_RDONLY)
        return fd

    def release(self, position: Position) -> int:
        """Delete the segments wholly before ``position`` (never the active one); bytes freed."""
        freed = 0
        with self._lock:
            gone = [s for s in self._sizes if s < position[0] and s != self._active]
            for segment in gone:
                freed += self._sizes.pop(segment)
        for segment in gone:
            fd = self._readers.pop(segment, None)
            if fd is not None:
                os.close(fd)
            (self.path / _name(segment)).unlink(missing_ok=True)
        return freed

    def close(self) -> None:
        os.close(self._fd)
        for fd in self._readers.values():
            os.close(fd)
        self._readers.clear()
