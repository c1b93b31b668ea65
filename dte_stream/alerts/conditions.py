"""What alert rules compute over a batch: a per-row condition signal for each rule.

One :class:`Rule` class per rule kind (:data:`RULE_KINDS`), each turning a batch's rows, sorted
into runs per twin (:mod:`dte_stream.alerts.runs`), into +1 (condition true), -1 (false) or 0
(no information); and :class:`SilentRule`, whose condition is the absence of rows. The
lifecycle of the alerts these signals raise is :class:`~dte_stream.alerts.rules.AlertEngine`'s.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from dte_stream.alerts.lifecycle import RuleInfo, seconds_to_ns
from dte_stream.alerts.runs import (
    F64,
    I8,
    Bool,
    LastValues,
    View,
    ends_of,
    ffill_float,
    run_lengths,
    starts_of,
)
from dte_stream.spec.alerts import (
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

__all__ = ["RULE_KINDS", "Rule", "SilentRule"]


class Rule:
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

    def signals(self, v: View, mask: Bool) -> tuple[I8, F64]:
        """Per row: +1 / -1 / 0 and the quantity compared (rows outside ``mask`` must be 0)."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, data: dict[str, Any]) -> None:
        return None


def _tri(on: Bool, off: Bool, mask: Bool) -> I8:
    return (np.where(on & mask, 1, 0) - np.where(off & mask & ~on, 1, 0)).astype(np.int8)


class _Threshold(Rule):
    spec: ThresholdRuleSpec

    def signals(self, v: View, mask: Bool) -> tuple[I8, F64]:
        x = v.value if self.spec.signal == "value" else v.estimate
        level, clear = self.spec.level(), self.spec.clear_level()
        if self.spec.above is not None:
            return _tri(x > level, x <= clear, mask), x
        return _tri(x < level, x >= clear, mask), x


class _Anomaly(Rule):
    spec: AnomalyScoreRuleSpec

    def signals(self, v: View, mask: Bool) -> tuple[I8, F64]:
        s = v.score
        return _tri(s >= self.spec.level(), s < self.spec.clear_level(), mask), s


class _Quality(Rule):
    spec: QualityRuleSpec

    def signals(self, v: View, mask: Bool) -> tuple[I8, F64]:
        hit = (v.flags & self.spec.flag_mask()) != 0
        return _tri(hit, np.isfinite(v.value), mask), v.value


class _Stale(Rule):
    spec: StaleRuleSpec

    def signals(self, v: View, mask: Bool) -> tuple[I8, F64]:
        stale = (v.flags & STALE) != 0
        return _tri(stale, np.isfinite(v.value), mask), v.value


class _Rate(Rule):
    spec: RateOfChangeRuleSpec

    def __init__(self, spec: AlertRuleSpec, channels: list[str]) -> None:
        super().__init__(spec, channels)
        self.last = {c: LastValues() for c in self.channels}  # (time, estimate) per twin

    def signals(self, v: View, mask: Bool) -> tuple[I8, F64]:
        rate = np.full(len(v.time), np.nan)
        usable = mask & np.isfinite(v.value) & np.isfinite(v.estimate)
        for c in self.channels:
            rows = np.flatnonzero(usable & (v.channel == c))
            if not len(rows):
                continue
            code, t, est = v.code[rows], v.time[rows], v.estimate[rows]
            start = starts_of(code)
            prev_t, prev_e = np.roll(t, 1), np.roll(est, 1)
            carry_t, carry_e = self.last[c].lookup(v.twin_ids[code[start]])
            prev_t[start], prev_e[start] = carry_t, carry_e
            dt = (t - prev_t).astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                rate[rows] = np.where(dt > 0, (est - prev_e) / dt * NS_PER_S, np.nan)
            ends = ends_of(start)
            self.last[c].store(v.twin_ids[code[ends]], t[ends], est[ends])
        mag = {"up": rate, "down": -rate, "both": np.abs(rate)}[self.spec.direction]
        return _tri(mag > self.spec.above, mag <= self.spec.clear_level(), mask), rate

    def state(self) -> dict[str, Any]:
        return {"last": {c: store.snapshot() for c, store in self.last.items()}}

    def load_state(self, data: dict[str, Any]) -> None:
        for c, store in data.get("last", {}).items():
            if c in self.last:
                self.last[c] = LastValues.restore(store)


class _Nis(Rule):
    spec: NisRuleSpec

    def __init__(self, spec: AlertRuleSpec, channels: list[str]) -> None:
        super().__init__(spec, channels)
        # (twin, channel) -> (high run, low run), only for runs shorter than `readings`
        self.runs: dict[tuple[str, str], tuple[int, int]] = {}

    def signals(self, v: View, mask: Bool) -> tuple[I8, F64]:
        need, level = self.spec.readings, self.spec.level()
        sig = np.zeros(len(v.time), dtype=np.int8)
        usable = mask & np.isfinite(v.nis)
        for c in self.channels:
            rows = np.flatnonzero(usable & (v.channel == c))
            if not len(rows):
                continue
            code = v.code[rows]
            start = starts_of(code)
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
            hi_run = run_lengths(high, start, carry_hi)
            lo_run = run_lengths(~high, start, carry_lo)
            sig[rows] = np.where(hi_run >= need, 1, np.where(lo_run >= need, -1, 0))
            ends = ends_of(start)
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


class _Expression(Rule):
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
        self.last = {f"{c}.{a}": LastValues() for c, a in self.refs}

    def signals(self, v: View, mask: Bool) -> tuple[I8, F64]:
        n = len(v.time)
        ends = ends_of(v.start)
        end_ids = v.twin_ids[v.code[ends]]
        reading = np.isfinite(v.value)
        inputs: dict[tuple[str, str], F64] = {}
        for c, a in self.refs:
            col: F64 = getattr(v, _ATTR_COLUMN[a])
            x = np.where((v.channel == c) & reading, col, np.nan)
            carry = np.full(n, np.nan)
            carry[v.start] = self.last[f"{c}.{a}"].lookup(v.twin_ids[v.code[v.start]])[1]
            filled = ffill_float(x, v.start, carry)
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
                self.last[k] = LastValues.restore(store)


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


RULE_KINDS: dict[str, type[Rule]] = {
    "threshold": _Threshold,
    "rate_of_change": _Rate,
    "anomaly_score": _Anomaly,
    "nis": _Nis,
    "stale": _Stale,
    "quality": _Quality,
    "expression": _Expression,
}


class SilentRule:
    """Deadman: the last reading time of every twin, found silent by :meth:`AlertEngine.due`."""

    def __init__(self, spec: SilentTwinRuleSpec, channels: list[str]) -> None:
        self.spec = spec
        self.channels = list(spec.channels or channels)
        self.after_ns = seconds_to_ns(spec.after)
        self.info = RuleInfo(
            spec.name, spec.severity, dict(spec.labels), seconds_to_ns(spec.holds_for), spec.template(),
            spec.level(),
        )  # fmt: skip
        self.seen = LastValues()
