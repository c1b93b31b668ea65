"""Process-wide readiness: whether this daemon does its job right now (what ``/readyz`` answers).

Sources and sinks report into :data:`READINESS` as they work, under a name of their own
(``source:plant_mqtt``, ``sink:influx/0``): :meth:`Readiness.expect` when they are built (not
ready until the first success), :meth:`Readiness.ok` after a connect or a write that worked,
:meth:`Readiness.failed` with the reason when one did not. The dataflow records the
end-to-end lag of every batch. The process is ready when every reported part is ok, the
latest lag is below :attr:`Readiness.max_lag` and no graceful stop is under way.

Reports are made once per batch or connection event; a report that changes nothing costs one
lock and a dict lookup.

>>> r = Readiness()
>>> r.expect("sink:influx", "connecting")
>>> r.status().ready
False
>>> r.ok("sink:influx"); r.status().ready
True
>>> r.failed("sink:influx", "InfluxDB at http://127.0.0.1:8086 does not answer")
>>> r.status().reasons()
['sink:influx: InfluxDB at http://127.0.0.1:8086 does not answer']
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from dte_stream.shutdown import STOP
from dte_stream.times import now_ns

__all__ = ["READINESS", "Check", "Readiness", "ReadyStatus"]

#: Default bound on the end-to-end lag (seconds) above which the daemon is not ready.
DEFAULT_MAX_LAG = 300.0


@dataclass(frozen=True, slots=True)
class Check:
    """The state of one part: ``ok``, since when (ns), and what it last said."""

    name: str
    ok: bool
    detail: str
    since_ns: int


@dataclass(frozen=True, slots=True)
class ReadyStatus:
    """What ``/readyz`` answers."""

    ready: bool
    checks: tuple[Check, ...]
    lag_seconds: float | None
    max_lag_seconds: float | None
    draining: bool

    def reasons(self) -> list[str]:
        """Why the process is not ready (empty when it is)."""
        out = [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]
        lag, bound = self.lag_seconds, self.max_lag_seconds
        if lag is not None and bound is not None and lag > bound:
            out.append(f"lag {self.lag_seconds:.1f} s is above {self.max_lag_seconds:.0f} s")
        if self.draining:
            out.append("draining: a stop was asked for")
        return out


class Readiness:
    """The readiness reports of the parts of this process."""

    def __init__(self, max_lag: float | None = DEFAULT_MAX_LAG) -> None:
        self._lock = threading.Lock()
        self._checks: dict[str, Check] = {}
        self._lag: float | None = None
        #: the lag bound in seconds; None leaves lag out (replays, event-time clocks)
        self.max_lag = max_lag

    def expect(self, name: str, detail: str = "starting") -> None:
        """Register a part that is not ready until it reports :meth:`ok` (kept if already known)."""
        with self._lock:
            if name not in self._checks:
                self._checks[name] = Check(name, False, detail, now_ns())

    def ok(self, name: str, detail: str = "ok") -> None:
        """The part works (connected, wrote a batch)."""
        self._report(name, True, detail)

    def failed(self, name: str, detail: str) -> None:
        """The part does not work, and why (never a secret: this is served over HTTP)."""
        self._report(name, False, detail)

    def _report(self, name: str, ok: bool, detail: str) -> None:
        with self._lock:
            current = self._checks.get(name)
            if current is not None and current.ok == ok and (ok or current.detail == detail):
                return
            self._checks[name] = Check(name, ok, detail, now_ns())

    def forget(self, name: str) -> None:
        """The part closed: it no longer counts."""
        with self._lock:
            self._checks.pop(name, None)

    def observe_lag(self, seconds: float) -> None:
        """The end-to-end lag of the latest batch."""
        self._lag = seconds

    def status(self) -> ReadyStatus:
        with self._lock:
            checks = tuple(sorted(self._checks.values(), key=lambda c: c.name))
        lag, bound = self._lag, self.max_lag
        lag_ok = lag is None or bound is None or lag <= bound
        draining = STOP.is_set()
        ready = all(c.ok for c in checks) and lag_ok and not draining
        return ReadyStatus(ready, checks, lag, bound, draining)

    def reset(self, max_lag: float | None = DEFAULT_MAX_LAG) -> None:
        with self._lock:
            self._checks.clear()
            self._lag = None
            self.max_lag = max_lag


#: The readiness of this process.
READINESS = Readiness()
