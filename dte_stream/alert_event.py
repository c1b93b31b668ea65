"""An alert's state change as it leaves a twin shard: :class:`AlertEvent`, and its id.

Connectors take it from :mod:`dte_stream.batches` (which names it too); the alert rules
(:mod:`dte_stream.alerts`) make it, notifiers and sinks send :meth:`AlertEvent.to_json_dict`.

>>> e = AlertEvent(alert_id("pump-1", "overheat"), "pump-1", "pump", "overheat", "firing",
...                "critical", starts_ns=10**18, time_ns=10**18, channel="temp")
>>> e.alert_id, e.to_json_dict()["starts_at"], e.all_labels()["channel"]
('pump-1/overheat', '2001-09-09T01:46:40.000000000Z', 'temp')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dte_stream.times import format_time_ns

__all__ = ["AlertEvent", "AlertState", "alert_id"]

#: ``firing``: a new alert or a re-notification (``renotify``); ``resolved``: over;
#: ``acknowledged``: someone took it (who and when in ``acked_by``/``time_ns``).
AlertState = Literal["firing", "resolved", "acknowledged"]


def alert_id(twin_id: str, rule: str) -> str:
    """The id of the one alert a (twin, rule) pair can have."""
    return f"{twin_id}/{rule}"


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One state change of one alert."""

    alert_id: str
    twin_id: str
    twin_type: str
    rule: str
    state: AlertState
    severity: str
    starts_ns: int  # when the condition began (firing since)
    time_ns: int  # when this event happened
    message: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    value: float | None = None  # the value that triggered or cleared it, when there is one
    channel: str | None = None
    ends_ns: int | None = None  # set on resolved
    renotify: bool = False  # a reminder of an alert still firing
    acked_by: str | None = None
    sequence: int = 0  # per alert, increases with every event: receivers can drop repeats

    def all_labels(self) -> dict[str, str]:
        """The rule's labels plus alertname, twin_id, twin_type, severity (and channel)."""
        out = dict(self.labels)
        out.update(
            alertname=self.rule, twin_id=self.twin_id, twin_type=self.twin_type, severity=self.severity
        )
        if self.channel:
            out["channel"] = self.channel
        return out

    def to_json_dict(self) -> dict[str, object]:
        """A JSON-ready dict (times as RFC 3339 and ns): the webhook, MQTT and Kafka payload."""
        return {
            "alert_id": self.alert_id,
            "state": self.state,
            "rule": self.rule,
            "twin_id": self.twin_id,
            "twin_type": self.twin_type,
            "severity": self.severity,
            "channel": self.channel,
            "message": self.message,
            "value": self.value,
            "labels": self.all_labels(),
            "starts_at": format_time_ns(self.starts_ns),
            "ends_at": format_time_ns(self.ends_ns) if self.ends_ns is not None else None,
            "time": format_time_ns(self.time_ns),
            "time_ns": self.time_ns,
            "renotify": self.renotify,
            "acked_by": self.acked_by,
            "sequence": self.sequence,
        }
