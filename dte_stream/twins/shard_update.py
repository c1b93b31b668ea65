"""What a twin shard's call returns: estimate batches, refused readings and alert events."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dte_stream.batches import AlertEvent, DeadLetter, EstimateBatch
from dte_stream.twins.bank import BankUpdate

__all__ = ["ShardUpdate", "merge_updates"]


@dataclass(frozen=True, slots=True)
class ShardUpdate:
    """What one call produced: estimate batches (one per twin type), refused readings, alert events.

    Estimate rows with a NaN ``value`` are timer rows (a stale sensor).
    """

    estimates: list[EstimateBatch] = field(default_factory=list)
    rejected: list[DeadLetter] = field(default_factory=list)
    alerts: list[AlertEvent] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.estimates or self.rejected or self.alerts)

    def readings(self) -> int:
        """Estimate rows, timer rows included."""
        return sum(len(b) for b in self.estimates)

    def per_type(self) -> dict[str, BankUpdate]:
        """The update split by twin type (estimates and alert events of each; refused readings not)."""
        batches: dict[str, list[EstimateBatch]] = {}
        for b in self.estimates:
            batches.setdefault(b.twin_type, []).append(b)
        events: dict[str, list[AlertEvent]] = {}
        for e in self.alerts:
            events.setdefault(e.twin_type, []).append(e)
        return {
            t: BankUpdate(
                EstimateBatch.concat(batches[t]) if t in batches else _no_rows(t), [], events.get(t, [])
            )
            for t in sorted({*batches, *events})
        }


def _no_rows(twin_type: str) -> EstimateBatch:
    """An estimate batch without rows (an update that only carries alert events)."""
    f, t = np.empty(0), np.empty(0, dtype=np.str_)
    return EstimateBatch(twin_type, t, t, np.empty(0, dtype=np.int64), f, t, f, f, f, f)


def merge_updates(a: ShardUpdate, b: ShardUpdate) -> ShardUpdate:
    """Both updates in one (``a``'s rows first)."""
    if not b:
        return a
    return ShardUpdate(a.estimates + b.estimates, a.rejected + b.rejected, a.alerts + b.alerts)
