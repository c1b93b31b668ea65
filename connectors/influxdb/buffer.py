"""The bounded line buffer between a worker's dataflow thread and its writer thread.

The dataflow thread :meth:`~LineBuffer.put` s chunks of lines (polars String series, one per
serialised batch); the writer thread :meth:`~LineBuffer.take` s up to ``batch_size`` lines at a
time, as soon as that many wait or the oldest line is ``flush_interval`` old.

When the buffer is full, ``put`` blocks: a slow server slows the dataflow down instead of
losing readings. Only when the server has been failing for ``max_block`` seconds (the writer
reports every failed and every successful attempt) does ``put`` make room by dropping the
oldest buffered lines, and it returns how many it dropped so the caller can say so. A server
that answers again ends the outage, and ``put`` blocks again.

>>> buffer = LineBuffer(capacity=3, max_block=None)
>>> buffer.put(pl.Series(["a", "b"])).dropped
0
>>> [s.to_list() for s in buffer.take(max_lines=5, max_age=0.0)]
[['a', 'b']]
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from dte_stream.connectors.influxdb.errors import InfluxDBError

__all__ = ["LineBuffer", "PutResult"]

#: How often a blocked ``put`` wakes up to look again when nothing notifies it.
_POLL = 0.5


@dataclass(frozen=True, slots=True)
class PutResult:
    """What a ``put`` cost: lines dropped to make room, and seconds spent blocked."""

    dropped: int = 0
    blocked: float = 0.0


class LineBuffer:
    """A FIFO of at most ``capacity`` lines, shared by one producer and one consumer thread."""

    def __init__(
        self, capacity: int, max_block: float | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.max_block = max_block
        self._clock = clock
        self._cond = threading.Condition()
        self._chunks: deque[tuple[pl.Series, float]] = deque()  # lines, arrival time
        self._size = 0
        self._closed = False  # no more puts; take drains what is left
        self._aborted = False  # take returns None at once; what is left is dropped by the owner
        self._failure: BaseException | None = None  # the writer died: put raises this
        self._outage_since: float | None = None
        self._accepted = 0  # lines ever put
        self._settled = 0  # lines ever written, refused or dropped
        self._flushing = 0  # flush() calls waiting: take hands out what is there at once

    def __len__(self) -> int:
        with self._cond:
            return self._size

    @property
    def outage_since(self) -> float | None:
        """Clock time of the first failed attempt since the last success, or None."""
        with self._cond:
            return self._outage_since

    # ------------------------------------------------------------------------------------
    # producer (the dataflow thread)
    # ------------------------------------------------------------------------------------

    def put(self, lines: pl.Series) -> PutResult:
        """Append ``lines``; block while full, drop the oldest lines past ``max_block`` of outage."""
        dropped = 0
        blocked = 0.0
        remaining = lines
        with self._cond:
            while remaining.len():
                self._raise_if_unusable()
                space = self.capacity - self._size
                if space > 0:
                    part = remaining if remaining.len() <= space else remaining.slice(0, space)
                    self._chunks.append((part, self._clock()))
                    self._size += part.len()
                    self._accepted += part.len()
                    remaining = remaining.slice(part.len())
                    self._cond.notify_all()
                    continue
                now = self._clock()
                if self._dropping(now):
                    dropped += self._evict(min(remaining.len(), self.capacity))
                    continue
                wait = _POLL
                if self.max_block is not None and self._outage_since is not None:
                    wait = min(wait, max(self._outage_since + self.max_block - now, 0.0))
                start = self._clock()
                self._cond.wait(wait)
                blocked += self._clock() - start
        return PutResult(dropped, blocked)

    def _dropping(self, now: float) -> bool:
        return (
            self.max_block is not None
            and self._outage_since is not None
            and now - self._outage_since >= self.max_block
        )

    def _evict(self, count: int) -> int:
        """Remove the ``count`` oldest lines (or all there are); return how many."""
        removed = 0
        while removed < count and self._chunks:
            chunk, arrived = self._chunks[0]
            need = count - removed
            if chunk.len() <= need:
                self._chunks.popleft()
                removed += chunk.len()
            else:
                self._chunks[0] = (chunk.slice(need), arrived)
                removed += need
        self._size -= removed
        self._settled += removed
        return removed

    def _raise_if_unusable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed or self._aborted:
            raise InfluxDBError("the InfluxDB sink is closed; no more lines can be added")

    # ------------------------------------------------------------------------------------
    # consumer (the writer thread)
    # ------------------------------------------------------------------------------------

    def take(self, max_lines: int, max_age: float) -> list[pl.Series] | None:
        """Wait for a batch: ``max_lines`` lines, or fewer once the oldest is ``max_age`` old.

        After :meth:`close` it returns what is left without waiting, then None; after
        :meth:`abort`, None at once.
        """
        with self._cond:
            while True:
                if self._aborted:
                    return None
                if self._size >= max_lines or (self._size and (self._closed or self._flushing)):
                    break
                if self._size:
                    age = self._clock() - self._chunks[0][1]
                    if age >= max_age:
                        break
                    self._cond.wait(max_age - age)
                elif self._closed:
                    return None
                else:
                    self._cond.wait()
            out: list[pl.Series] = []
            need = max_lines
            while need and self._chunks:
                chunk, arrived = self._chunks[0]
                if chunk.len() <= need:
                    self._chunks.popleft()
                    out.append(chunk)
                    need -= chunk.len()
                else:
                    out.append(chunk.slice(0, need))
                    self._chunks[0] = (chunk.slice(need), arrived)
                    need = 0
            self._size -= max_lines - need
            self._cond.notify_all()
            return out

    def mark_failure(self) -> None:
        """The writer's attempt failed for want of a server: an outage starts (or goes on)."""
        with self._cond:
            if self._outage_since is None:
                self._outage_since = self._clock()
            self._cond.notify_all()

    def mark_success(self) -> None:
        """The server answered: any outage is over, a full buffer blocks again."""
        with self._cond:
            self._outage_since = None
            self._cond.notify_all()

    # ------------------------------------------------------------------------------------
    # owner
    # ------------------------------------------------------------------------------------

    def close(self) -> None:
        """No more puts; ``take`` hands out what is left without waiting for a full batch."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abort(self) -> None:
        """Stop ``take`` at once (the writer ends); lines still here stay for :meth:`drain`."""
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        """The writer died with ``error``: every later ``put`` raises it."""
        with self._cond:
            self._failure = error
            self._cond.notify_all()

    def settle(self, count: int) -> None:
        """The writer is done with ``count`` lines it took: written, refused or dropped."""
        with self._cond:
            self._settled += count
            self._cond.notify_all()

    def flush(self, poll: float = _POLL) -> None:
        """Wait until every line put so far is settled (written, refused for good, or dropped).

        The dataflow calls it at the end of each epoch, before the epoch's progress is
        committed: a restart then never skips points that were only buffered. It waits as long
        as the server is down (the drop policy, ``max_block``, bounds that); it raises the
        writer's failure, and returns early after :meth:`abort`.
        """
        with self._cond:
            target = self._accepted
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._settled < target and not self._aborted:
                    if self._failure is not None:
                        raise self._failure
                    self._cond.wait(poll)
            finally:
                self._flushing -= 1

    def drain(self) -> int:
        """Remove every buffered line; return how many there were."""
        with self._cond:
            count = self._size
            self._chunks.clear()
            self._size = 0
            self._settled += count
            self._cond.notify_all()
            return count
