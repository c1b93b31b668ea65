"""Twin records for the view: what a shard publishes about each twin that changed.

Two steps, so that the dataflow pays only for the first:

- :func:`gather` takes the state of some twins of a bank, column-wise (numpy gathers of the
  rows asked for: a few milliseconds for 10,000 twins), into a :class:`ViewColumns`, which
  pickles as a handful of arrays;
- :func:`build_records` turns it into one plain-JSON record per twin (Python work per twin),
  in the view's writer process (:mod:`dte_stream.view.process`) or, for a synchronous writer,
  in the caller.

A record::

    {"twin_id", "twin_type", "labels", "last_seen_ns", "alert_state", "anomaly_score",
     "channels": {name: {"unit", "time_ns", "value", "estimate", "std", "flags", "anomaly_score"}},
     "models": [{"group", "channels", "controls", "states", "mean", "cov", "time_ns", "u"}],
     "alerts": [{"alert_id", "rule", "state", "severity", "starts_ns", "channel", "value",
                 "message", "acked_by"}]}

``models`` holds every filter of the twin: a shared model (one entry, several channels) or a
channel's own filter (one entry per channel); ``mean`` and ``cov`` are the filter's state at
``time_ns`` (in the estimated noise scale), ``u`` the held control inputs. That is what what-if
simulation starts from (:mod:`dte_stream.whatif`). Estimates are ``H x`` of the state, so a
channel's ``estimate`` and its model's ``mean`` always agree. A channel's ``flags`` and
``anomaly_score`` are those of its latest reading (a stale sensor keeps ``stale``).

:class:`ViewCollector` is the in-process shortcut (tests, examples): it notes the twins that
updates touched and builds their records at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from dte_stream.twins.flags import flag_names
from dte_stream.twins.state_view import alerts_by_twin

if TYPE_CHECKING:
    from dte_stream.alerts.rules import AlertEngine
    from dte_stream.batches import AlertEvent
    from dte_stream.twins.bank import BankUpdate, TwinBank

__all__ = [
    "RECORD_CHUNK",
    "ModelColumns",
    "ViewCollector",
    "ViewColumns",
    "alert_row",
    "build_records",
    "gather",
    "record_chunks",
]

NEVER = np.iinfo(np.int64).min

F64 = npt.NDArray[np.float64]


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


@dataclass(eq=False)
class ModelColumns:
    """One filter (a shared model, or one channel's own filter) for the gathered twins.

    ``observe`` maps type channel columns to their row of the model's ``H``; ``x`` is ``(n, k)``,
    ``cov`` ``(n, k, k)`` (scaled), ``init`` whether the filter has started, ``time_ns`` the
    time of its state and ``u`` the held control inputs.
    """

    group: str
    channels: list[str]
    controls: list[str]
    states: list[str]
    observe: list[tuple[int, list[float]]]
    x: F64
    cov: F64
    init: npt.NDArray[np.bool_]
    time_ns: npt.NDArray[np.int64]
    u: F64


@dataclass(eq=False)
class ViewColumns:
    """The state of some twins of one type, column-wise: what :func:`build_records` needs.

    First axis: twins; second: the type's ``channels``. ``alerts`` holds each twin's alerts
    (from the engine's table); ``removed`` the twins evicted since the last gather.
    """

    twin_type: str
    channels: list[str]
    units: list[str]
    twin_id: npt.NDArray[np.str_]
    last_seen: npt.NDArray[np.int64]
    last_time: npt.NDArray[np.int64]
    last_value: F64
    flags: npt.NDArray[np.uint16]
    score: F64
    models: list[ModelColumns]
    alerts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    written_by: str | None = None

    def __len__(self) -> int:
        return int(self.twin_id.shape[0])

    def take(self, index: npt.NDArray[np.intp]) -> ViewColumns:
        """The twins at ``index`` (positions in these columns), with the same alerts and labels
        and no removals."""
        models = [
            ModelColumns(
                m.group, m.channels, m.controls, m.states, m.observe,
                m.x[index], m.cov[index], m.init[index], m.time_ns[index], m.u[index],
            )
            for m in self.models
        ]  # fmt: skip
        return ViewColumns(
            self.twin_type, self.channels, self.units, self.twin_id[index], self.last_seen[index],
            self.last_time[index], self.last_value[index], self.flags[index], self.score[index],
            models, self.alerts, [], self.labels, self.written_by,
        )  # fmt: skip


#: Twins per chunk of records (:func:`record_chunks`): a record is about 4 kB of Python objects,
#: so a chunk holds about 2 MB however many twins changed (2,000 twins per chunk: the writer
#: process peaked 15 MB higher, measured).
RECORD_CHUNK = 500


def record_chunks(cols: ViewColumns, size: int = RECORD_CHUNK) -> Iterator[list[dict[str, Any]]]:
    """The records of ``cols`` (as :func:`build_records`), ``size`` twins at a time, in twin-id
    order: a writer that writes each chunk before taking the next holds one chunk's records,
    not every changed twin's.

    >>> cols = ViewColumns("pump", [], [], np.array(["c", "a", "b"]), np.zeros(3, dtype=np.int64),
    ...     np.zeros((3, 0), dtype=np.int64), np.zeros((3, 0)), np.zeros((3, 0), dtype=np.uint16),
    ...     np.zeros((3, 0)), [])
    >>> [[r["twin_id"] for r in chunk] for chunk in record_chunks(cols, size=2)]
    [['a', 'b'], ['c']]
    """
    order = np.argsort(cols.twin_id, kind="stable")
    for start in range(0, order.shape[0], size):
        yield build_records(cols.take(order[start : start + size]))


def gather(
    bank: TwinBank,
    rows: npt.NDArray[np.intp],
    engine: AlertEngine | None,
    removed: list[str] | None = None,
) -> ViewColumns:
    """The state of the twins at ``rows`` of ``bank`` (numpy gathers; no Python per twin)."""
    rows = np.asarray(rows, dtype=np.intp)
    width = bank.width
    cells = rows[:, None] * width + np.arange(width)[None, :]
    models: list[ModelColumns] = []
    for group in bank.groups:
        st = group.state
        for slot in range(len(group.channels)) if group.per_cell else [None]:
            srows = rows * group.cells + slot if slot is not None else rows
            members = [group.channels[slot]] if slot is not None else list(group.channels)
            name, mdl, _ = group.filter_of(members[0])  # per cell: the channel's own filter
            models.append(
                ModelColumns(
                    name,
                    [bank.channels[c] for c in members if group.local[c] < mdl.m],
                    [bank.channels[c] for c in members if group.local[c] >= mdl.m],
                    list(mdl.state_names),
                    [(c, mdl.H[int(group.local[c])].tolist()) for c in members if group.local[c] < mdl.m],
                    st.x[srows],
                    st.P[srows] * st.scale[srows][:, None, None],
                    st.initialised[srows],
                    st.last_ns[srows],
                    st.u[srows],
                )
            )
    ids = bank.index.ids[rows] if rows.size else np.empty(0, dtype=np.str_)
    alerts = alerts_by_twin(engine, ids, _ALERT_KEYS)
    return ViewColumns(
        bank.spec.name,
        list(bank.channels),
        bank.units.tolist(),
        ids,
        bank.last_seen[rows],
        bank.last_time[cells],
        bank.last_value[cells],
        bank.last_flags[cells],
        bank.last_score[cells],
        models,
        alerts,
        list(removed or []),
    )


def build_records(cols: ViewColumns) -> list[dict[str, Any]]:
    """One record per twin of ``cols``, ordered by twin id (the Python part: run it off the dataflow)."""
    k, width = len(cols), len(cols.channels)
    estimate = np.full((k, width), np.nan)
    std = np.full((k, width), np.nan)
    models: list[list[dict[str, Any]]] = [[] for _ in range(k)]
    for m in cols.models:
        for c, h_row in m.observe:
            h = np.asarray(h_row)
            estimate[:, c] = np.where(m.init, m.x @ h, np.nan)
            var = np.einsum("i,kij,j->k", h, m.cov, h)
            std[:, c] = np.where(m.init, np.sqrt(np.maximum(var, 0.0)), np.nan)
        xs, covs, times, us = m.x.tolist(), m.cov.tolist(), m.time_ns.tolist(), m.u.tolist()
        init = m.init.tolist()
        for j in range(k):
            if init[j]:
                models[j].append(
                    {"group": m.group, "channels": m.channels, "controls": m.controls, "states": m.states,
                     "mean": xs[j], "cov": covs[j], "time_ns": times[j], "u": us[j]}
                )  # fmt: skip
    ids = cols.twin_id.tolist()
    last_seen, last_time = cols.last_seen.tolist(), cols.last_time.tolist()
    last_value, est_l, std_l = cols.last_value.tolist(), estimate.tolist(), std.tolist()
    flags_l, score_l = cols.flags.tolist(), cols.score.tolist()
    names: dict[int, list[str]] = {}
    out = []
    for j in sorted(range(k), key=ids.__getitem__):
        twin_id = ids[j]
        channels: dict[str, Any] = {}
        top = -1.0
        for c, name in enumerate(cols.channels):
            t, flags, score = last_time[j][c], flags_l[j][c], score_l[j][c]
            if t == NEVER and not flags and not math.isfinite(score):
                continue
            if math.isfinite(score):
                top = max(top, score)
            if flags not in names:
                names[flags] = flag_names(flags)
            channels[name] = {
                "unit": cols.units[c],
                "time_ns": None if t == NEVER else t,
                "value": _num(last_value[j][c]),
                "estimate": _num(est_l[j][c]),
                "std": _num(std_l[j][c]),
                "flags": list(names[flags]),
                "anomaly_score": _num(score),
            }
        twin_alerts = cols.alerts.get(twin_id, [])
        states = {a["state"] for a in twin_alerts}
        record = {
            "twin_id": twin_id,
            "twin_type": cols.twin_type,
            "labels": dict(cols.labels),
            "last_seen_ns": None if last_seen[j] == NEVER else last_seen[j],
            "alert_state": "firing" if "firing" in states else "pending" if "pending" in states else "ok",
            "anomaly_score": top if top >= 0 else None,
            "channels": channels,
            "models": models[j],
            "alerts": twin_alerts,
        }
        if cols.written_by is not None:
            record["written_by"] = cols.written_by
        out.append(record)
    return out


def rows_of(bank: TwinBank, twin_ids: set[str] | list[str]) -> npt.NDArray[np.intp]:
    """Rows of those of ``twin_ids`` that ``bank`` holds (others, evicted twins, are left out)."""
    if not twin_ids:
        return np.empty(0, dtype=np.intp)
    rows, found = bank.index.lookup(np.asarray(sorted(twin_ids), dtype=np.str_))
    return np.sort(rows[found]).astype(np.intp)


class ViewCollector:
    """In one process: the twins updates touched, and their records built at once."""

    def __init__(self) -> None:
        self._twins: list[npt.NDArray[np.str_]] = []
        self._alert_twins: set[str] = set()
        self._alerts: dict[str, dict[str, Any]] = {}

    def __bool__(self) -> bool:
        return bool(self._twins or self._alert_twins)

    def note(self, update: BankUpdate) -> None:
        """Remember which twins ``update`` touched, and its alert events."""
        if len(update.estimates):
            self._twins.append(update.estimates.twin_id)
        for event in update.alerts:
            self._alert_twins.add(event.twin_id)
            self._alerts[event.alert_id] = alert_row(event)

    def records(
        self, bank: TwinBank, alerts: AlertEngine | None, labels: dict[str, str] | None = None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Records of the twins changed since the last call, and the alert rows; clears the changes."""
        changed = set(self._alert_twins)
        if self._twins:
            changed.update(np.unique(np.concatenate(self._twins)).tolist())
        alert_rows = list(self._alerts.values())
        self._twins, self._alert_twins, self._alerts = [], set(), {}
        if not changed:
            return [], alert_rows
        cols = gather(bank, rows_of(bank, changed), alerts)
        cols.labels = dict(labels or {})
        return build_records(cols), alert_rows


_ALERT_KEYS = (
    "alert_id", "rule", "state", "severity", "starts_ns", "ends_ns", "channel", "value", "message",
    "acked_by", "acked_ns",
)  # fmt: skip
