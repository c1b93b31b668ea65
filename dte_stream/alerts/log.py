"""The alert log: every alert event as a row of the local store's ``alerts`` table.

>>> from dte_stream.batches import AlertEvent
>>> e = AlertEvent("p1/hot", "p1", "pump", "hot", "firing", "critical", 10**18, 10**18, "91 > 90")
>>> events_frame([e]).select("alert_id", "state", "sequence").row(0)
('p1/hot', 'firing', 0)
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import polars as pl

from dte_stream.batches import AlertEvent
from dte_stream.store.schema import ALERTS_SCHEMA

__all__ = ["ALERTS_SCHEMA", "ALERTS_TABLE", "AlertRows", "events_frame"]

#: The local store table alert events are appended to.
ALERTS_TABLE = "alerts"


def events_frame(events: Sequence[AlertEvent]) -> pl.DataFrame:
    """Alert events as rows of :data:`ALERTS_SCHEMA`."""
    return pl.DataFrame(
        {
            "time": [e.time_ns for e in events],
            "alert_id": [e.alert_id for e in events],
            "twin_id": [e.twin_id for e in events],
            "twin_type": [e.twin_type for e in events],
            "rule": [e.rule for e in events],
            "state": [e.state for e in events],
            "severity": [e.severity for e in events],
            "channel": [e.channel for e in events],
            "message": [e.message for e in events],
            "value": [e.value for e in events],
            "starts": [e.starts_ns for e in events],
            "ends": [e.ends_ns for e in events],
            "renotify": [e.renotify for e in events],
            "acked_by": [e.acked_by for e in events],
            "sequence": [e.sequence for e in events],
            "labels": [orjson.dumps(e.labels).decode() for e in events],
        },
        schema_overrides={"time": pl.Int64, "starts": pl.Int64, "ends": pl.Int64, "value": pl.Float64},
    ).cast(ALERTS_SCHEMA)  # all-None columns (channel, acked_by) keep their declared types


class AlertRows:
    """Alert events bound for the local store: the sink turns all it buffered into one frame.

    Building a polars frame costs about a millisecond whatever its size, so the store sink
    converts its whole buffer at flush time (:meth:`frame_of`) rather than each event.
    """

    __slots__ = ("events",)

    def __init__(self, events: Sequence[AlertEvent]) -> None:
        self.events = list(events)

    def __len__(self) -> int:
        return len(self.events)

    @staticmethod
    def frame_of(batches: Sequence[AlertRows]) -> pl.DataFrame:
        return events_frame([e for b in batches for e in b.events])
