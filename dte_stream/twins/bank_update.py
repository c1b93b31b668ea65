"""What a twin bank's update gives back: :class:`BankUpdate`, and the dead letters of refused readings.

:meth:`TwinBank.update <dte_stream.twins.bank.TwinBank.update>` refuses readings older than the
type's lateness bound (:func:`too_late_letters`) and copies of readings already applied, the same
twin, channel and event time (:func:`copy_letters`); each becomes a
:class:`~dte_stream.readings.DeadLetter` naming why, with the reading as JSON.

>>> from dte_stream.readings import ReadingBatch
>>> from dte_stream.twins.routing import TypedBatch
>>> rb = ReadingBatch.from_columns(["p1"], ["temp"], [0], [20.0])
>>> letter = too_late_letters(TypedBatch("pump", rb, np.array([0])), np.array([0]), np.array([0]),
...                           np.array([60 * 10**9]), lateness=30.0)[0]
>>> letter.source, letter.reason.split(";")[1]
('twin_bank:pump', ' the lateness bound is 30 s')
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import orjson

from dte_stream.batches import AlertEvent, EstimateBatch
from dte_stream.readings import DeadLetter
from dte_stream.times import NS_PER_S, format_time_ns
from dte_stream.twins.routing import TypedBatch
from dte_stream.twins.stages import Copies

__all__ = ["BankUpdate", "copy_letters", "too_late_letters"]

IntP = npt.NDArray[np.intp]


@dataclass(frozen=True, slots=True)
class BankUpdate:
    """What one micro-batch produced: output rows, readings refused as too late, and alert events.

    The bank itself never sets ``alerts``; the shard's alert engines do, and the twin view
    notes updates of one twin type with their events in this shape.
    """

    estimates: EstimateBatch
    rejected: list[DeadLetter]
    alerts: list[AlertEvent] = field(default_factory=list)
    #: Readings not applied as copies of one applied (same twin, channel and event time),
    #: and how many of those had another value (they are in ``rejected`` too).
    copies: int = 0
    conflicts: int = 0


def too_late_letters(
    batch: TypedBatch, index: IntP, rows: IntP, last_seen: npt.NDArray[np.int64], lateness: float
) -> list[DeadLetter]:
    """A dead letter for each reading ``index`` too old for the lateness bound (twin rows ``rows``)."""
    r = batch.readings
    letters = []
    for i in index.tolist():
        latest = int(last_seen[rows[i]])
        behind = (latest - int(r.time_ns[i])) / NS_PER_S
        reason = (
            f"reading at {format_time_ns(int(r.time_ns[i]))} is {behind:g} s older than twin "
            f"{str(r.twin_id[i])!r} ({format_time_ns(latest)}); the lateness bound is {lateness:g} s"
        )
        raw = orjson.dumps(
            {
                "twin_id": str(r.twin_id[i]),
                "channel": str(r.channel[i]),
                "time_ns": int(r.time_ns[i]),
                "value": float(r.value[i]),
            }
        )
        letters.append(DeadLetter(f"twin_bank:{batch.twin_type}", reason, raw))
    return letters


def copy_letters(batch: TypedBatch, copies: Copies) -> list[DeadLetter]:
    """A dead letter for each copy of an applied reading (same twin, channel and event time)."""
    r = batch.readings
    letters = []
    for i in np.flatnonzero(copies.copy).tolist():
        twin, channel, t, v = str(r.twin_id[i]), str(r.channel[i]), int(r.time_ns[i]), float(r.value[i])
        at = f"twin {twin!r} channel {channel!r} at {format_time_ns(t)}"
        if copies.conflict[i]:
            reason = (
                f"conflicting value: {at} has {v!r}, the reading applied at that time has "
                f"{float(copies.winner[i])!r}; the first copy wins"
            )
        else:
            reason = f"duplicate reading: {at} was already applied; the first copy wins"
        raw = orjson.dumps({"twin_id": twin, "channel": channel, "time_ns": t, "value": v})
        letters.append(DeadLetter(f"twin_bank:{batch.twin_type}", reason, raw))
    return letters
