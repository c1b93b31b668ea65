"""The bounded line buffer between a worker's dataflow thread and its writer thread.

The dataflow thread :meth:`~LineBuffer.put` s chunks of lines (polars String series, one per
serialised batch); the writer thread :meth:`~LineBuffer.take` s up to ``batch_size`` lines at a
time, as soon as that many wait or the oldest line is ``flush_interval`` old.

When the buffer is full, ``put`` blocks: a slow server slows the dataflow down instead of
losing readings (with ``max_block=None``, the default, for as long as the server fails). Only
when a ``max_block`` is set and the server has been failing that long (the writer reports
every failed and every successful attempt) does ``put`` make room by dropping the oldest
buffered lines, and it returns them so the caller can count and dead-letter them. A server
that answers again ends the outage, and ``put`` blocks again.

A graceful stop (``stop_requested`` returns True) bounds every wait: ``put`` and ``flush``
wait at most ``stop_wait`` seconds more for the server (none once ``stop_now`` is True), then
raise :class:`InfluxDBStopped`, so the epoch with unwritten lines is never committed (a
re-readable source reads it again).

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

from dte_stream.connectors.influxdb.errors import InfluxDBError, InfluxDBStopped

__all__ = ["LineBuffer", "PutResult"]

#: How often a blocked ``put`` wakes up to look again when nothing notifies it.
_POLL = 0.5


@dataclass(frozen=True, slots=True)
class PutResult:
    """What a ``put`` cost: the lines dropped to make room (oldest first), and seconds blocked."""

    dropped_lines: tuple[pl.Series, ...] = ()
    blocked: float = 0.0

    @property
    def dropped(self) -> int:
        """How many lines were dropped."""
        return sum(chunk.len() for chunk in self.dropped_lines)


class LineBuffer:
    """A FIFO of at most ``capacity`` lines, shared by one producer and one consumer thread."""

    def __init__(
        self,
        capacity: int,
        max_block: float | None,
        clock: Callable[[], float] = time.monotonic,
        *,
        stop_requested: Callable[[], bool] = lambda: False,
        stop_now: Callable[[], bool] = lambda: False,
        stop_wait: float = 30.0,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.max_block = max_block
        self._clock = clock
        self._stop_requested = stop_requested
        self._stop_now = stop_now
        self._stop_wait = stop_wait
        self._stop_deadline: float | None = None  # set when a waiting call first sees the stop
        self._gave_up = False  # a stop gave up waiting: what is left is not committed
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
        """Append ``lines``; block while full, drop the oldest lines past ``max_block`` of outage.

        Raises :class:`InfluxDBStopped` when a graceful stop has waited ``stop_wait`` seconds.
        """
        dropped: list[pl.Series] = []
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
                self._check_stop(now, "the buffer is full")
                wait = _POLL
                if self.max_block is not None and self._outage_since is not None:
                    wait = min(wait, max(self._outage_since + self.max_block - now, 0.0))
                start = self._clock()
                self._cond.wait(wait)
                blocked += self._clock() - start
        return PutResult(tuple(dropped), blocked)

    def _dropping(self, now: float) -> bool:
        return (
            self.max_block is not None
            and self._outage_since is not None
            and now - self._outage_since >= self.max_block
        )

    def _evict(self, count: int) -> list[pl.Series]:
        """Remove the ``count`` oldest lines (or all there are); return them, oldest first."""
        removed = 0
        out: list[pl.Series] = []
        while removed < count and self._chunks:
            chunk, arrived = self._chunks[0]
            need = count - removed
            if chunk.len() <= need:
                self._chunks.popleft()
                out.append(chunk)
                removed += chunk.len()
            else:
                out.append(chunk.slice(0, need))
                self._chunks[0] = (chunk.slice(need), arrived)
                removed += need
        self._size -= removed
        self._settled += removed
        return out

    def _check_stop(self, now: float, why: str) -> None:
        """Raise InfluxDBStopped once a graceful stop has waited ``stop_wait`` for the server."""
        at_once = self._stop_now()
        if not at_once and not self._stop_requested():
            return
        if self._stop_deadline is None:
            self._stop_deadline = now + self._stop_wait
        if at_once or now >= self._stop_deadline:
            waited = "at once" if at_once else f"within {self._stop_wait:g} s (close_timeout)"
            unwritten = self._accepted - self._settled
            self._gave_up = True
            raise InfluxDBStopped(
                f"stopped with {unwritten} points not written ({why}, the server did not take them "
                f"{waited}); they are not committed: a restart with the same recovery directory "
                "writes them",
                unwritten,
            )

    @property
    def gave_up(self) -> bool:
        """True once a stop gave up waiting for the server (the epoch is not committed)."""
        with self._cond:
            return self._gave_up

    @property
    def stop_deadline(self) -> float | None:
        """When a graceful stop stops waiting for the server (clock time), once one is under way."""
        with self._cond:
            return self._stop_deadline

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
                    self._check_stop(self._clock(), "the epoch's lines are not all written")
                    self._cond.wait(poll)
            finally:
                self._flushing -= 1

    def drain(self) -> list[pl.Series]:
        """Remove every buffered line; return them, oldest first."""
        with self._cond:
            out = [chunk for chunk, _ in self._chunks]
            self._settled += self._size
            self._chunks.clear()
            self._size = 0
            self._cond.notify_all()
            return out
