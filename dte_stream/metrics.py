"""Process-wide counters and gauges: what the progress display, summaries and (later) the
Prometheus endpoint read. Updated once per batch, never per reading, so a lock is cheap.

>>> m = Metrics()
>>> m.add("readings_in", 5); m.add("readings_in", 2); m.get("readings_in")
7
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

__all__ = ["METRICS", "Metrics"]


class Metrics:
    """Named integer counters and gauges, safe to update from several worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, int] = {}
        self._gauges: dict[tuple[str, str], int] = {}

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + amount

    def get(self, name: str) -> int:
        with self._lock:
            return self._counters.get(name, 0)

    def set_gauge(self, name: str, key: str, value: int) -> None:
        """Set one part of a gauge (for example the twin count of one shard)."""
        with self._lock:
            self._gauges[(name, key)] = value

    def gauge(self, name: str) -> int:
        """The sum of a gauge's parts."""
        with self._lock:
            return sum(v for (n, _), v in self._gauges.items() if n == name)

    def counters(self) -> Mapping[str, int]:
        with self._lock:
            return dict(self._counters)

    def reset(self) -> None:
        with self._lock:
            self._counters.clear()
            self._gauges.clear()


#: The metrics of this process.
METRICS = Metrics()
