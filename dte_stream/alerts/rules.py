"""The alert rule engine: a twin type's rules evaluated over each batch of estimates.

:class:`AlertEngine` takes the :class:`~dte_stream.batches.EstimateBatch` of every
micro-batch and returns the :class:`~dte_stream.batches.AlertEvent` state changes.
Conditions are column comparisons over the whole batch (rows sorted by twin and time); each
rule's per-row signal (+1 condition true, -1 condition false, 0 no information, such as a
reading between a threshold and its ``clear`` level) is forward-filled per twin and channel,
and Python runs only where a twin's condition changes (and for twins whose alert is active).
The lifecycle (holds, flapping, re-notification, acknowledgement) is
:class:`~dte_stream.alerts.lifecycle.AlertBook`'s.

Timers: ``silent_twin`` rules, ``holds_for`` expiry without new readings, flapping alerts
becoming stable and re-notifications happen in :meth:`AlertEngine.due`; call it when
:meth:`AlertEngine.next_due_ns` has passed (or regularly).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from dte_stream.alerts.conditions import RULE_KINDS, Rule, SilentRule
from dte_stream.alerts.lifecycle import AlertBook, Trigger, seconds_to_ns
from dte_stream.alerts.runs import LastValues, View, ends_of, ffill_signal, starts_of
from dte_stream.batches import AlertEvent, EstimateBatch
from dte_stream.errors import ConfigError
from dte_stream.spec.alerts import (
    AlertingSpec,
    SilentTwinRuleSpec,
)
from dte_stream.times import NS_PER_S

__all__ = ["SNAPSHOT_VERSION", "AlertEngine"]

#: Version of :meth:`AlertEngine.snapshot`'s layout.
SNAPSHOT_VERSION = 1

F64 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int8]
Bool = npt.NDArray[np.bool_]


class AlertEngine:
    """The alert rules of one twin type, evaluated over its estimate batches.

    ``update(batch, now_ns)`` returns the alert events the batch causes (state changes only:
    a firing alert stays silent however many readings keep it firing); ``due(now_ns)`` those
    of timers (silent twins, holds, flapping, re-notification), next due at ``next_due_ns()``.
    Condition times are the readings' event times.

    >>> import numpy as np
    >>> from dte_stream.spec.alerts import AlertingSpec
    >>> spec = AlertingSpec.model_validate({"rules": [
    ...     {"kind": "threshold", "name": "hot", "above": 90, "clear": 85,
    ...      "message": "{value:.0f} > {level:.0f}"}]})
    >>> engine = AlertEngine("pump", ["temperature"], spec)
    >>> def batch(values):
    ...     n = len(values)
    ...     return EstimateBatch("pump", np.array(["p1"] * n), np.array(["temperature"] * n),
    ...         np.arange(n, dtype=np.int64) * 10**9, np.array(values, float), np.array([""] * n),
    ...         np.array(values, float), np.ones(n), np.zeros(n), np.zeros(n))
    >>> [(e.state, e.message) for e in engine.update(batch([80, 91, 89, 92, 84]), now_ns=0)]
    [('firing', '91 > 90'), ('resolved', '91 > 90')]
    """

    def __init__(self, twin_type: str, channels: list[str], spec: AlertingSpec) -> None:
        problems = spec.check_rules(channels)
        if problems:
            raise ConfigError(f"alert rules of twin type {twin_type!r}: " + "; ".join(problems))
        self.twin_type = twin_type
        self.channels = list(channels)
        self.spec = spec
        self._rules: list[Rule] = []
        self._silent: list[SilentRule] = []
        for rule in spec.rules:
            if isinstance(rule, SilentTwinRuleSpec):
                self._silent.append(SilentRule(rule, self.channels))
            else:
                self._rules.append(RULE_KINDS[rule.kind](rule, self.channels))
        self._book = AlertBook(
            twin_type,
            renotify_ns=None if spec.renotify_every is None else seconds_to_ns(spec.renotify_every),
            flap_window_ns=seconds_to_ns(spec.flapping.window),
            flap_max_changes=spec.flapping.max_changes,
        )
        self._book.rules = {r.info.name: r.info for r in self._rules}
        self._book.rules.update({r.info.name: r.info for r in self._silent})

    # -- readings -------------------------------------------------------------------------------

    def update(self, batch: EstimateBatch, now_ns: int) -> list[AlertEvent]:
        """The alert events of one batch of estimates (``now_ns``: processing time, for the record)."""
        del now_ns  # conditions use the readings' event times; timers run in due()
        if len(batch) == 0:
            return []
        if batch.twin_type != self.twin_type:
            raise ValueError(f"batch of twin type {batch.twin_type!r} given to the {self.twin_type!r} engine")
        v = View.of(batch)
        events: list[AlertEvent] = []
        for rule in self._rules:
            mask = np.isin(v.channel, rule.channels)
            sig, compared = rule.signals(v, mask)
            events += self._apply(rule, v, mask, sig, compared)
        for silent in self._silent:
            events += self._heard(silent, v)
        return events

    def _apply(self, rule: Rule, v: View, mask: Bool, sig: I8, compared: F64) -> list[AlertEvent]:
        """Turn one rule's signals into condition changes of the twins where it matters."""
        name = rule.info.name
        hot = np.unique(v.code[sig > 0])
        active = sorted(self._book.active_twins(name))
        if active:
            ids = np.array(active, dtype=str)
            pos = np.minimum(np.searchsorted(v.twin_ids, ids), len(v.twin_ids) - 1)
            hot = np.union1d(hot, pos[v.twin_ids[pos] == ids])
        if not len(hot):
            return []
        rows = np.flatnonzero(mask & np.isin(v.code, hot))
        if not len(rows):
            return []
        code, ch, s = v.code[rows], v.channel[rows], sig[rows]
        start = starts_of(code)
        first, ends = np.flatnonzero(start), ends_of(start)
        group_ids = v.twin_ids[code[first]]
        n = len(rows)
        cond = np.zeros(n, dtype=bool)
        if rule.per_channel:
            names = sorted(
                set(np.unique(ch).tolist()) | {c for t in active for c in rule.active_channels.get(t, ())}
            )
            at_end: dict[str, Bool] = {}
            for c in names:
                carry = np.zeros(n, dtype=np.int8)
                for k, twin in enumerate(group_ids.tolist()):
                    if c in rule.active_channels.get(twin, ()):
                        carry[first[k]] = 1
                cond_c = ffill_signal(np.where(ch == c, s, 0).astype(np.int8), start, carry) > 0
                cond |= cond_c
                at_end[c] = cond_c[ends]
            for k, twin in enumerate(group_ids.tolist()):
                on = {c for c in names if at_end[c][k]}
                if on:
                    rule.active_channels[twin] = on
                else:
                    rule.active_channels.pop(twin, None)
        else:
            carry = np.zeros(n, dtype=np.int8)
            for k, twin in enumerate(group_ids.tolist()):
                carry[first[k]] = 1 if self._book.is_active(twin, name) else -1
            cond = ffill_signal(s, start, carry) > 0
        change = start.copy()
        change[1:] |= cond[1:] != cond[:-1]
        seg_first = np.flatnonzero(change)
        seg_last = np.append(seg_first[1:] - 1, n - 1)
        events: list[AlertEvent] = []
        for f, last in zip(seg_first.tolist(), seg_last.tolist(), strict=True):
            r = int(rows[f])
            twin = str(v.twin_ids[v.code[r]])
            trigger = Trigger(
                int(v.time[r]), str(v.channel[r]), _num(compared[r]), _num(v.value[r]), _num(v.estimate[r])
            )
            events += self._book.condition(rule.info, twin, bool(cond[f]), trigger)
            if cond[f]:
                events += self._book.seen(rule.info, twin, int(v.time[rows[last]]))
        return events

    def _heard(self, silent: SilentRule, v: View) -> list[AlertEvent]:
        """Readings of silent_twin's channels: remember when, resolve silent twins that spoke."""
        rows = np.flatnonzero(np.isin(v.channel, silent.channels) & np.isfinite(v.value))
        if not len(rows):
            return []
        code = v.code[rows]
        start = starts_of(code)
        first, ends = rows[start], rows[ends_of(start)]
        ids = v.twin_ids[v.code[first]]
        silent.seen.store(ids, v.time[ends], np.zeros(len(ids)))
        events: list[AlertEvent] = []
        for twin in sorted(self._book.active_twins(silent.info.name)):
            k = int(np.searchsorted(ids, twin))
            if k < len(ids) and ids[k] == twin:
                r = int(first[k])
                trigger = Trigger(
                    int(v.time[r]), str(v.channel[r]), None, _num(v.value[r]), _num(v.estimate[r])
                )
                events += self._book.condition(silent.info, twin, False, trigger)
        return events

    # -- timers ---------------------------------------------------------------------------------

    def due(self, now_ns: int) -> list[AlertEvent]:
        """Events of timers due at ``now_ns``: silent twins, holds over, stable flapping, re-notifications."""
        events: list[AlertEvent] = []
        for silent in self._silent:
            deadline = silent.seen.time + silent.after_ns
            late = np.flatnonzero(deadline <= now_ns)
            for k in late.tolist():
                twin = str(silent.seen.ids[k])
                if self._book.is_active(twin, silent.info.name):
                    continue
                quiet_s = (now_ns - int(silent.seen.time[k])) / NS_PER_S
                trigger = Trigger(int(deadline[k]), None, quiet_s)
                events += self._book.condition(silent.info, twin, True, trigger)
        events += self._book.due(now_ns)
        return events

    def next_due_ns(self) -> int | None:
        """When :meth:`due` has something to do next; None when nothing is scheduled."""
        times: list[int] = []
        book_next = self._book.next_due_ns()
        if book_next is not None:
            times.append(book_next)
        for silent in self._silent:
            if not len(silent.seen.ids):
                continue
            active = self._book.active_twins(silent.info.name)
            waiting = ~np.isin(silent.seen.ids, np.array(sorted(active), dtype=str)) if active else None
            deadline = silent.seen.time + silent.after_ns
            if waiting is not None:
                deadline = deadline[waiting]
            if len(deadline):
                times.append(int(deadline.min()))
        return min(times) if times else None

    # -- people and tables ------------------------------------------------------------------------

    def forget(self, twin_ids: list[str]) -> None:
        """Twins evicted by the TTL: no deadman for them, and their resolved alerts are dropped.

        Alerts still pending or firing are kept, so that their resolution still comes if the
        twin reports again; a forgotten twin that reports again starts its alerts afresh.
        """
        if not twin_ids:
            return
        for silent in self._silent:
            silent.seen.drop(twin_ids)
        self._book.forget(set(twin_ids))

    def acknowledge(self, alert_id: str, by: str, now_ns: int) -> AlertEvent | None:
        """Record that ``by`` took the firing alert; the ``acknowledged`` event, or None if not firing."""
        return self._book.acknowledge(alert_id, by, now_ns)

    def counts(self) -> dict[str, int]:
        """How many alerts are ``pending``, ``firing`` (not acknowledged) and ``acknowledged`` now."""
        return self._book.counts()

    def alerts(self, state: Literal["firing", "resolved", "all"] = "all") -> list[dict[str, Any]]:
        """The alert table: one dict per alert (``all`` includes ``pending`` ones), by twin and rule."""
        return self._book.table(state)

    # -- checkpoints --------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The engine's state as JSON-ready data: alerts (with their sequences) and rule state."""
        rules: dict[str, Any] = {}
        for rule in self._rules:
            rules[rule.info.name] = {
                "kind": rule.spec.kind,
                "active_channels": {t: sorted(cs) for t, cs in sorted(rule.active_channels.items())},
                **rule.state(),
            }
        for silent in self._silent:
            rules[silent.info.name] = {"kind": silent.spec.kind, "seen": silent.seen.snapshot()}
        return {
            "version": SNAPSHOT_VERSION,
            "twin_type": self.twin_type,
            "alerts": self._book.snapshot(),
            "rules": rules,
        }

    @classmethod
    def restore(
        cls, twin_type: str, channels: list[str], spec: AlertingSpec, snap: dict[str, Any]
    ) -> AlertEngine:
        """An engine for ``spec`` carrying on from ``snap``; state of rules whose kind changed is dropped."""
        if snap.get("version") != SNAPSHOT_VERSION:
            raise ConfigError(
                f"alert engine snapshot version {snap.get('version')!r} is not {SNAPSHOT_VERSION}"
            )
        engine = cls(twin_type, channels, spec)
        saved = snap.get("rules", {})
        same = {
            name
            for name, data in saved.items()
            if name in engine._book.rules and data.get("kind") == _kind_of(engine, name)
        }
        engine._book.restore([r for r in snap.get("alerts", []) if r["rule"] in same], engine._book.rules)
        for rule in engine._rules:
            if rule.info.name in same:
                data = saved[rule.info.name]
                rule.active_channels = {t: set(cs) for t, cs in data.get("active_channels", {}).items()}
                rule.load_state(data)
        for silent in engine._silent:
            if silent.info.name in same:
                silent.seen = LastValues.restore(saved[silent.info.name].get("seen"))
        return engine


def _kind_of(engine: AlertEngine, name: str) -> str:
    kinds = {rule.info.name: rule.spec.kind for rule in engine._rules}
    kinds.update({rule.info.name: rule.spec.kind for rule in engine._silent})
    return kinds.get(name, "")


def _num(x: float | np.floating[Any]) -> float | None:
    value = float(x)
    return value if math.isfinite(value) else None
