"""The data-quality judgement of one cell, reading by reading, in plain Python floats.

:meth:`QualityBank.update <dte_stream.twins.quality.QualityBank.update>` judges a round of
readings with whole-array numpy operations: fast for rounds of many cells, but a round of one
reading (one series replayed alone) pays dozens of numpy calls of a few microseconds each.
:class:`QualityCell` holds one cell's statistics as Python numbers and applies the same
arithmetic, in the same order, to one reading at a time; :meth:`QualityCell.store` writes the
statistics back. Both give the same flags, trust factors and statistics (equal to 1e-9:
``tests/unit/twins/test_scalar_path.py`` checks them against each other).

>>> from dte_stream.spec.quality import QualitySpec
>>> from dte_stream.twins.flags import flag_names
>>> from dte_stream.twins.quality import QualityBank
>>> bank = QualityBank([QualitySpec(min=0, max=100)])
>>> cell = QualityCell(bank, row=0, ch=0)
>>> flags, r_scale = cell.judge(0, 150.0, now_ns=0)
>>> flag_names(flags), r_scale
(['out_of_range'], 100.0)
>>> cell.store(); int(bank.state.last_ns[0, 0])
0
"""

from __future__ import annotations

import math

from dte_stream.twins.flags import CLOCK_SKEW, OUT_OF_RANGE, SPIKE, STUCK
from dte_stream.twins.quality import (
    _CHANGE_ALPHA,
    _CHANGE_CLIP,
    _INTERVAL_ALPHA,
    _INTERVAL_CLIP,
    _MAX_NS_F,
    _SIGMA_PER_MEAN_ABS,
    _SUSPECT,
    MIN_GAPS,
    NEVER,
    NOT_DUE,
    SPIKE_WARMUP,
    QualityBank,
)

__all__ = ["QualityCell"]

_NEVER = int(NEVER)
_NOT_DUE = int(NOT_DUE)


class QualityCell:
    """One (row, channel) cell of a :class:`QualityBank`, loaded into Python numbers."""

    __slots__ = (
        "anchor", "bank", "ch", "change", "changes", "distrust", "gaps", "interval", "last",
        "max", "min", "prev", "prev_spike", "ref", "row", "run", "skew_ns", "spike_sigma",
        "stale_after", "stale_min_ns", "stuck_after", "tolerance",
    )  # fmt: skip

    def __init__(self, bank: QualityBank, row: int, ch: int) -> None:
        self.bank, self.row, self.ch = bank, row, ch
        s = bank.state
        self.last = int(s.last_ns[row, ch])
        self.interval = float(s.interval_ns[row, ch])
        self.gaps = int(s.gaps[row, ch])
        self.ref = float(s.ref[row, ch])
        self.prev = float(s.prev[row, ch])
        self.prev_spike = bool(s.prev_spike[row, ch])
        self.change = float(s.change[row, ch])
        self.changes = int(s.changes[row, ch])
        self.anchor = float(s.anchor[row, ch])
        self.run = int(s.run[row, ch])
        self.min = float(bank._min[ch])
        self.max = float(bank._max[ch])
        self.stale_after = float(bank._stale_after[ch])
        self.stale_min_ns = float(bank._stale_min_ns[ch])
        self.stuck_after = int(bank._stuck_after[ch])
        self.tolerance = float(bank._tolerance[ch])
        self.spike_sigma = float(bank._spike_sigma[ch])
        self.skew_ns = int(bank._skew_ns[ch])
        self.distrust = float(bank._distrust[ch])

    def judge(self, time_ns: int, value: float, now_ns: int) -> tuple[int, float]:
        """Flags and trust factor of one reading, then fold it in (as ``QualityBank.update``)."""
        usable = math.isfinite(value) and self.min <= value <= self.max
        skew = (time_ns - now_ns) > self.skew_ns
        tolerance = self.tolerance
        anchor = self.anchor
        same = usable and abs(value - anchor) <= tolerance
        run = self.run + 1 if same else 0
        stuck = same and self.stuck_after > 0 and run >= self.stuck_after
        ref, prev, change, changes = self.ref, self.prev, self.change, self.changes
        sigma = _SIGMA_PER_MEAN_ABS * change
        limit = self.spike_sigma * sigma
        jump = abs(value - ref)
        candidate = usable and changes >= SPIKE_WARMUP and self.spike_sigma > 0 and jump > limit
        from_prev = abs(value - prev)
        shift = candidate and self.prev_spike and from_prev <= limit
        spike = candidate and not shift
        flags = (STUCK if stuck else 0) | (SPIKE if spike else 0)
        flags |= 0 if usable else OUT_OF_RANGE
        flags |= CLOCK_SKEW if skew else 0
        r_scale = self.distrust if flags & _SUSPECT else 1.0
        if usable:
            accept = not spike
            step = from_prev if shift else jump
            if accept and math.isfinite(step) and step > tolerance:
                alpha = max(_CHANGE_ALPHA, 1.0 / (changes + 1))
                clipped = _minimum(step, _CHANGE_CLIP * sigma) if changes >= SPIKE_WARMUP else step
                self.change = change + alpha * (clipped - change)
                self.changes = changes + 1
            if accept:
                self.ref = value
            self.prev = value
            self.prev_spike = spike
            if not same:
                self.anchor = value
            self.run = run
        last = self.last
        t_eff = min(time_ns, now_ns) if skew else time_ns
        fresh = last == _NEVER
        gap = float(0 if fresh else t_eff - last)
        if gap > 0 and not skew:
            gaps, interval = self.gaps, self.interval
            if gaps == 0:
                self.interval = gap
            else:
                bounded = min(max(gap, interval / _INTERVAL_CLIP), interval * _INTERVAL_CLIP)
                weight = max(_INTERVAL_ALPHA, 1.0 / (gaps + 1))
                self.interval = interval + weight * (bounded - interval)
            self.gaps = gaps + 1
        self.last = t_eff if fresh else max(last, t_eff)
        return flags, r_scale

    def deadline(self) -> int:
        """Engine time at which the cell goes stale (as ``QualityBank._deadline``)."""
        if self.gaps < MIN_GAPS:
            return _NOT_DUE
        wait = _maximum(self.stale_after * self.interval, self.stale_min_ns)
        wait_ns = int(min(round(wait), _MAX_NS_F)) if math.isfinite(wait) else int(_MAX_NS_F)
        room = _NOT_DUE - max(self.last, 0)
        return self.last + min(wait_ns, room)

    def store(self) -> None:
        """Write the statistics back into the bank; the cell's stale episode has ended."""
        s, row, ch = self.bank.state, self.row, self.ch
        s.last_ns[row, ch] = self.last
        s.interval_ns[row, ch] = self.interval
        s.gaps[row, ch] = self.gaps
        s.ref[row, ch] = self.ref
        s.prev[row, ch] = self.prev
        s.prev_spike[row, ch] = self.prev_spike
        s.change[row, ch] = self.change
        s.changes[row, ch] = self.changes
        s.anchor[row, ch] = self.anchor
        s.run[row, ch] = self.run
        s.deadline_ns[row, ch] = self.deadline()
        s.stale[row, ch] = False


def _minimum(a: float, b: float) -> float:
    """``np.minimum`` of two floats: NaN when either is NaN."""
    return a if a <= b or math.isnan(a) else b


def _maximum(a: float, b: float) -> float:
    """``np.maximum`` of two floats: NaN when either is NaN."""
    return a if a >= b or math.isnan(a) else b
