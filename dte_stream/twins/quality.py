"""Per-sensor data-quality signals, vectorised over (twin row, channel) cells.

Pure numpy: no Bytewax, no driver, no clock. ``now_ns`` is the engine clock handed in by the
caller: the wall clock in live operation, the event-time watermark in a replay.

:meth:`QualityBank.update` judges one *round* of readings (each cell at most once) against the
cell's statistics, *then* folds the readings into them, and returns the flag bits of
:mod:`dte_stream.twins.flags` with the factor ``r_scale`` on each reading's measurement variance
(the channel's ``distrust`` for a suspect reading, else 1). :meth:`QualityBank.due` raises
``stale`` from a timer: cells without a reading for too long, each episode reported once.

Per cell, per channel settings from :class:`~dte_stream.spec.quality.QualitySpec`:

- *usual interval*: an exponentially weighted mean of the positive gaps, each gap first clipped
  to [1/4, 4] x the current estimate, so one outage or burst barely moves it. Zero and negative
  gaps (duplicates, late readings) and clock-skewed readings leave it alone. Known after
  :data:`MIN_GAPS` positive gaps (three readings); only then can the cell go stale.
- *stale*: ``now - last >= max(stale_after * interval, stale_min)``. A reading ends the episode.
- *stuck*: the reading is the ``stuck_after``-th in a row within ``stuck_tolerance`` of the value
  that started the flat run (so with 3, the 4th equal value in a row is the first flagged).
- *spike*: ``|value - ref| > spike_sigma * sigma``; ``ref`` is the last reading not flagged spike,
  ``sigma`` is 1.2533 x an EW mean of the absolute *non-zero* reading-to-reading changes
  (Huber-clipped at 3 sigma; judged after :data:`SPIKE_WARMUP` changes). Counting only
  changes keeps a quantised or slowly varying sensor from looking spiky; flat lines are the
  business of *stuck*. A jump confirmed by the next reading (within the limit of the jumped-to
  value) is a level shift: only its first reading is flagged, the level is then accepted.
- *out_of_range*: outside ``[min, max]``; *clock_skew*: event time more than
  ``max_clock_skew`` ahead of ``now``.

Hostile values: a NaN or infinite reading is flagged ``out_of_range`` (it has no usable value)
and, like any out-of-range reading, leaves the value statistics (stuck run, spike reference
and scale) untouched; it still counts as a sign of life for the timing statistics. A clock-skewed
reading counts at ``min(time, now)`` so that one bad clock cannot postpone staleness or
corrupt the interval. Declare ``min``/``max`` to keep finite sentinel values (``-9999``)
out of the statistics too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from dte_stream.spec.quality import QualitySpec
from dte_stream.times import NS_PER_S
from dte_stream.twins.flags import CLOCK_SKEW, OUT_OF_RANGE, SPIKE, STUCK, Flags

__all__ = [
    "MIN_GAPS",
    "QUALITY_SNAPSHOT_FORMAT",
    "SPIKE_WARMUP",
    "QualityBank",
    "QualityOutput",
    "QualityState",
    "StaleCells",
]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
IntP = npt.NDArray[np.intp]
Bool = npt.NDArray[np.bool_]

#: Version of the snapshot layout; bumped whenever it changes incompatibly.
QUALITY_SNAPSHOT_FORMAT = 1
#: Positive gaps a cell needs before its usual interval is known (three readings).
MIN_GAPS = 2
#: Non-zero changes a cell needs before a reading can be judged a spike.
SPIKE_WARMUP = 5

#: ``last_ns`` of a cell that has never had a reading.
NEVER = np.iinfo(np.int64).min
#: ``deadline_ns`` of a cell that cannot go stale (interval unknown).
NOT_DUE = np.iinfo(np.int64).max
_INTERVAL_ALPHA = 0.1
_INTERVAL_CLIP = 4.0  # a gap counts as at most 4x (at least 1/4) the current interval
_CHANGE_ALPHA = 0.05
_CHANGE_CLIP = 3.0  # in sigmas
_SIGMA_PER_MEAN_ABS = math.sqrt(math.pi / 2.0)  # sigma of a normal change / its mean absolute value
_SUSPECT = STUCK | SPIKE | OUT_OF_RANGE | CLOCK_SKEW
_MAX_NS_F = float(2**62)


@dataclass(slots=True)
class QualityState:
    """Struct-of-arrays statistics of ``capacity`` rows x ``channels`` cells."""

    last_ns: I64  # latest event time (clock-skewed readings counted at the engine clock)
    interval_ns: F64  # robust EW mean of the positive gaps; NaN before the first gap
    gaps: I32  # positive gaps seen (int32, like the other counts: 2**31 readings per cell)
    deadline_ns: I64  # engine time at which the cell goes stale; NOT_DUE while it cannot
    stale: Bool  # in a stale episode already reported by due()
    ref: F64  # last usable value not flagged spike
    prev: F64  # last usable value
    prev_spike: Bool  # was the last usable value flagged spike?
    change: F64  # EW mean absolute non-zero change
    changes: I32  # non-zero changes seen
    anchor: F64  # value that started the current flat run
    run: I32  # readings in a row within tolerance of the anchor, after it

    @classmethod
    def allocate(cls, capacity: int, channels: int) -> QualityState:
        shape = (capacity, channels)
        return cls(
            last_ns=np.full(shape, NEVER, dtype=np.int64),
            interval_ns=np.full(shape, np.nan),
            gaps=np.zeros(shape, dtype=np.int32),
            deadline_ns=np.full(shape, NOT_DUE, dtype=np.int64),
            stale=np.zeros(shape, dtype=np.bool_),
            ref=np.full(shape, np.nan),
            prev=np.full(shape, np.nan),
            prev_spike=np.zeros(shape, dtype=np.bool_),
            change=np.zeros(shape),
            changes=np.zeros(shape, dtype=np.int32),
            anchor=np.full(shape, np.nan),
            run=np.zeros(shape, dtype=np.int32),
        )

    @property
    def capacity(self) -> int:
        return int(self.last_ns.shape[0])

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        """Every state array by field name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def grow(self, capacity: int) -> QualityState:
        """A copy with room for ``capacity`` rows; existing rows keep their values."""
        bigger = QualityState.allocate(capacity, self.last_ns.shape[1])
        n = self.capacity
        for name, a in self.arrays().items():
            getattr(bigger, name)[:n] = a
        return bigger

    def take(self, index: IntP) -> QualityState:
        """A copy of the same capacity whose first rows are rows ``index``, in that order."""
        kept = QualityState.allocate(self.capacity, self.last_ns.shape[1])
        n = index.shape[0]
        for name, a in self.arrays().items():
            getattr(kept, name)[:n] = a[index]
        return kept


@dataclass(slots=True)
class QualityOutput:
    """Per reading: the data-quality flag bits and the factor on its measurement variance."""

    flags: Flags
    r_scale: F64


@dataclass(slots=True)
class StaleCells:
    """Cells that went stale: row, channel, their last reading's time and their usual interval."""

    rows: IntP
    ch: IntP
    last_ns: I64
    interval_ns: I64

    def __len__(self) -> int:
        return int(self.rows.shape[0])


class QualityBank:
    """Data-quality statistics and flags of every (twin row, channel) cell of one twin type.

    >>> from dte_stream.twins.flags import flag_names
    >>> bank = QualityBank([QualitySpec(min=0, max=100)])
    >>> row, ch, s = np.array([0]), np.array([0]), 10**9
    >>> out = bank.update(row, ch, np.array([0]), np.array([150.0]), now_ns=0)
    >>> flag_names(int(out.flags[0])), float(out.r_scale[0])
    (['out_of_range'], 100.0)
    >>> for t in (1, 2, 3):
    ...     _ = bank.update(row, ch, np.array([t * s]), np.array([20.0 + t]), now_ns=t * s)
    >>> bank.next_due_ns() // s  # last reading at 3 s + 5 x the usual 1 s interval
    8
    >>> stale = bank.due(now_ns=9 * s)
    >>> stale.rows.tolist(), stale.interval_ns.tolist(), len(bank.due(now_ns=10 * s))
    ([0], [1000000000], 0)
    """

    def __init__(self, specs: list[QualitySpec], capacity: int = 64) -> None:
        if not specs:
            raise ValueError("a quality bank needs at least one channel spec")
        self.specs = list(specs)
        self.channels = len(specs)
        self._min = np.array([-np.inf if q.min is None else q.min for q in specs])
        self._max = np.array([np.inf if q.max is None else q.max for q in specs])
        self._stale_after = np.array([q.stale_after for q in specs])
        self._stale_min_ns = np.array([0.0 if q.stale_min is None else q.stale_min * NS_PER_S for q in specs])
        self._stuck_after = np.array([q.stuck_after for q in specs], dtype=np.int64)
        self._tolerance = np.array([q.stuck_tolerance for q in specs])
        self._spike_sigma = np.array([q.spike_sigma for q in specs])
        self._skew_ns = np.array(
            [NOT_DUE if q.max_clock_skew is None else _ns(q.max_clock_skew) for q in specs], dtype=np.int64
        )
        self._distrust = np.array([q.distrust for q in specs])
        self.state = QualityState.allocate(capacity, self.channels)

    @property
    def capacity(self) -> int:
        """Rows the bank has room for."""
        return self.state.capacity

    def grow(self, capacity: int) -> None:
        """Make room for ``capacity`` rows in place; existing rows keep their statistics."""
        if capacity < self.capacity:
            raise ValueError(f"cannot grow a quality bank of {self.capacity} rows to {capacity}")
        if capacity > self.capacity:
            self.state = self.state.grow(capacity)

    def take(self, index: npt.ArrayLike) -> None:
        """Keep rows ``index``, in that order, as rows 0..len(index)-1 (compaction after eviction)."""
        idx = np.asarray(index, dtype=np.intp)
        if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= self.capacity)):
            raise IndexError(f"take: row index outside 0..{self.capacity - 1}")
        self.state = self.state.take(idx)

    def update(self, rows: IntP, ch: IntP, time_ns: I64, value: F64, now_ns: int) -> QualityOutput:
        """Judge one round of readings, then fold them into the statistics of their cells.

        Each (row, channel) cell appears at most once per call; successive calls for a cell
        come in event-time order, late readings excepted. Every reading ends its cell's stale
        episode.
        """
        return self.update_rounds(rows, ch, time_ns, value, now_ns)

    def update_rounds(
        self, rows: IntP, ch: IntP, time_ns: I64, value: F64, now_ns: int,
        spans: list[tuple[int, int]] | None = None,
    ) -> QualityOutput:  # fmt: skip
        """Rounds of readings in turn, each as :meth:`update`: round ``j`` is the readings at
        positions ``spans[j][0]`` to ``spans[j][1]`` (without ``spans``, all of them in one round).

        What depends only on a reading and its channel's settings (in range, clock skew, the
        channel's limits) is worked out once for every round; so are the checks of the input.
        """
        rows = np.asarray(rows, dtype=np.intp)
        ch = np.asarray(ch, dtype=np.intp)
        time_ns = np.asarray(time_ns, dtype=np.int64)
        value = np.asarray(value, dtype=np.float64)
        k = rows.shape[0]
        if not ch.shape[0] == time_ns.shape[0] == value.shape[0] == k:
            raise ValueError(
                f"update: rows, ch, time_ns and value differ in length "
                f"({k}, {ch.shape[0]}, {time_ns.shape[0]}, {value.shape[0]})"
            )
        if k == 0:
            return QualityOutput(np.zeros(0, dtype=np.uint16), np.ones(0))
        if rows.min() < 0 or rows.max() >= self.capacity or ch.min() < 0 or ch.max() >= self.channels:
            raise IndexError(
                f"update: a cell lies outside {self.capacity} rows x {self.channels} channels; grow() first"
            )
        flags = np.empty(k, dtype=np.uint16)
        r_scale = np.empty(k)
        with np.errstate(all="ignore"):
            usable = np.isfinite(value) & (value >= self._min.take(ch)) & (value <= self._max.take(ch))
            skew = (time_ns - now_ns) > self._skew_ns.take(ch)
            stuck_after = self._stuck_after.take(ch)
            spike_sigma = self._spike_sigma.take(ch)
            base_flags: Flags = np.where(usable, np.uint16(0), np.uint16(OUT_OF_RANGE))
            base_flags |= np.where(skew, np.uint16(CLOCK_SKEW), np.uint16(0))
            readings = _Readings(
                cell=rows * self.channels + ch,
                value=value,
                usable=usable,
                skew=skew,
                t_eff=np.where(skew, np.minimum(time_ns, now_ns), time_ns),
                base_flags=base_flags,
                tolerance=self._tolerance.take(ch),
                stuck_after=stuck_after,
                stuck_on=stuck_after > 0,
                spike_sigma=spike_sigma,
                spike_on=spike_sigma > 0,
                distrust=self._distrust.take(ch),
                stale_after=self._stale_after.take(ch),
                stale_min_ns=self._stale_min_ns.take(ch),
            )
            for a, b in spans or [(0, k)]:
                flags[a:b], r_scale[a:b] = self._round(readings.part(a, b))
            # Each touched cell's deadline follows from its final time statistics: once, after
            # the rounds (the same numbers as after each round; nothing reads it in between).
            cell, st = readings.cell, self.state
            last = st.last_ns.reshape(-1).take(cell)
            interval = st.interval_ns.reshape(-1).take(cell)
            gaps = st.gaps.reshape(-1).take(cell)
            st.deadline_ns.reshape(-1)[cell] = _deadline(
                readings.stale_after, readings.stale_min_ns, last, interval, gaps
            )
            st.stale.reshape(-1)[cell] = False
        return QualityOutput(flags, r_scale)

    def _round(self, r: _Readings) -> tuple[Flags, F64]:
        """Judge one round, then fold it into the statistics (under ``np.errstate(all="ignore")``)."""
        cell, value, usable = r.cell, r.value, r.usable
        s = self.state

        def get(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
            return a.reshape(-1).take(cell)

        def put(a: npt.NDArray[Any], new: npt.ArrayLike) -> None:
            a.reshape(-1)[cell] = new

        # -- judge -------------------------------------------------------------------------
        tolerance = r.tolerance
        anchor = get(s.anchor)
        old_run = get(s.run)
        same = usable & (np.abs(value - anchor) <= tolerance)
        run = np.where(same, old_run + 1, 0)
        stuck = same & r.stuck_on & (run >= r.stuck_after)

        ref = get(s.ref)
        prev = get(s.prev)
        prev_spike = get(s.prev_spike)
        change = get(s.change)
        changes = get(s.changes)
        sigma = _SIGMA_PER_MEAN_ABS * change
        limit = r.spike_sigma * sigma
        jump = np.abs(value - ref)
        candidate = usable & (changes >= SPIKE_WARMUP) & r.spike_on & (jump > limit)
        from_prev = np.abs(value - prev)
        shift = candidate & prev_spike & (from_prev <= limit)
        spike = candidate & ~shift

        flags = np.where(stuck, np.uint16(STUCK), np.uint16(0))
        flags |= np.where(spike, np.uint16(SPIKE), np.uint16(0))
        flags |= r.base_flags  # out of range, clock skew
        r_scale = np.where(flags & np.uint16(_SUSPECT), r.distrust, 1.0)

        # -- fold values in (usable readings only) -----------------------------------------
        accept = usable & ~spike
        step = np.where(shift, from_prev, jump)
        moved = accept & np.isfinite(step) & (step > tolerance)
        alpha = np.maximum(_CHANGE_ALPHA, 1.0 / (changes + 1))
        clipped = np.where(changes >= SPIKE_WARMUP, np.minimum(step, _CHANGE_CLIP * sigma), step)
        put(s.change, np.where(moved, change + alpha * (clipped - change), change))
        put(s.changes, changes + moved)
        put(s.ref, np.where(accept, value, ref))
        put(s.prev, np.where(usable, value, prev))
        put(s.prev_spike, np.where(usable, spike, prev_spike))
        put(s.anchor, np.where(usable & ~same, value, anchor))
        put(s.run, np.where(usable, run, old_run))

        # -- fold times in (every reading) -------------------------------------------------
        last = get(s.last_ns)
        t_eff = r.t_eff
        fresh = last == NEVER
        gap = np.where(fresh, 0, t_eff - last).astype(np.float64)
        positive = (gap > 0) & ~r.skew
        gaps = get(s.gaps)
        interval = get(s.interval_ns)
        bounded = np.minimum(np.maximum(gap, interval / _INTERVAL_CLIP), interval * _INTERVAL_CLIP)
        weight = np.maximum(_INTERVAL_ALPHA, 1.0 / (gaps + 1))
        moved_iv = np.where(gaps == 0, gap, interval + weight * (bounded - interval))
        interval = np.where(positive, moved_iv, interval)
        gaps = gaps + positive
        last = np.where(fresh, t_eff, np.maximum(last, t_eff))
        put(s.interval_ns, interval)
        put(s.gaps, gaps)
        put(s.last_ns, last)
        return flags, r_scale  # the deadlines and stale marks: once after the rounds

    def due(self, now_ns: int) -> StaleCells:
        """Cells that went stale since the last call (each stale episode reported once)."""
        s = self.state
        rows, ch = np.nonzero((s.deadline_ns <= now_ns) & ~s.stale)
        rows = rows.astype(np.intp, copy=False)
        ch = ch.astype(np.intp, copy=False)
        s.stale[rows, ch] = True
        interval = np.rint(s.interval_ns[rows, ch]).astype(np.int64)
        return StaleCells(rows, ch, s.last_ns[rows, ch].copy(), interval)

    def next_due_ns(self) -> int | None:
        """The earliest engine time at which a cell not yet stale would go stale; None if none can."""
        s = self.state
        pending = np.where(s.stale, NOT_DUE, s.deadline_ns)
        earliest = int(pending.min()) if pending.size else NOT_DUE
        return None if earliest == NOT_DUE else earliest

    def snapshot(self, n_rows: int | None = None, *, copy: bool = True) -> dict[str, Any]:
        """Compact, picklable copy of the statistics of the first ``n_rows`` rows (all by default;
        ``copy=False``: views of them, for a caller that pickles them at once)."""
        n = self.capacity if n_rows is None else n_rows
        if not 0 <= n <= self.capacity:
            raise ValueError(f"snapshot of {n} rows from a quality bank of {self.capacity}")
        snap: dict[str, Any] = {"format": QUALITY_SNAPSHOT_FORMAT, "channels": self.channels, "rows": n}
        for name, a in self.state.arrays().items():
            if name != "deadline_ns":  # derived: recomputed from the (possibly changed) specs
                snap[name] = a[:n].copy() if copy else a[:n]
        return snap

    @classmethod
    def restore(cls, specs: list[QualitySpec], snap: dict[str, Any]) -> QualityBank:
        """Rebuild a bank from :meth:`snapshot`; the specs' settings may differ, the channel count may not."""
        if snap.get("format") != QUALITY_SNAPSHOT_FORMAT:
            raise ValueError(
                f"quality snapshot format {snap.get('format')!r}, expected {QUALITY_SNAPSHOT_FORMAT}"
            )
        if snap["channels"] != len(specs):
            raise ValueError(f"quality snapshot has {snap['channels']} channels, the specs {len(specs)}")
        n = int(snap["rows"])
        bank = cls(specs, capacity=max(64, n))
        s = bank.state
        for name, a in s.arrays().items():
            if name != "deadline_ns":
                a[:n] = snap[name]
        ch = np.broadcast_to(np.arange(bank.channels, dtype=np.intp), (n, bank.channels))
        with np.errstate(all="ignore"):
            s.deadline_ns[:n] = _deadline(
                bank._stale_after[ch], bank._stale_min_ns[ch], s.last_ns[:n], s.interval_ns[:n], s.gaps[:n]
            )
        return bank


@dataclass(slots=True)
class _Readings:
    """What :meth:`QualityBank.update_rounds` works out once per reading, for every round."""

    cell: IntP
    value: F64
    usable: Bool
    skew: Bool
    t_eff: I64  # event time, a clock-skewed reading's at the engine clock
    base_flags: Flags  # out of range, clock skew
    tolerance: F64
    stuck_after: I64
    stuck_on: Bool
    spike_sigma: F64
    spike_on: Bool
    distrust: F64
    stale_after: F64
    stale_min_ns: F64

    def part(self, start: int, stop: int) -> _Readings:
        """The readings ``start:stop`` (views)."""
        return _Readings(*(getattr(self, f.name)[start:stop] for f in fields(self)))


def _deadline(
    stale_after: F64, stale_min_ns: F64, last_ns: I64, interval_ns: F64, gaps: npt.NDArray[np.integer[Any]]
) -> I64:
    """Engine time at which each cell goes stale, NOT_DUE while its interval is unknown.

    ``stale_after`` and ``stale_min_ns`` are each cell's channel's settings. Called under
    ``np.errstate(all="ignore")`` (NaN intervals become 0 before they count).
    """
    ready = gaps >= MIN_GAPS
    wait = np.maximum(stale_after * interval_ns, stale_min_ns)
    wait = np.where(ready, np.minimum(np.rint(wait), _MAX_NS_F), 0.0).astype(np.int64)
    room = NOT_DUE - np.maximum(last_ns, 0)
    return np.where(ready, last_ns + np.minimum(wait, room), NOT_DUE)


def _ns(seconds: float) -> int:
    """Seconds as int64 nanoseconds, infinite or huge values saturated."""
    return int(min(seconds * NS_PER_S, _MAX_NS_F))
