"""The twin bank: every twin of one type in one shard, as struct-of-arrays, updated per micro-batch.

One :meth:`TwinBank.update` applies a micro-batch of readings in a fixed order of steps
(:mod:`dte_stream.twins.stages`), vectorised over *rounds* (a round holds each state row at
most once, rounds in event-time order, see :func:`rounds_of`) when the batch holds many twins,
or reading by reading in Python floats when its rounds would hold a reading or two (one series
replayed alone): both ways give the same outputs.

1. data quality per (twin, channel) cell: stuck, spike, out of range, clock skew, and the
   trust (measurement-variance factor) the filter gives each reading;
2. the Kalman filters (:mod:`dte_stream.twins.filters`): one kernel step per round per filter
   group (per-channel filters that differ only in noise settings are one group), rounds per
   twin for shared models, per cell otherwise;
3. the anomaly score (:func:`~dte_stream.twins.scorers.build_scorer`: the innovations and, by
   default, a time-of-day context);
4. the river learners, per reading in time order (only when the twin type declares learners).

Readings too old for the lateness bound come back as dead letters, and so do copies: a reading
with the twin, channel and event time of one already applied (a producer's retry, an MQTT QoS 1
redelivery, a file with rows twice) is never applied again. The first copy wins (the one applied
in an earlier batch, else the batch's first in arrival order); a copy with another value is a
*conflicting value*, dead-lettered the same way (:func:`~dte_stream.twins.stages.copies_of`).
Across batches a copy is recognised against its sensor's latest reading (the bank keeps that
one's time and value, also in snapshots); a copy of an older reading that arrives after newer
ones of the same sensor, in a later batch, looks like a late reading and follows the lateness
rule (applied as ``late`` within ``kalman.lateness``, dead-lettered beyond it). :meth:`due` reports cells
that went stale (called by a timer, so it fires when nothing arrives) and :meth:`evict_idle`
drops twins idle past the type's TTL. The bank remembers which twins changed (``changed``,
``removed``) for the twin state view, and keeps each cell's latest estimate, std, flags and
score for it. The bank imports no engine and no alert code: the twin shard
(:mod:`dte_stream.twins.shard`) drives it, snapshots it with :meth:`snapshot` and rebuilds it
with :meth:`restore` (both in :mod:`dte_stream.twins.checkpoint`). What an update gives back
(:class:`BankUpdate`) and the dead letters of refused readings are in
:mod:`dte_stream.twins.bank_update`.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from dte_stream.batches import EstimateBatch
from dte_stream.readings import DeadLetter
from dte_stream.spec.twins import TwinTypeSpec
from dte_stream.times import NS_PER_S
from dte_stream.twins import flags as fl
from dte_stream.twins.bank_update import BankUpdate, copy_letters, too_late_letters
from dte_stream.twins.filters import FilterGroup, build_groups
from dte_stream.twins.idindex import RowIds
from dte_stream.twins.kalman_scalar import ScalarKernel
from dte_stream.twins.learners import LearnerBank
from dte_stream.twins.quality import QualityBank
from dte_stream.twins.routing import TypedBatch
from dte_stream.twins.scorers import build_scorer
from dte_stream.twins.stages import (
    by_reading,
    by_rounds,
    copies_of,
    rounds_in,
    rounds_of,
    supports_by_reading,
)

__all__ = ["CELL_ARRAYS", "PER_READING_BELOW", "BankUpdate", "TwinBank", "rounds_of"]

#: Factor by which the bank's arrays grow when new twins need rows (the spare rows after a growth
#: are at most a fifth of the twins; with 2, half the rows were spare right after one). Growth
#: copies the arrays, so a smaller factor costs more copies: each twin's state is copied about
#: 1 / (GROWTH - 1) = 4 times over the bank's life, a few microseconds per twin.
GROWTH = 1.25

#: Micro-batches whose rounds hold fewer readings than this on average (few twins, many readings
#: each: one series replayed alone) take the per-reading path of :mod:`dte_stream.twins.stages`.
PER_READING_BELOW = 16

IntP = npt.NDArray[np.intp]
F64 = npt.NDArray[np.float64]
NEVER = np.iinfo(np.int64).min

#: The bank's own arrays with one element per (twin, channel) cell, and their fill value: the
#: latest reading (value, event time) and what the twin made of it (estimate, std, flags, score).
CELL_ARRAYS: dict[str, tuple[Any, Any]] = {
    "last_value": (np.float64, np.nan),
    "last_time": (np.int64, NEVER),
    "last_estimate": (np.float64, np.nan),
    "last_std": (np.float64, np.nan),
    "last_flags": (np.uint16, 0),
    "last_score": (np.float64, np.nan),
}


class TwinBank:
    """Every twin of one twin type in one shard.

    >>> from dte_stream.readings import ReadingBatch
    >>> spec = TwinTypeSpec(name="pump", channels={"temp": {"filter": {"measurement_noise": 1.0}}})
    >>> bank = TwinBank(spec)
    >>> rb = ReadingBatch.from_columns(["p1", "p1"], ["temp", "temp"], [0, 10**9], [20.0, 22.0])
    >>> out = bank.update(TypedBatch("pump", rb, np.array([0, 0])), now_ns=10**9).estimates
    >>> len(bank), np.round(out.estimate, 2).tolist()
    (1, [20.0, 21.0])
    """

    def __init__(self, spec: TwinTypeSpec, capacity: int = 64) -> None:
        self.spec = spec
        self.channels = spec.channel_names()
        self.width = len(self.channels)
        self.units = np.array([spec.channels[c].unit for c in self.channels], dtype=np.str_)
        self.channel_names = np.asarray(self.channels, dtype=np.str_)
        self.capacity = capacity
        self.groups: list[FilterGroup] = build_groups(spec, capacity)
        self.group_of = np.full(self.width, -1, dtype=np.intp)
        self.observed = np.zeros(self.width, dtype=bool)
        for g, group in enumerate(self.groups):
            self.group_of[group.channels] = g
            self.observed[group.channels] = group.local[group.channels] < group.model.m
        self.quality = QualityBank([spec.channels[c].quality for c in self.channels], capacity)
        self.scorer = build_scorer(spec.anomaly, self.width, capacity) if spec.anomaly.enabled else None
        self.learners = LearnerBank(list(spec.learners), self.channels) if spec.learners else None
        self.horizons = spec.horizon_names()
        self.extra_columns = self._extra_columns()
        #: The twin id of each row, and the lookup from id to row (each id held once).
        self.index = RowIds()
        self.last_seen = np.full(capacity, NEVER, dtype=np.int64)
        self.last_value = np.full(capacity * self.width, np.nan)
        self.last_time = np.full(capacity * self.width, NEVER, dtype=np.int64)
        self.last_estimate = np.full(capacity * self.width, np.nan)
        self.last_std = np.full(capacity * self.width, np.nan)
        self.last_flags = np.zeros(capacity * self.width, dtype=np.uint16)
        self.last_score = np.full(capacity * self.width, np.nan)
        #: Twins updated since the view last took them (:meth:`take_changed`), and twins evicted.
        self.changed = np.zeros(capacity, dtype=bool)
        self._changed_from = 0  # where the next limited take_changed starts
        self.removed: list[str] = []
        #: Twins updated since the last incremental snapshot (:mod:`dte_stream.twins.snapshot_log`).
        self.dirty = np.zeros(capacity, dtype=bool)
        #: How :meth:`update` runs its stages (:mod:`dte_stream.twins.stages`): "auto" by the
        #: readings per round, or always "rounds" or "reading" (tests compare the two).
        self.way: Literal["auto", "rounds", "reading"] = "auto"
        #: Per-reading kernels by (group, filter) (:mod:`~dte_stream.twins.stages`; cached transitions).
        self.scalar_kernels: dict[tuple[int, int], ScalarKernel] = {}
        self.counters = {
            "late_readings": 0,
            "rejected_readings": 0,
            "gated_readings": 0,
            "evicted_twins": 0,
            "duplicate_readings": 0,
            "conflicting_readings": 0,
        }

    def __len__(self) -> int:
        return len(self.index)

    @property
    def twin_ids(self) -> list[str]:
        """The twin id of each row, as a new list (``index.ids`` is the bank's own array)."""
        ids: list[str] = self.index.ids.tolist()
        return ids

    def _extra_columns(self) -> list[str]:
        cols: list[str] = []
        if self.spec.outputs.states:
            for group in self.groups:
                cols += group.state_columns()
        for h in self.horizons:
            cols += [f"forecast_{h}", f"forecast_{h}_std"]
        if self.learners is not None:
            cols += self.learners.columns()
        return cols

    # -- twins ------------------------------------------------------------------------------

    def rows_for(self, twin_id: npt.NDArray[np.str_]) -> IntP:
        """Row of each twin id, adding unseen twins (vectorised; see :class:`RowIds`)."""
        rows, known = self.index.lookup(twin_id)
        if not known.all():
            missing = ~known
            new_ids = np.unique(twin_id[missing])
            new_rows = self.index.add(new_ids)
            rows[missing] = new_rows[np.searchsorted(new_ids, twin_id[missing])]
            if len(self) > self.capacity:
                self._grow(max(len(self), int(GROWTH * self.capacity)))
        return rows

    def _grow(self, capacity: int) -> None:
        for group in self.groups:
            group.ensure(capacity)
        self.quality.grow(capacity)
        if self.scorer is not None:
            self.scorer.grow(capacity)
        self.last_seen = _pad(self.last_seen, capacity, NEVER)
        self.changed = _pad(self.changed, capacity, False)
        self.dirty = _pad(self.dirty, capacity, False)
        for name, (_, fill) in CELL_ARRAYS.items():
            setattr(self, name, _pad(getattr(self, name), capacity * self.width, fill))
        self.capacity = capacity

    # -- the update -------------------------------------------------------------------------

    def update(self, batch: TypedBatch, now_ns: int) -> BankUpdate:
        """Apply a micro-batch; ``now_ns`` is the engine clock (wall clock, or event time in a replay)."""
        r = batch.readings
        rows = self.rows_for(r.twin_id)
        ch = batch.channel_index.astype(np.intp, copy=False)
        cells = rows * self.width + ch
        order = np.lexsort((r.time_ns, cells))
        copies = copies_of(cells, r.time_ns, r.value, order, self.last_time, self.last_value)
        repeated: list[DeadLetter] = []
        if copies is not None:  # the first copy wins: the others are dead letters, never applied
            repeated = copy_letters(batch, copies)
            fresh = ~copies.copy
            batch = TypedBatch(batch.twin_type, r.take(fresh), ch[fresh])
            r, rows, ch, cells = batch.readings, rows[fresh], ch[fresh], cells[fresh]
            order = (np.cumsum(fresh) - 1)[order[fresh[order]]]  # the sort, of the fresh ones
        n = len(r)
        time_ns, value = r.time_ns, r.value
        np.maximum.at(self.last_seen, rows, time_ns)
        cell_rounds = rounds_in(cells, time_ns, order)
        per_reading = (
            len(cell_rounds) * PER_READING_BELOW > n if self.way == "auto" else self.way == "reading"
        )
        if per_reading and supports_by_reading(self):
            st = by_reading(self, rows, ch, time_ns, value, now_ns)
        else:
            st = by_rounds(self, rows, ch, time_ns, value, now_ns, cell_rounds)
        flags, score, rejected, extra = st.flags, st.score, st.rejected, st.extra
        estimate, std, innovation, nis, delta, dt = (
            st.estimate,
            st.std,
            st.innovation,
            st.nis,
            st.delta,
            st.dt,
        )
        if self.learners is not None:
            order = np.flatnonzero(~rejected)
            order = order[np.argsort(time_ns[order], kind="stable")]
            learned = self.learners.update(
                r.twin_id[order],
                ch[order],
                time_ns[order],
                {
                    "value": value[order],
                    "innovation": innovation[order],
                    "nis": nis[order],
                    "estimate": estimate[order],
                    "delta": delta[order],
                    "dt": dt[order],
                },
            )
            for name, col in learned.columns.items():
                extra[name][order] = col
            if self.scorer is None:  # learner scores are not calibrated like the built-in one
                score[order] = learned.anomaly
            flags[order] |= learned.drift.astype(np.uint16) * fl.DRIFT
        flags |= (score >= self.spec.anomaly.level).astype(np.uint16) * fl.ANOMALY

        self.counters["late_readings"] += int(np.count_nonzero(flags & fl.LATE))
        self.counters["gated_readings"] += int(np.count_nonzero(flags & fl.GATED))
        dead: list[DeadLetter] = []
        keep = slice(None)
        if rejected.any():
            self.counters["rejected_readings"] += int(rejected.sum())
            dead = too_late_letters(
                batch, np.flatnonzero(rejected), rows, self.last_seen, self.spec.kalman.lateness
            )
            keep = np.flatnonzero(~rejected)  # type: ignore[assignment]
        self._remember(cells, rejected, time_ns, estimate, std, flags, score)
        self.changed[rows] = True
        self.dirty[rows] = True
        unit = np.where(r.unit == "", self.units[ch], r.unit)
        out_batch = EstimateBatch(
            batch.twin_type,
            r.twin_id[keep],
            self.channel_names[ch][keep],
            time_ns[keep],
            value[keep],
            unit[keep],
            estimate[keep],
            std[keep],
            innovation[keep],
            nis[keep],
            flags[keep],
            score[keep],
            {name: col[keep] for name, col in extra.items()},
        )
        if copies is None:
            return BankUpdate(out_batch, dead)
        n_copies, n_conflicts = len(repeated), int(np.count_nonzero(copies.conflict))
        self.counters["duplicate_readings"] += n_copies
        self.counters["conflicting_readings"] += n_conflicts
        return BankUpdate(out_batch, repeated + dead, copies=n_copies, conflicts=n_conflicts)

    def _remember(
        self, cells: IntP, rejected: npt.NDArray[np.bool_], time_ns: npt.NDArray[np.int64],
        estimate: F64, std: F64, flags: npt.NDArray[np.uint16], score: F64,
    ) -> None:  # fmt: skip
        """Keep each cell's outputs of its latest reading (``last_time`` already holds its time)."""
        latest = np.flatnonzero(~rejected)
        latest = latest[time_ns[latest] >= self.last_time[cells[latest]]]
        c = cells[latest]
        self.last_estimate[c] = estimate[latest]
        self.last_std[c] = std[latest]
        self.last_flags[c] = flags[latest]
        self.last_score[c] = score[latest]

    def take_changed(self, limit: int | None = None) -> tuple[IntP, list[str]]:
        """Rows of the twins changed since the last call, and the ids evicted since; both reset.

        With ``limit``, at most that many rows (ascending); the others stay marked for a later
        call, which goes on after the last row taken (round the bank), so every changed twin
        comes in turn however often the first ones change.
        """
        n = len(self)
        rows = np.flatnonzero(self.changed[:n])
        if limit is not None and 0 < limit < rows.shape[0]:
            turn = np.roll(rows, -int(np.searchsorted(rows, self._changed_from)))[:limit]
            self._changed_from = int(turn[-1]) + 1
            rows = np.sort(turn)
        self.changed[rows] = False
        removed, self.removed = self.removed, []
        return rows, removed

    def mark_changed(self, rows: IntP) -> None:
        """Have :meth:`take_changed` return these rows too (twins to publish again)."""
        self.changed[rows] = True

    def has_changed(self) -> bool:
        """Whether twins changed since :meth:`take_changed` last took them."""
        return bool(self.changed[: len(self)].any())

    # -- timers -----------------------------------------------------------------------------

    def due(self, now_ns: int) -> EstimateBatch | None:
        """Rows for sensors that went stale by ``now_ns`` (value NaN, flag ``stale``), if any."""
        stale = self.quality.due(now_ns)
        k = int(stale.rows.shape[0])
        if k == 0:
            return None
        nan = np.full(k, np.nan)
        cells = stale.rows * self.width + stale.ch
        self.last_flags[cells] |= fl.STALE
        self.changed[stale.rows] = True
        self.dirty[stale.rows] = True
        return EstimateBatch(
            self.spec.name,
            self.index.ids[stale.rows],
            self.channel_names[stale.ch],
            np.full(k, now_ns, dtype=np.int64),
            nan,
            self.units[stale.ch],
            nan.copy(),
            nan.copy(),
            nan.copy(),
            nan.copy(),
            np.full(k, fl.STALE, dtype=np.uint16),
            nan.copy(),
            {name: nan.copy() for name in self.extra_columns},
        )

    def next_due_ns(self) -> int | None:
        """When :meth:`due` may next have something to report (engine clock), if ever."""
        return self.quality.next_due_ns()

    def evict_idle(self, now_ns: int) -> list[str]:
        """Drop twins with no reading for the type's TTL; returns the evicted twin ids."""
        ttl = self.spec.ttl
        n = len(self)
        if ttl is None or n == 0:
            return []
        idle = self.last_seen[:n] < now_ns - round(ttl * NS_PER_S)
        if not idle.any():
            return []
        keep = np.flatnonzero(~idle)
        gone: list[str] = self.index.ids[np.flatnonzero(idle)].tolist()
        self._keep_rows(keep)
        if self.learners is not None:
            self.learners.evict(gone)
        self.counters["evicted_twins"] += len(gone)
        self.removed += gone
        return gone

    def _keep_rows(self, keep: IntP) -> None:
        capacity = max(64, int(GROWTH * keep.shape[0]))
        for group in self.groups:
            group.keep(keep, capacity)
        self.quality.take(keep)
        self.quality.grow(capacity)
        if self.scorer is not None:
            self.scorer.take(keep)
            self.scorer.grow(capacity)
        cells = (keep[:, None] * self.width + np.arange(self.width)).ravel()
        self.last_seen = _pad(self.last_seen[keep], capacity, NEVER)
        self.changed = _pad(self.changed[keep], capacity, False)
        self.dirty = _pad(self.dirty[keep], capacity, False)
        for name, (_, fill) in CELL_ARRAYS.items():
            setattr(self, name, _pad(getattr(self, name)[cells], capacity * self.width, fill))
        self.capacity = capacity
        self.index = self.index.take(keep)

    # -- snapshots --------------------------------------------------------------------------

    def snapshot(self, *, copy: bool = True) -> dict[str, Any]:
        """Compact, picklable copy of the state (:func:`~dte_stream.twins.checkpoint.bank_snapshot`;
        ``copy=False``: views where they can be, to pickle at once)."""
        from dte_stream.twins.checkpoint import bank_snapshot

        return bank_snapshot(self, copy=copy)

    @classmethod
    def restore(cls, spec: TwinTypeSpec, snap: dict[str, Any]) -> TwinBank:
        """Rebuild a bank from :meth:`snapshot` (:func:`~dte_stream.twins.checkpoint.restore_bank`)."""
        from dte_stream.twins.checkpoint import restore_bank

        del cls  # always a TwinBank
        return restore_bank(spec, snap)


def _pad(array: npt.NDArray[Any], size: int, fill: Any) -> npt.NDArray[Any]:
    """``array`` extended (or cut) to ``size`` elements, new ones set to ``fill``."""
    out = np.empty(size, dtype=array.dtype)  # each byte written once: no fill under the copy
    k = min(size, array.shape[0])
    out[:k] = array[:k]
    out[k:] = fill
    return out
