"""Alert lifecycle: one alert per (twin, rule), its states, and the events it sends.

The rule engine (:mod:`dte_stream.alerts.rules`) tells an :class:`AlertBook` when a rule's
condition for a twin becomes true or false; the book turns that into alert state and
:class:`~dte_stream.batches.AlertEvent` notifications:

* a condition that turns true makes the alert ``pending``; after ``holds_for`` (at once when
  it is 0) it is ``firing`` and one ``firing`` event is sent; a condition that turns false
  before that drops the pending alert silently (a blip never fires);
* a firing alert whose condition turns false is ``resolved`` (one ``resolved`` event);
* an alert still firing is notified again every ``renotify_every`` (``renotify=True``),
  unless it was acknowledged;
* an alert that changed state more than ``max_changes`` times within the flapping ``window``
  sends nothing until it has been stable for a whole window; then its current state is sent
  once if it differs from the last state sent;
* :meth:`AlertBook.acknowledge` records who took a firing alert and sends ``acknowledged``.

Every event of an alert carries a ``sequence`` one higher than the previous one, across
episodes and restarts (the book's :meth:`~AlertBook.snapshot` keeps it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from dte_stream.batches import AlertEvent, AlertState, alert_id
from dte_stream.times import NS_PER_S

__all__ = ["AlertBook", "AlertRecord", "RuleInfo", "Trigger", "render_message"]

RecordState = Literal["pending", "firing", "resolved"]


@dataclass(frozen=True, slots=True)
class RuleInfo:
    """What the book needs of a rule: its name, severity, labels, hold, message and level."""

    name: str
    severity: str
    labels: dict[str, str]
    hold_ns: int
    template: str
    level: float = math.nan


@dataclass(frozen=True, slots=True)
class Trigger:
    """The reading (or timer) that changed a condition: what the event and message show."""

    time_ns: int
    channel: str | None = None
    value: float | None = None  # what the rule compared with its level
    reading: float | None = None
    estimate: float | None = None


@dataclass(slots=True)
class AlertRecord:
    """The state of one alert (one per twin and rule)."""

    twin_id: str
    rule: str
    state: RecordState
    starts_ns: int  # when the condition became true (this episode)
    prev_state: RecordState | None = None  # what a dropped pending alert returns to
    ends_ns: int | None = None
    sequence: int = 0
    message: str = ""
    channel: str | None = None
    value: float | None = None
    last_sent_ns: int | None = None  # last firing notification (for re-notification)
    notified: Literal["firing", "resolved"] | None = None  # last state sent
    acked_by: str | None = None
    acked_ns: int | None = None
    flapping: bool = False
    changes: list[int] = field(default_factory=list)  # firing/resolved changes within the window


def render_message(template: str, rule: RuleInfo, twin_id: str, twin_type: str, trigger: Trigger) -> str:
    """The message of an alert: ``template`` filled from the trigger (NaN where a number is missing)."""

    def num(x: float | None) -> float:
        return math.nan if x is None else float(x)

    fields = {
        "twin_id": twin_id,
        "twin_type": twin_type,
        "rule": rule.name,
        "severity": rule.severity,
        "channel": trigger.channel or "",
        "value": num(trigger.value),
        "reading": num(trigger.reading),
        "estimate": num(trigger.estimate),
        "level": num(rule.level),
    }
    try:
        return template.format_map(fields)
    except (ValueError, TypeError, KeyError, IndexError):  # validated at load; never lose an alert over it
        return template


class AlertBook:
    """Every alert of one twin type, and the rules of its lifecycle.

    >>> rule = RuleInfo("overheat", "critical", {}, hold_ns=0, template="{channel} {value}", level=95)
    >>> book = AlertBook("pump", renotify_ns=None, flap_window_ns=600 * 10**9, flap_max_changes=4)
    >>> [e.state for e in book.condition(rule, "p1", True, Trigger(10, "temperature", 97.0))]
    ['firing']
    >>> book.condition(rule, "p1", True, Trigger(20, "temperature", 98.0))  # still firing: nothing
    []
    >>> [(e.state, e.sequence) for e in book.condition(rule, "p1", False, Trigger(30, "temperature", 80.0))]
    [('resolved', 2)]
    """

    def __init__(
        self, twin_type: str, *, renotify_ns: int | None, flap_window_ns: int, flap_max_changes: int
    ) -> None:
        self.twin_type = twin_type
        self.renotify_ns = renotify_ns
        self.flap_window_ns = flap_window_ns
        self.flap_max_changes = flap_max_changes
        self.rules: dict[str, RuleInfo] = {}
        self.records: dict[tuple[str, str], AlertRecord] = {}  # (twin_id, rule) -> record
        # Records needing a timer or an active condition: small sets, scanned by due().
        self._pending: set[tuple[str, str]] = set()
        self._firing: set[tuple[str, str]] = set()
        self._flapping: set[tuple[str, str]] = set()

    def forget(self, twin_ids: set[str]) -> None:
        """Drop the records of these twins that are neither pending, firing nor flapping."""
        busy = self._pending | self._firing | self._flapping
        for key in [k for k in self.records if k[0] in twin_ids and k not in busy]:
            del self.records[key]

    # -- conditions ----------------------------------------------------------------------

    def is_active(self, twin_id: str, rule: str) -> bool:
        """True when the rule's condition is true for the twin (the alert is pending or firing)."""
        key = (twin_id, rule)
        return key in self._pending or key in self._firing

    def active_twins(self, rule: str) -> set[str]:
        """Twins whose condition of ``rule`` is true."""
        return {t for t, r in self._pending | self._firing if r == rule}

    def condition(self, rule: RuleInfo, twin_id: str, active: bool, trigger: Trigger) -> list[AlertEvent]:
        """The rule's condition for the twin is ``active`` as of ``trigger.time_ns``."""
        self.rules.setdefault(rule.name, rule)
        key = (twin_id, rule.name)
        rec = self.records.get(key)
        t = trigger.time_ns
        if active:
            if rec is not None and rec.state in ("pending", "firing"):
                return self.seen(rule, twin_id, t)
            if rec is None:
                rec = AlertRecord(twin_id, rule.name, "pending", t)
                self.records[key] = rec
            else:
                rec.prev_state, rec.state, rec.starts_ns = rec.state, "pending", t
            rec.channel, rec.value = trigger.channel, trigger.value
            rec.message = render_message(rule.template, rule, twin_id, self.twin_type, trigger)
            self._pending.add(key)
            if rule.hold_ns <= 0:
                return self._fire(rule, rec, t)
            return []
        if rec is None or rec.state == "resolved":
            return []
        if rec.state == "pending":
            self._pending.discard(key)
            if rec.prev_state is None:
                del self.records[key]
            else:
                rec.state = rec.prev_state
            return []
        return self._resolve(rule, rec, t, trigger.value)

    def seen(self, rule: RuleInfo, twin_id: str, time_ns: int) -> list[AlertEvent]:
        """The condition was still true at ``time_ns``: a pending alert whose hold is over fires."""
        key = (twin_id, rule.name)
        rec = self.records.get(key)
        if rec is None or rec.state != "pending" or time_ns < rec.starts_ns + rule.hold_ns:
            return []
        return self._fire(rule, rec, rec.starts_ns + rule.hold_ns)

    def _fire(self, rule: RuleInfo, rec: AlertRecord, t: int) -> list[AlertEvent]:
        key = (rec.twin_id, rec.rule)
        self._pending.discard(key)
        self._firing.add(key)
        rec.state, rec.ends_ns, rec.acked_by, rec.acked_ns = "firing", None, None, None
        if self._changed(rec, t):
            return []
        rec.last_sent_ns = t
        return [self._event(rule, rec, "firing", t)]

    def _resolve(self, rule: RuleInfo, rec: AlertRecord, t: int, value: float | None) -> list[AlertEvent]:
        self._firing.discard((rec.twin_id, rec.rule))
        rec.state, rec.ends_ns, rec.value = "resolved", t, value
        if self._changed(rec, t):
            return []
        return [self._event(rule, rec, "resolved", t)]

    def _changed(self, rec: AlertRecord, t: int) -> bool:
        """Count a state change; True when notifications are suppressed (flapping)."""
        rec.changes = [c for c in rec.changes if c > t - self.flap_window_ns]
        rec.changes.append(t)
        if len(rec.changes) > self.flap_max_changes:
            rec.flapping = True
            self._flapping.add((rec.twin_id, rec.rule))
        return rec.flapping

    def _event(
        self, rule: RuleInfo, rec: AlertRecord, state: AlertState, t: int, *, renotify: bool = False
    ) -> AlertEvent:
        rec.sequence += 1
        if state != "acknowledged":
            rec.notified = state
        return AlertEvent(
            alert_id(rec.twin_id, rec.rule),
            rec.twin_id,
            self.twin_type,
            rec.rule,
            state,
            rule.severity,
            starts_ns=rec.starts_ns,
            time_ns=t,
            message=rec.message,
            labels=dict(rule.labels),
            value=rec.value if rec.value is None or math.isfinite(rec.value) else None,
            channel=rec.channel,
            ends_ns=rec.ends_ns if state == "resolved" else None,
            renotify=renotify,
            acked_by=rec.acked_by,
            sequence=rec.sequence,
        )

    # -- timers -----------------------------------------------------------------------------

    def due(self, now_ns: int) -> list[AlertEvent]:
        """Holds that ran out, flapping alerts that became stable, re-notifications."""
        out: list[AlertEvent] = []
        for key in sorted(self._pending):
            rule = self.rules[key[1]]
            out += self.seen(rule, key[0], now_ns)
        for key in sorted(self._flapping):
            rec = self.records[key]
            if not rec.changes or now_ns - rec.changes[-1] >= self.flap_window_ns:
                rec.flapping, rec.changes = False, []
                self._flapping.discard(key)
                current = "firing" if rec.state == "firing" else rec.prev_state or rec.state
                if current == "pending":
                    current = "resolved"
                if current != rec.notified and (current == "firing" or rec.notified is not None):
                    if current == "firing":
                        rec.last_sent_ns = now_ns
                    out.append(self._event(self.rules[key[1]], rec, current, now_ns))
        if self.renotify_ns is not None:
            for key in sorted(self._firing):
                rec = self.records[key]
                if (
                    not rec.flapping
                    and rec.acked_by is None
                    and rec.notified == "firing"
                    and rec.last_sent_ns is not None
                    and now_ns >= rec.last_sent_ns + self.renotify_ns
                ):
                    rec.last_sent_ns = now_ns
                    out.append(self._event(self.rules[key[1]], rec, "firing", now_ns, renotify=True))
        return out

    def next_due_ns(self) -> int | None:
        """When :meth:`due` has something to do next (None: nothing scheduled)."""
        times: list[int] = []
        for key in self._pending:
            rec = self.records[key]
            times.append(rec.starts_ns + self.rules[key[1]].hold_ns)
        for key in self._flapping:
            changes = self.records[key].changes
            times.append(changes[-1] + self.flap_window_ns if changes else 0)
        if self.renotify_ns is not None:
            for key in self._firing:
                rec = self.records[key]
                if rec.acked_by is None and rec.notified == "firing" and rec.last_sent_ns is not None:
                    times.append(rec.last_sent_ns + self.renotify_ns)
        return min(times) if times else None

    # -- people -------------------------------------------------------------------------------

    def acknowledge(self, alert: str, by: str, now_ns: int) -> AlertEvent | None:
        """Record that ``by`` took the firing alert ``alert``; None if it is not firing or already taken."""
        twin_id, _, rule = alert.rpartition("/")
        rec = self.records.get((twin_id, rule))
        if rec is None or rec.state != "firing" or rec.acked_by is not None:
            return None
        rec.acked_by, rec.acked_ns = by, now_ns
        return self._event(self.rules[rule], rec, "acknowledged", now_ns)

    def counts(self) -> dict[str, int]:
        """Alerts now ``pending``, ``firing`` (not acknowledged) and ``acknowledged`` (firing, taken).

        Worked out from the records (not counted up by events), so it is right after a restore.
        """
        acked = sum(1 for key in self._firing if self.records[key].acked_by is not None)
        return {"pending": len(self._pending), "firing": len(self._firing) - acked, "acknowledged": acked}

    def table(self, state: Literal["firing", "resolved", "pending", "all"] = "all") -> list[dict[str, Any]]:
        """The current alerts as dicts (alert_id, twin_id, rule, state, severity, times, ...)."""
        out = []
        for (twin_id, rule), rec in sorted(self.records.items()):
            if state not in ("all", rec.state):
                continue
            info = self.rules.get(rule)
            out.append(
                {
                    "alert_id": alert_id(twin_id, rule),
                    "twin_id": twin_id,
                    "twin_type": self.twin_type,
                    "rule": rule,
                    "state": rec.state,
                    "severity": info.severity if info else None,
                    "channel": rec.channel,
                    "value": rec.value,
                    "message": rec.message,
                    "starts_ns": rec.starts_ns,
                    "ends_ns": rec.ends_ns,
                    "acked_by": rec.acked_by,
                    "acked_ns": rec.acked_ns,
                    "flapping": rec.flapping,
                    "sequence": rec.sequence,
                }
            )
        return out

    # -- checkpoints ----------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        """Every record as plain JSON-ready dicts."""
        return [asdict(rec) for _, rec in sorted(self.records.items())]

    def restore(self, records: list[dict[str, Any]], rules: dict[str, RuleInfo]) -> None:
        """Load records from :meth:`snapshot`; those of rules no longer in ``rules`` are dropped."""
        self.rules = dict(rules)
        self.records.clear()
        self._pending.clear()
        self._firing.clear()
        self._flapping.clear()
        for data in records:
            rec = AlertRecord(**data)
            if rec.rule not in rules:
                continue
            key = (rec.twin_id, rec.rule)
            self.records[key] = rec
            if rec.state == "pending":
                self._pending.add(key)
            elif rec.state == "firing":
                self._firing.add(key)
            if rec.flapping:
                self._flapping.add(key)


def seconds_to_ns(seconds: float) -> int:
    """Seconds (float) as integer nanoseconds."""
    return round(seconds * NS_PER_S)
