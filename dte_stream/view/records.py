"""Twin records for the view: what a shard publishes about each twin that changed.

A :class:`ViewCollector` sits beside one twin bank (and its alert engine): :meth:`~ViewCollector.note`
takes each :class:`~dte_stream.twins.bank.BankUpdate` (cheap: it keeps the columns it needs),
and :meth:`~ViewCollector.records` builds one record per changed twin from the bank's state.
A record is plain JSON::

    {"twin_id", "twin_type", "labels", "last_seen_ns", "alert_state", "anomaly_score",
     "channels": {name: {"unit", "time_ns", "value", "estimate", "std", "flags", "anomaly_score"}},
     "models": [{"group", "channels", "controls", "states", "mean", "cov", "time_ns", "u"}],
     "alerts": [{"alert_id", "rule", "state", "severity", "starts_ns", "channel", "value",
                 "message", "acked_by"}]}

``models`` holds every filter of the twin: a shared model (one entry, several channels) or a
channel's own filter (one entry per channel); ``mean`` and ``cov`` are the filter's state at
``time_ns`` (in the estimated noise scale), ``u`` the held control inputs. That is what what-if
simulation starts from (:mod:`dte_stream.whatif`). Estimates are ``H x`` of the state, so a
channel's ``estimate`` and its model's ``mean`` always agree.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from dte_stream.batches import AlertEvent
from dte_stream.twins.flags import flag_names

if TYPE_CHECKING:
    from dte_stream.alerts.rules import AlertEngine
    from dte_stream.twins.bank import BankUpdate, TwinBank

__all__ = ["ViewCollector", "alert_row"]

NEVER = np.iinfo(np.int64).min


def _num(x: float) -> float | None:
    return x if math.isfinite(x) else None


def alert_row(event: AlertEvent) -> dict[str, Any]:
    """The view's row of an alert after ``event`` (its latest state)."""
    state = "firing" if event.state == "acknowledged" else event.state
    return {
        "alert_id": event.alert_id,
        "twin_id": event.twin_id,
        "twin_type": event.twin_type,
        "rule": event.rule,
        "state": state,
        "severity": event.severity,
        "starts_ns": event.starts_ns,
        "ends_ns": event.ends_ns,
        "time_ns": event.time_ns,
        "channel": event.channel,
        "value": event.value,
        "message": event.message,
        "acked_by": event.acked_by,
        "sequence": event.sequence,
    }


class ViewCollector:
    """Changes of one twin bank between two publications, and the records they make."""

    def __init__(self) -> None:
        self._twins: list[npt.NDArray[np.str_]] = []
        self._channels: list[npt.NDArray[np.str_]] = []
        self._times: list[npt.NDArray[np.int64]] = []
        self._flags: list[npt.NDArray[np.uint16]] = []
        self._scores: list[npt.NDArray[np.float64]] = []
        self._alert_twins: set[str] = set()
        self._alerts: dict[str, dict[str, Any]] = {}
        # latest flags and score per (twin, channel) published so far
        self._last: dict[tuple[str, str], tuple[int, int, float]] = {}

    def __bool__(self) -> bool:
        return bool(self._twins or self._alert_twins)

    def note(self, update: BankUpdate) -> None:
        """Remember which twins ``update`` touched, with the flags and scores of their rows."""
        est = update.estimates
        if len(est):
            self._twins.append(est.twin_id)
            self._channels.append(est.channel)
            self._times.append(est.time_ns)
            self._flags.append(est.flag_column())
            self._scores.append(est.score_column())
        for event in update.alerts:
            self._alert_twins.add(event.twin_id)
            self._alerts[event.alert_id] = alert_row(event)

    def touch(self, twin_ids: list[str]) -> None:
        """Publish these twins again with the next records (their last write was not delivered)."""
        self._alert_twins.update(twin_ids)

    def forget(self, twin_ids: list[str]) -> None:
        """Twins evicted from the bank: nothing more to publish for them."""
        gone = set(twin_ids)
        self._last = {k: v for k, v in self._last.items() if k[0] not in gone}
        self._alert_twins -= gone

    def records(
        self, bank: TwinBank, alerts: AlertEngine | None, labels: dict[str, str] | None = None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Records of the twins changed since the last call, and the alert rows; clears the changes."""
        changed: set[str] = set(self._alert_twins)
        if self._twins:
            twin = np.concatenate(self._twins)
            channel = np.concatenate(self._channels)
            time = np.concatenate(self._times)
            flags = np.concatenate(self._flags)
            score = np.concatenate(self._scores)
            order = np.lexsort((time, channel, twin))
            twin, channel, time = twin[order], channel[order], time[order]
            flags, score = flags[order], score[order]
            last = np.ones(len(twin), dtype=bool)
            last[:-1] = (twin[1:] != twin[:-1]) | (channel[1:] != channel[:-1])
            for t, c, tm, f, s in zip(
                twin[last].tolist(), channel[last].tolist(), time[last].tolist(),
                flags[last].tolist(), score[last].tolist(), strict=True,
            ):  # fmt: skip
                self._last[(t, c)] = (tm, f, s)
            changed.update(np.unique(twin).tolist())
        alert_rows = list(self._alerts.values())
        self._twins, self._channels, self._times, self._flags, self._scores = [], [], [], [], []
        self._alert_twins, self._alerts = set(), {}
        if not changed:
            return [], alert_rows
        index = {t: i for i, t in enumerate(bank.twin_ids)}
        present = [t for t in sorted(changed) if t in index]
        rows = np.array([index[t] for t in present], dtype=np.intp)
        return self._build(bank, rows, present, alerts, labels or {}), alert_rows

    def _build(
        self,
        bank: TwinBank,
        rows: npt.NDArray[np.intp],
        ids: list[str],
        engine: AlertEngine | None,
        labels: dict[str, str],
    ) -> list[dict[str, Any]]:
        k, width = len(ids), bank.width
        cells = rows[:, None] * width + np.arange(width)[None, :]
        last_value = bank.last_value[cells].tolist()
        last_time = bank.last_time[cells].tolist()
        last_seen = bank.last_seen[rows].tolist()
        estimate = np.full((k, width), np.nan)
        std = np.full((k, width), np.nan)
        models: list[list[dict[str, Any]]] = [[] for _ in range(k)]
        for group in bank.groups:
            mdl = group.model
            st = group.state
            slots = range(len(group.channels)) if group.per_cell else [None]
            for slot in slots:
                srows = rows * group.cells + slot if slot is not None else rows
                x = st.x[srows]
                cov = st.P[srows] * st.scale[srows][:, None, None]
                init = st.initialised[srows]
                members = [group.channels[slot]] if slot is not None else list(group.channels)
                for c in members:
                    i = int(group.local[c])
                    if i < mdl.m:
                        h = mdl.H[i]
                        estimate[:, c] = np.where(init, x @ h, np.nan)
                        var = np.einsum("i,kij,j->k", h, cov, h)
                        std[:, c] = np.where(init, np.sqrt(np.maximum(var, 0.0)), np.nan)
                observes = [bank.channels[c] for c in members if group.local[c] < mdl.m]
                controls = [bank.channels[c] for c in members if group.local[c] >= mdl.m]
                xs, covs, times, us = (
                    x.tolist(),
                    cov.tolist(),
                    st.last_ns[srows].tolist(),
                    st.u[srows].tolist(),
                )
                for j in range(k):
                    if not init[j]:
                        continue
                    models[j].append(
                        {
                            "group": group.name,
                            "channels": observes,
                            "controls": controls,
                            "states": list(mdl.state_names),
                            "mean": xs[j],
                            "cov": covs[j],
                            "time_ns": times[j],
                            "u": us[j],
                        }
                    )
        est_l, std_l = estimate.tolist(), std.tolist()
        by_twin: dict[str, list[dict[str, Any]]] = {}
        if engine is not None:
            wanted = set(ids)
            for a in engine.alerts("all"):
                if a["twin_id"] in wanted:
                    by_twin.setdefault(a["twin_id"], []).append(
                        {key: a[key] for key in _ALERT_KEYS if key in a}
                    )
        units = bank.units.tolist()
        out = []
        for j, twin_id in enumerate(ids):
            channels: dict[str, Any] = {}
            top = -1.0
            for c, name in enumerate(bank.channels):
                t = last_time[j][c]
                tm, flags, score = self._last.get((twin_id, name), (None, 0, math.nan))
                if t == NEVER and tm is None:
                    continue
                if math.isfinite(score):
                    top = max(top, score)
                channels[name] = {
                    "unit": units[c],
                    "time_ns": None if t == NEVER else t,
                    "value": _num(last_value[j][c]),
                    "estimate": _num(est_l[j][c]),
                    "std": _num(std_l[j][c]),
                    "flags": flag_names(flags),
                    "anomaly_score": _num(score),
                }
            twin_alerts = by_twin.get(twin_id, [])
            states = {a["state"] for a in twin_alerts}
            out.append(
                {
                    "twin_id": twin_id,
                    "twin_type": bank.spec.name,
                    "labels": dict(labels),
                    "last_seen_ns": None if last_seen[j] == NEVER else last_seen[j],
                    "alert_state": "firing"
                    if "firing" in states
                    else "pending"
                    if "pending" in states
                    else "ok",
                    "anomaly_score": top if top >= 0 else None,
                    "channels": channels,
                    "models": models[j],
                    "alerts": twin_alerts,
                }
            )
        return out


_ALERT_KEYS = (
    "alert_id", "rule", "state", "severity", "starts_ns", "ends_ns", "channel", "value", "message",
    "acked_by", "acked_ns",
)  # fmt: skip
