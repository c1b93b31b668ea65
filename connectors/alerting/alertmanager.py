"""The Prometheus Alertmanager notifier: ``POST /api/v2/alerts``, as Prometheus itself does.

Alertmanager identifies an alert by its label set; an alert is active while ``endsAt`` is in
the future (unset: Alertmanager's ``resolve_timeout`` after it last heard of it) and resolved
once ``endsAt`` has passed. So (:func:`alertmanager_alert`):

* firing (also a re-notification, or an acknowledgement when the spec's ``states`` ask for
  it): ``startsAt`` = when the condition began, ``endsAt`` = now + ``firing_ttl``; the notifier
  sends every firing alert again every ``resend_interval``, so it stays active while
  dte-stream runs and resolves by itself ``firing_ttl`` after dte-stream stops;
* resolved: ``endsAt`` = when it ended: Alertmanager marks it resolved and sends its
  resolution to the receivers configured for ``send_resolved``.

Labels are the spec's ``labels`` overlaid with :meth:`AlertEvent.all_labels`; label names
Alertmanager would refuse get ``_`` for each bad character, empty values are left out.
Annotations: ``message``, ``value``, ``alert_id`` (and ``acked_by``).
"""

from __future__ import annotations

import re
import time

import orjson

from dte_stream.batches import AlertEvent
from dte_stream.connectors.alerting.webhook import post_json
from dte_stream.spec.notify import AlertmanagerNotifierSpec
from dte_stream.times import NS_PER_S, format_time_ns

__all__ = ["AlertmanagerNotifier", "alertmanager_alert", "label_name"]

_BAD_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_]")


def label_name(name: str) -> str:
    """``name`` as a valid Prometheus label name (``[A-Za-z_][A-Za-z0-9_]*``).

    >>> label_name("site-name"), label_name("1st")
    ('site_name', '_1st')
    """
    out = _BAD_LABEL_CHARS.sub("_", name)
    return out if out and not out[0].isdigit() else "_" + out


def alertmanager_alert(
    event: AlertEvent,
    *,
    extra_labels: dict[str, str] | None = None,
    now_ns: int,
    firing_ttl: float,
) -> dict[str, object]:
    """One element of the ``POST /api/v2/alerts`` body for ``event``.

    >>> e = AlertEvent("p-1/hot", "p-1", "pump", "hot", "resolved", "critical",
    ...                starts_ns=0, time_ns=60 * 10**9, ends_ns=60 * 10**9, message="back to 80")
    >>> a = alertmanager_alert(e, extra_labels={"env": "prod"}, now_ns=0, firing_ttl=300)
    >>> a["labels"]["env"], a["annotations"]["message"], a["startsAt"], a["endsAt"]
    ('prod', 'back to 80', '1970-01-01T00:00:00.000000000Z', '1970-01-01T00:01:00.000000000Z')
    """
    labels: dict[str, str] = {}
    for key, value in {**(extra_labels or {}), **event.all_labels()}.items():
        if value != "":
            labels[label_name(key)] = value
    annotations = {"alert_id": event.alert_id}
    if event.message:
        annotations["message"] = event.message
    if event.value is not None:
        annotations["value"] = repr(event.value)
    if event.acked_by:
        annotations["acked_by"] = event.acked_by
    if event.state == "resolved":
        ends = event.ends_ns if event.ends_ns is not None else event.time_ns
    else:
        ends = max(now_ns, event.time_ns) + round(firing_ttl * NS_PER_S)
    ends = max(ends, event.starts_ns)  # Alertmanager refuses an end before the start
    return {
        "labels": labels,
        "annotations": annotations,
        "startsAt": format_time_ns(event.starts_ns),
        "endsAt": format_time_ns(ends),
    }


class AlertmanagerNotifier:
    """Sends each event to Alertmanager and keeps firing alerts alive with periodic resends.

    >>> spec = AlertmanagerNotifierSpec(kind="alertmanager", url="http://127.0.0.1:9093/")
    >>> AlertmanagerNotifier(spec).endpoint
    'http://127.0.0.1:9093/api/v2/alerts'
    """

    def __init__(self, spec: AlertmanagerNotifierSpec) -> None:
        self.spec = spec
        self.who = f"notifier {spec.name}"
        self.endpoint = f"{spec.url}/api/v2/alerts"
        self.refresh_interval: float | None = spec.resend_interval
        #: The latest event of every alert not resolved yet (what a resend sends).
        self.active: dict[str, AlertEvent] = {}

    def _post(self, events: list[AlertEvent]) -> None:
        now = time.time_ns()
        body = orjson.dumps(
            [
                alertmanager_alert(
                    e, extra_labels=self.spec.labels, now_ns=now, firing_ttl=self.spec.firing_ttl
                )
                for e in events
            ]
        )
        post_json(self.endpoint, body, timeout=self.spec.timeout, who=self.who)

    def deliver(self, event: AlertEvent) -> None:
        # Noted before sending: a resend repairs a firing event whose retries ran out.
        if event.state == "resolved":
            self.active.pop(event.alert_id, None)
        else:
            self.active[event.alert_id] = event
        self._post([event])

    def refresh(self) -> None:
        """Send every firing alert again, with a new ``endsAt``."""
        if self.active:
            self._post(list(self.active.values()))

    def close(self) -> None:
        """No connection is kept between requests; firing alerts expire after ``firing_ttl``."""
