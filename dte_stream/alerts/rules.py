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

import ast
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from dte_stream.alerts.lifecycle import AlertBook, RuleInfo, Trigger, seconds_to_ns
from dte_stream.batches import AlertEvent, EstimateBatch
from dte_stream.errors import ConfigError
from dte_stream.spec.alerts import (
    AlertingSpec,
    AlertRuleSpec,
    AnomalyScoreRuleSpec,
    ExpressionRuleSpec,
    NisRuleSpec,
    QualityRuleSpec,
    RateOfChangeRuleSpec,
    SilentTwinRuleSpec,
    StaleRuleSpec,
    ThresholdRuleSpec,
    parse_expression,
)
from dte_stream.times import NS_PER_S
from dte_stream.twins.flags import STALE

__all__ = ["SNAPSHOT_VERSION", "AlertEngine"]

#: Version of :meth:`AlertEngine.snapshot`'s layout.
SNAPSHOT_VERSION = 1

F64 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int8]
Bool = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class _View:
    """A batch's rows sorted by twin then time, with each row's twin code and group starts."""

    twin_ids: npt.NDArray[np.str_]  # unique, sorted; code i is twin_ids[i]
    code: npt.NDArray[np.intp]
    start: Bool  # first row of its twin
    time: npt.NDArray[np.int64]
    channel: npt.NDArray[np.str_]
    value: F64
    estimate: F64
    std: F64
    nis: F64
    score: F64
    flags: npt.NDArray[np.uint16]

    @staticmethod
    def of(batch: EstimateBatch) -> _View:
        twin_ids, code = np.unique(batch.twin_id, return_inverse=True)
        order = np.lexsort((batch.time_ns, code))
        code = code[order]
        start = np.ones(len(code), dtype=bool)
        start[1:] = code[1:] != code[:-1]
        return _View(
            twin_ids, code, start, batch.time_ns[order], batch.channel[order],
            batch.value[order].astype(np.float64), batch.estimate[order].astype(np.float64),
            batch.std[order].astype(np.float64), batch.nis[order].astype(np.float64),
            batch.score_column()[order].astype(np.float64), batch.flag_column()[order],
        )  # fmt: skip


def _starts_of(code: npt.NDArray[np.intp]) -> Bool:
    start = np.ones(len(code), dtype=bool)
    start[1:] = code[1:] != code[:-1]
    return start


def _ends_of(start: Bool) -> npt.NDArray[np.intp]:
    first = np.flatnonzero(start)
    return np.append(first[1:] - 1, len(start) - 1).astype(np.intp)


def _ffill_signal(sig: I8, start: Bool, carry: I8) -> I8:
    """Each row's latest non-zero signal within its group; ``carry`` at group starts without one."""
    v = sig.copy()
    fill = start & (v == 0)
    v[fill] = carry[fill]
    idx = np.where((v != 0) | start, np.arange(len(v)), 0)
    np.maximum.accumulate(idx, out=idx)
    return v[idx]


def _ffill_float(x: F64, start: Bool, carry: F64) -> F64:
    """Each row's latest finite value within its group; ``carry`` at group starts without one."""
    v = x.copy()
    fill = start & ~np.isfinite(v)
    v[fill] = carry[fill]
    idx = np.where(np.isfinite(v) | start, np.arange(len(v)), 0)
    np.maximum.accumulate(idx, out=idx)
    return v[idx]


def _run_lengths(b: Bool, start: Bool, carry: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Length of the run of True ending at each row within its group (``carry`` continues a run)."""
    n = len(b)
    idx = np.arange(n)
    last = np.where(~b | start, idx, 0)
    np.maximum.accumulate(last, out=last)
    open_start = b[last]
    run = idx - last + open_start + np.where(open_start & start[last], carry[last], 0)
    run[~b] = 0
    return run.astype(np.int64)


class _LastValues:
    """A time and a value per twin id, in sorted arrays: vectorised lookup and update."""

    def __init__(self) -> None:
        self.ids: npt.NDArray[np.str_] = np.array([], dtype=str)
        self.time = np.zeros(0, dtype=np.int64)
        self.value = np.zeros(0, dtype=np.float64)

    def _find(self, ids: npt.NDArray[np.str_]) -> tuple[npt.NDArray[np.intp], Bool]:
        pos = np.searchsorted(self.ids, ids)
        ok = pos < len(self.ids)
        ok[ok] = self.ids[pos[ok]] == ids[ok]
        return pos, ok

    def lookup(self, ids: npt.NDArray[np.str_]) -> tuple[npt.NDArray[np.int64], F64]:
        """Time (0 when unknown) and value (NaN when unknown) of each id."""
        pos, ok = self._find(ids)
        t = np.zeros(len(ids), dtype=np.int64)
        v = np.full(len(ids), np.nan)
        t[ok], v[ok] = self.time[pos[ok]], self.value[pos[ok]]
        return t, v

    def store(self, ids: npt.NDArray[np.str_], time: npt.NDArray[np.int64], value: F64) -> None:
        """Set the entries of ``ids`` (unique)."""
        pos, ok = self._find(ids)
        self.time[pos[ok]], self.value[pos[ok]] = time[ok], value[ok]
        if not ok.all():
            all_ids = np.concatenate([self.ids, ids[~ok]])
            order = np.argsort(all_ids, kind="stable")
            self.ids = all_ids[order]
            self.time = np.concatenate([self.time, time[~ok]])[order]
            self.value = np.concatenate([self.value, value[~ok]])[order]

    def drop(self, ids: list[str]) -> None:
        """Forget the entries of ``ids`` (twins evicted by the TTL)."""
        keep = ~np.isin(self.ids, np.asarray(ids, dtype=str))
        self.ids, self.time, self.value = self.ids[keep], self.time[keep], self.value[keep]

    def snapshot(self) -> dict[str, list[Any]]:
        return {"ids": self.ids.tolist(), "time": self.time.tolist(), "value": self.value.tolist()}

    @classmethod
    def restore(cls, data: dict[str, list[Any]] | None) -> _LastValues:
        out = cls()
        if data:
            out.store(
                np.array(data["ids"], dtype=str),
                np.array(data["time"], dtype=np.int64),
                np.array(data["value"], dtype=np.float64),
            )
        return out


class _Rule:
    """A compiled rule: per-row signals over a view, plus any state the signals need."""

    per_channel = True  # the twin's condition is true while any channel's is (else: the latest row's)

    def __init__(self, spec: AlertRuleSpec, channels: list[str]) -> None:
        self.spec = spec
        self.channels = list(spec.watched_channels() or channels)
        self.info = RuleInfo(
            spec.name, spec.severity, dict(spec.labels), seconds_to_ns(spec.holds_for), spec.template(),
            spec.level(),
        )  # fmt: skip
        # twin -> channels whose condition is true (only twins with an active alert)
        self.active_channels: dict[str, set[str]] = {}

    def signals(self, v: _View, mask: Bool) -> tuple[I8, F64]:
        """Per row: +1 / -1 / 0 and the quantity compared (rows outside ``mask`` must be 0)."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, data: dict[str, Any]) -> None:
        return None


def _tri(on: Bool, off: Bool, mask: Bool) -> I8:
    return (np.where(on & mask, 1, 0) - np.where(off & mask & ~on, 1, 0)).astype(np.int8)


class _Threshold(_Rule):
    spec: ThresholdRuleSpec

    def signals(self, v: _View, mask: Bool) -> tuple[I8, F64]:
        x = v.value if self.spec.signal == "value" else v.estimate
        level, clear = self.spec.level(), self.spec.clear_level()
        if self.spec.above is not None:
            return _tri(x > level, x <= clear, mask), x
        return _tri(x < level, x >= clear, mask), x


class _Anomaly(_Rule):
    spec: AnomalyScoreRuleSpec

    def signals(self, v: _View, mask: Bool) -> tuple[I8, F64]:
        s = v.score
        return _tri(s >= self.spec.level(), s < self.spec.clear_level(), mask), s


class _Quality(_Rule):
    spec: QualityRuleSpec

    def signals(self, v: _View, mask: Bool) -> tuple[I8, F64]:
        hit = (v.flags & self.spec.flag_mask()) != 0
        return _tri(hit, np.isfinite(v.value), mask), v.value


class _Stale(_Rule):
    spec: StaleRuleSpec

    def signals(self, v: _View, mask: Bool) -> tuple[I8, F64]:
        stale = (v.flags & STALE) != 0
        return _tri(stale, np.isfinite(v.value), mask), v.value


class _Rate(_Rule):
    spec: RateOfChangeRuleSpec

    def __init__(self, spec: AlertRuleSpec, channels: list[str]) -> None:
        super().__init__(spec, channels)
        self.last = {c: _LastValues() for c in self.channels}  # (time, estimate) per twin

    def signals(self, v: _View, mask: Bool) -> tuple[I8, F64]:
        rate = np.full(len(v.time), np.nan)
        usable = mask & np.isfinite(v.value) & np.isfinite(v.estimate)
        for c in self.channels:
            rows = np.flatnonzero(usable & (v.channel == c))
            if not len(rows):
                continue
            code, t, est = v.code[rows], v.time[rows], v.estimate[rows]
            start = _starts_of(code)
            prev_t, prev_e = np.roll(t, 1), np.roll(est, 1)
            carry_t, carry_e = self.last[c].lookup(v.twin_ids[code[start]])
            prev_t[start], prev_e[start] = carry_t, carry_e
            dt = (t - prev_t).astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                rate[rows] = np.where(dt > 0, (est - prev_e) / dt * NS_PER_S, np.nan)
            ends = _ends_of(start)
            self.last[c].store(v.twin_ids[code[ends]], t[ends], est[ends])
        mag = {"up": rate, "down": -rate, "both": np.abs(rate)}[self.spec.direction]
        return _tri(mag > self.spec.above, mag <= self.spec.clear_level(), mask), rate

    def state(self) -> dict[str, Any]:
        return {"last": {c: store.snapshot() for c, store in self.last.items()}}

    def load_state(self, data: dict[str, Any]) -> None:
        for c, store in data.get("last", {}).items():
            if c in self.last:
                self.last[c] = _LastValues.restore(store)


class _Nis(_Rule):
    spec: NisRuleSpec

    def __init__(self, spec: AlertRuleSpec, channels: list[str]) -> None:
        super().__init__(spec, channels)
        # (twin, channel) -> (high run, low run), only for runs shorter than `readings`
        self.runs: dict[tuple[str, str], tuple[int, int]] = {}

    def signals(self, v: _View, mask: Bool) -> tuple[I8, F64]:
        need, level = self.spec.readings, self.spec.level()
        sig = np.zeros(len(v.time), dtype=np.int8)
        usable = mask & np.isfinite(v.nis)
        for c in self.channels:
            rows = np.flatnonzero(usable & (v.channel == c))
            if not len(rows):
                continue
            code = v.code[rows]
            start = _starts_of(code)
            first = np.flatnonzero(start)
            ids = v.twin_ids[code[first]]
            carry_hi = np.zeros(len(rows), dtype=np.int64)
            carry_lo = np.zeros(len(rows), dtype=np.int64)
            for (twin, ch), (hi, lo) in list(self.runs.items()):  # few: only unfinished runs
                if ch != c:
                    continue
                k = int(np.searchsorted(ids, twin))
                if k < len(ids) and ids[k] == twin:
                    carry_hi[first[k]], carry_lo[first[k]] = hi, lo
                    del self.runs[(twin, ch)]
            high = v.nis[rows] >= level
            hi_run = _run_lengths(high, start, carry_hi)
            lo_run = _run_lengths(~high, start, carry_lo)
            sig[rows] = np.where(hi_run >= need, 1, np.where(lo_run >= need, -1, 0))
            ends = _ends_of(start)
            hi_end, lo_end = hi_run[ends], lo_run[ends]
            # Low runs matter only while the channel's condition is true: keep them for twins
            # active before this batch or that fired in it (the dict stays small).
            fired = np.maximum.reduceat((sig[rows] > 0).astype(np.int8), first) > 0
            active = [t for t, chans in self.active_channels.items() if c in chans]
            matters = fired | np.isin(ids, np.array(active, dtype=str))
            keep = ((hi_end > 0) & (hi_end < need)) | ((lo_end > 0) & (lo_end < need) & matters)
            for k in np.flatnonzero(keep).tolist():
                self.runs[(str(ids[k]), c)] = (int(hi_end[k]), int(lo_end[k]))
        return sig, v.nis

    def state(self) -> dict[str, Any]:
        return {"runs": [[t, c, hi, lo] for (t, c), (hi, lo) in sorted(self.runs.items())]}

    def load_state(self, data: dict[str, Any]) -> None:
        self.runs = {(t, c): (int(hi), int(lo)) for t, c, hi, lo in data.get("runs", [])}


_ATTR_COLUMN = {"value": "value", "estimate": "estimate", "std": "std", "anomaly_score": "score"}


class _Expression(_Rule):
    spec: ExpressionRuleSpec
    per_channel = False

    def __init__(self, spec: AlertRuleSpec, channels: list[str]) -> None:
        super().__init__(spec, channels)
        self.tree = parse_expression(self.spec.expression)
        self.refs = sorted(
            {(n.id, "value") for n in ast.walk(self.tree) if isinstance(n, ast.Name) and n.id != "abs"}
            | {
                (n.value.id, n.attr)
                for n in ast.walk(self.tree)
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
            }
        )
        self.last = {f"{c}.{a}": _LastValues() for c, a in self.refs}

    def signals(self, v: _View, mask: Bool) -> tuple[I8, F64]:
        n = len(v.time)
        ends = _ends_of(v.start)
        end_ids = v.twin_ids[v.code[ends]]
        reading = np.isfinite(v.value)
        inputs: dict[tuple[str, str], F64] = {}
        for c, a in self.refs:
            col: F64 = getattr(v, _ATTR_COLUMN[a])
            x = np.where((v.channel == c) & reading, col, np.nan)
            carry = np.full(n, np.nan)
            carry[v.start] = self.last[f"{c}.{a}"].lookup(v.twin_ids[v.code[v.start]])[1]
            filled = _ffill_float(x, v.start, carry)
            inputs[(c, a)] = filled
            done = np.isfinite(filled[ends])
            self.last[f"{c}.{a}"].store(end_ids[done], v.time[ends][done], filled[ends][done])
        known = np.logical_and.reduce([np.isfinite(x) for x in inputs.values()])
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            result = _truthy(_evaluate(self.tree.body, lambda c, a: inputs[(c, a)]))
        at = mask & reading & known
        return _tri(result, ~result, at), np.full(n, np.nan)

    def state(self) -> dict[str, Any]:
        return {"last": {k: store.snapshot() for k, store in self.last.items()}}

    def load_state(self, data: dict[str, Any]) -> None:
        for k, store in data.get("last", {}).items():
            if k in self.last:
                self.last[k] = _LastValues.restore(store)


def _truthy(x: npt.NDArray[Any]) -> Bool:
    return x.astype(bool) if x.dtype == np.bool_ else np.asarray(x != 0, dtype=bool)


def _evaluate(node: ast.expr, get: Callable[[str, str], F64]) -> npt.NDArray[Any]:
    """Evaluate a checked expression (see ``parse_expression``) over arrays."""
    if isinstance(node, ast.Constant):
        return np.asarray(float(node.value) if isinstance(node.value, int | float) else np.nan)
    if isinstance(node, ast.Name):
        return get(node.id, "value")
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return get(node.value.id, node.attr)
    if isinstance(node, ast.Call):
        return np.asarray(np.abs(_evaluate(node.args[0], get)))
    if isinstance(node, ast.UnaryOp):
        x = _evaluate(node.operand, get)
        if isinstance(node.op, ast.Not):
            return np.logical_not(_truthy(x))
        return np.negative(x) if isinstance(node.op, ast.USub) else x
    if isinstance(node, ast.BoolOp):
        parts = [_truthy(_evaluate(value, get)) for value in node.values]
        combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        return np.asarray(combine.reduce(parts))
    if isinstance(node, ast.BinOp):
        a, b = _evaluate(node.left, get), _evaluate(node.right, get)
        ops: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
            ast.Add: np.add,
            ast.Sub: np.subtract,
            ast.Mult: np.multiply,
            ast.Div: np.divide,
        }
        return np.asarray(ops[type(node.op)](a, b))
    if isinstance(node, ast.Compare):
        cmps: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
            ast.Lt: np.less, ast.LtE: np.less_equal, ast.Gt: np.greater, ast.GtE: np.greater_equal,
            ast.Eq: np.equal, ast.NotEq: np.not_equal,
        }  # fmt: skip
        out: npt.NDArray[Any] = np.asarray(True)
        left = _evaluate(node.left, get)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _evaluate(comparator, get)
            out = np.logical_and(out, cmps[type(op)](left, right))
            left = right
        return out
    raise ValueError(f"expression: {type(node).__name__} is not allowed")  # parse_expression refused it


_KINDS: dict[str, type[_Rule]] = {
    "threshold": _Threshold,
    "rate_of_change": _Rate,
    "anomaly_score": _Anomaly,
    "nis": _Nis,
    "stale": _Stale,
    "quality": _Quality,
    "expression": _Expression,
}


class _Silent:
    """Deadman: the last reading time of every twin, found silent by :meth:`AlertEngine.due`."""

    def __init__(self, spec: SilentTwinRuleSpec, channels: list[str]) -> None:
        self.spec = spec
        self.channels = list(spec.channels or channels)
        self.after_ns = seconds_to_ns(spec.after)
        self.info = RuleInfo(
            spec.name, spec.severity, dict(spec.labels), seconds_to_ns(spec.holds_for), spec.template(),
            spec.level(),
        )  # fmt: skip
        self.seen = _LastValues()


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
        self._rules: list[_Rule] = []
        self._silent: list[_Silent] = []
        for rule in spec.rules:
            if isinstance(rule, SilentTwinRuleSpec):
                self._silent.append(_Silent(rule, self.channels))
            else:
                self._rules.append(_KINDS[rule.kind](rule, self.channels))
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
        v = _View.of(batch)
        events: list[AlertEvent] = []
        for rule in self._rules:
            mask = np.isin(v.channel, rule.channels)
            sig, compared = rule.signals(v, mask)
            events += self._apply(rule, v, mask, sig, compared)
        for silent in self._silent:
            events += self._heard(silent, v)
        return events

    def _apply(self, rule: _Rule, v: _View, mask: Bool, sig: I8, compared: F64) -> list[AlertEvent]:
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
        start = _starts_of(code)
        first, ends = np.flatnonzero(start), _ends_of(start)
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
                cond_c = _ffill_signal(np.where(ch == c, s, 0).astype(np.int8), start, carry) > 0
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
            cond = _ffill_signal(s, start, carry) > 0
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

    def _heard(self, silent: _Silent, v: _View) -> list[AlertEvent]:
        """Readings of silent_twin's channels: remember when, resolve silent twins that spoke."""
        rows = np.flatnonzero(np.isin(v.channel, silent.channels) & np.isfinite(v.value))
        if not len(rows):
            return []
        code = v.code[rows]
        start = _starts_of(code)
        first, ends = rows[start], rows[_ends_of(start)]
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
                silent.seen = _LastValues.restore(saved[silent.info.name].get("seen"))
        return engine


def _kind_of(engine: AlertEngine, name: str) -> str:
    kinds = {rule.info.name: rule.spec.kind for rule in engine._rules}
    kinds.update({rule.info.name: rule.spec.kind for rule in engine._silent})
    return kinds.get(name, "")


def _num(x: float | np.floating[Any]) -> float | None:
    value = float(x)
    return value if math.isfinite(value) else None
