"""The clocks of a twin shard: how far the input has got, and the *now* of the timers.

Readings carry event times; timers need a *now*:

- ``engine.clock: event`` (replays, backtests): now is the latest event time this process has
  seen (:class:`InputClock`, shared by the shards of a process) or this shard has seen,
  whichever is later, and the timers run after every batch.
- ``engine.clock: wall`` (live runs): readings are checked against the wall clock (clock
  skew), but the timers judge time by the *input's progress*: the latest event time seen plus
  the wall time since it was seen (never past the wall clock). A live input is close to the
  wall clock, so this is the wall clock; while a backlog is caught up it is the backlog's
  event time, so sensors that report in the backlog are not stale just because the backlog is
  old; and when the input goes silent it runs on with the wall clock, so silence is noticed.

At the end of a finite input (:meth:`~dte_stream.twins.shard.TwinShard.on_eof`) the last look
is by the input's final event time on either clock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from dte_stream.times import now_ns

__all__ = ["NEVER", "InputClock", "twin_now"]

#: No time yet (before the first reading).
NEVER = -(2**63)


class InputClock:
    """How far the input of one process has got: its latest event time, and when that was seen.

    Advanced by whoever feeds the shards, before routing (the dataflow's ``count_in`` step, the
    replay loop), so a shard whose twins went quiet still sees the input's time pass.
    Thread-safe: the worker threads of a process share one.

    >>> clock = InputClock(wall=lambda: 5)
    >>> clock.advance(100); clock.advance(50)
    >>> clock.now(), clock.seen_at()
    (100, 5)
    """

    def __init__(self, wall: Callable[[], int] = now_ns) -> None:
        self._lock = threading.Lock()
        self._wall = wall
        self._now = NEVER
        self._seen_at = NEVER

    def advance(self, time_ns: int) -> None:
        """Note a batch whose latest event time is ``time_ns``."""
        with self._lock:
            self._now = max(self._now, time_ns)
            self._seen_at = self._wall()

    def now(self) -> int:
        """The latest event time seen (``NEVER`` before any)."""
        with self._lock:
            return self._now

    def seen_at(self) -> int:
        """Wall time (ns) of the last :meth:`advance`."""
        with self._lock:
            return self._seen_at


def twin_now(*, event_clock: bool, progress: int, seen_at: int, wall: int) -> int:
    """The twin clock: ``progress`` (latest event time seen), wall time ``seen_at`` it was seen.

    >>> twin_now(event_clock=False, progress=100, seen_at=1_000, wall=1_030)  # a backlog: its time
    130
    >>> twin_now(event_clock=False, progress=NEVER, seen_at=NEVER, wall=1_030)  # nothing yet
    1030
    >>> twin_now(event_clock=True, progress=100, seen_at=1_000, wall=1_030)
    100
    """
    if event_clock:
        return progress
    if NEVER in (progress, seen_at):
        return wall
    return min(wall, progress + max(0, wall - seen_at))
