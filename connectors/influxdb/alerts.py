"""Alert events to InfluxDB: the measurement ``dte_alerts``, one point per event.

Tags ``alert_id``, ``rule``, ``severity``, ``state``, ``twin_id``, ``twin_type`` (and
``channel``); fields ``message`` (string), ``value``, ``sequence`` (integer), ``acked_by``; the
event's time. Alerts are rare, so each batch is one request, retried a few times with backoff;
a write that keeps failing is logged and counted (``influxdb_alert_write_failures``) and the
dataflow goes on. Points are idempotent (the same event twice is one point).
"""

from __future__ import annotations

import logging
import math
import time

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from dte_stream.batches import AlertEvent
from dte_stream.codecs.escaping import escape_string_field, escape_tag
from dte_stream.connectors.influxdb.errors import InfluxDBRejected, InfluxDBUnavailable
from dte_stream.connectors.influxdb.transport import Transport, make_transport
from dte_stream.metrics import METRICS
from dte_stream.spec.influxdb import InfluxDBSinkSpec

__all__ = ["ALERTS_MEASUREMENT", "InfluxDBAlertSink", "alert_line"]

log = logging.getLogger(__name__)

ALERTS_MEASUREMENT = "dte_alerts"
_ATTEMPTS = 4


def alert_line(event: AlertEvent) -> str:
    """One line of line protocol for ``event``.

    >>> e = AlertEvent("p1/hot", "p1", "pump", "hot", "firing", "critical", 5, 7, "too hot", value=91.5)
    >>> line = alert_line(e)
    >>> line.split(" ")[0]
    'dte_alerts,alert_id=p1/hot,rule=hot,severity=critical,state=firing,twin_id=p1,twin_type=pump'
    >>> line.split('",', 1)[1]
    'sequence=0i,starts_ns=5i,value=91.5 7'
    """
    tags = {
        "alert_id": event.alert_id,
        "rule": event.rule,
        "severity": event.severity,
        "state": event.state,
        "twin_id": event.twin_id,
        "twin_type": event.twin_type,
    }
    if event.channel:
        tags["channel"] = event.channel
    tag_text = ",".join(f"{k}={escape_tag(v)}" for k, v in sorted(tags.items()))
    fields = [f'message="{escape_string_field(event.message)}"', f"sequence={event.sequence}i"]
    fields.append(f"starts_ns={event.starts_ns}i")
    if event.value is not None and math.isfinite(event.value):
        fields.append(f"value={event.value!r}")
    if event.acked_by:
        fields.append(f'acked_by="{escape_string_field(event.acked_by)}"')
    return f"{ALERTS_MEASUREMENT},{tag_text} {','.join(fields)} {event.time_ns}"


class InfluxDBAlertSink(DynamicSink[AlertEvent]):
    """Write alert events to the InfluxDB of an InfluxDB sink spec (same server and database)."""

    def __init__(self, spec: InfluxDBSinkSpec) -> None:
        self.spec = spec

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _AlertPartition:
        return _AlertPartition(make_transport(self.spec), self.spec.target())


class _AlertPartition(StatelessSinkPartition[AlertEvent]):
    def __init__(self, transport: Transport, target: str) -> None:
        self._transport = transport
        self._target = target

    def write_batch(self, items: list[AlertEvent]) -> None:
        lines = []
        for event in items:
            try:
                lines.append(alert_line(event))
            except ValueError as exc:  # an id InfluxDB cannot hold; the local log still has it
                log.error("%s: alert %r cannot be written: %s", self._target, event.alert_id, exc)
        if not lines:
            return
        body = "\n".join(lines).encode("utf-8")
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                self._transport.write(body)
                METRICS.add("influxdb_alerts_written", len(lines))
                return
            except InfluxDBRejected as exc:
                log.error("%s: alert events refused: %s", self._target, exc)
                break
            except InfluxDBUnavailable as exc:
                if attempt == _ATTEMPTS:
                    log.error(
                        "%s: alert events not written after %d attempts: %s", self._target, attempt, exc
                    )
                    break
                time.sleep(0.2 * 2**attempt)
        METRICS.add("influxdb_alert_write_failures", len(lines))

    def close(self) -> None:
        self._transport.close()
