"""The Numenta Anomaly Benchmark's scoring, written from its published description.

Sources: NAB's README and Lavin and Ahmad, "Evaluating Real-time Anomaly Detection Algorithms
-- the Numenta Anomaly Benchmark" (2015). NAB is MIT-licensed; this is our own code.

The rules, per series of ``n`` readings with labelled windows ``[start, end]``:

- **Probation.** The first ``min(floor(0.15 n), 0.15 * 5000)`` readings are a probationary
  period (the detector learns); nothing in it is scored. The cap at 750 readings is what NAB's
  scorer applies to its long series and therefore what its published figures use.
- **True positives.** Only the first flagged reading inside a window counts, with weight
  ``A_TP * sigma(y) / sigma(-1)`` where ``sigma(y) = 2 / (1 + exp(5 y)) - 1`` is NAB's scaled
  sigmoid and ``y = -(last - i + 1) / width`` the reading's relative position (``-1`` at the
  window's first reading, near 0 at its last; ``width`` in readings). A flag at the window's
  first reading is worth exactly ``A_TP``; later flags in the same window add nothing.
- **False positives.** A flagged reading outside every window costs ``A_FP * sigma(y)`` with
  ``y = (i - last) / (width - 1)`` measured from the end of the preceding window (its ``last``
  row and ``width``): just after a window the penalty is near 0, three window widths later it is
  the full ``-A_FP`` (``sigma`` is taken as ``-1`` beyond ``y = 3``). Before the first window a
  false positive always costs the full ``-A_FP``.
- **False negatives.** A window with no flag costs ``-A_FN``.
- **Profiles** (``A_TP``, ``A_FP``, ``A_FN``): standard (1, 0.11, 1), reward low FP
  (1, 0.22, 1), reward low FN (1, 0.11, 2).
- **Threshold.** A reading is flagged when its score is ``>=`` the threshold; one threshold per
  profile, chosen to maximise the raw score summed over every series together.
- **Normalised score** ``100 (raw - null) / (perfect - null)``: ``null`` flags nothing
  (``-A_FN`` per window), ``perfect`` flags each window's first scored reading and nothing else.

>>> t = np.arange(10)
>>> s = ScoringSeries.from_rows("toy", n=10, windows=[(4, 6)], probation=2)
>>> p = PROFILES["standard"]
>>> flags = np.zeros(10, dtype=bool); flags[4] = True   # the window's first reading
>>> round(s.raw_score(flags, p), 6)
1.0
>>> flags[1] = True   # in probation: not scored
>>> round(s.raw_score(flags, p), 6)
1.0
>>> flags[2] = True   # before any window: the full false-positive penalty
>>> round(s.raw_score(flags, p), 6)
0.89
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

#: Share of each series that is probationary, and the series length whose share caps it.
PROBATION_PERCENT = 0.15
PROBATION_CAP_ROWS = 5000


@dataclass(frozen=True)
class Profile:
    """NAB's weights of a true positive, a false positive and a false negative."""

    name: str
    tp: float
    fp: float
    fn: float


PROFILES: dict[str, Profile] = {
    "standard": Profile("standard", 1.0, 0.11, 1.0),
    "reward_low_FP_rate": Profile("reward_low_FP_rate", 1.0, 0.22, 1.0),
    "reward_low_FN_rate": Profile("reward_low_FN_rate", 1.0, 0.11, 2.0),
}


def scaled_sigmoid(y: F64 | float) -> F64:
    """NAB's ``2 / (1 + exp(5 y)) - 1``, and ``-1`` beyond ``y = 3``.

    >>> np.round(scaled_sigmoid(np.array([-1.0, 0.0, 1.0, 3.5])), 4).tolist()
    [0.9866, 0.0, -0.9866, -1.0]
    """
    y = np.asarray(y, dtype=float)
    with np.errstate(over="ignore"):
        val = 2.0 / (1.0 + np.exp(5.0 * y)) - 1.0
    return np.where(y > 3.0, -1.0, val)


_MAX_TP = float(scaled_sigmoid(-1.0))


def probation_rows(n: int, percent: float = PROBATION_PERCENT) -> int:
    """Readings at the start of a series of ``n`` that are not scored.

    >>> probation_rows(4032), probation_rows(22695)
    (604, 750)
    """
    return int(min(math.floor(percent * n), percent * PROBATION_CAP_ROWS))


@dataclass(frozen=True)
class ScoringSeries:
    """One series' rows as NAB scores them.

    ``window`` is the window index of each row (``-1`` outside every window), ``weight`` the
    unit-profile sigmoid weight of a flag there (positive ``sigma(y) / sigma(-1)`` inside a
    window, negative ``sigma(y)`` outside), ``scored`` is False in the probationary period.
    """

    name: str
    window: I64
    weight: F64
    scored: Bool
    n_windows: int
    window_rows: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def from_rows(
        cls, name: str, n: int, windows: Sequence[tuple[int, int]], probation: int | None = None
    ) -> ScoringSeries:
        """From windows given as inclusive ``(first, last)`` row indices, in time order."""
        window = np.full(n, -1, dtype=np.int64)
        weight = np.full(n, -1.0)  # before any window: the full penalty
        rows = np.arange(n)
        prev_last, prev_width = -1, 0
        for k, (first, last) in enumerate(windows):
            if not 0 <= first <= last < n or first <= prev_last:
                raise ValueError(f"{name}: window rows {(first, last)} are not ordered inside 0..{n - 1}")
            width = last - first + 1
            inside = slice(first, last + 1)
            window[inside] = k
            weight[inside] = scaled_sigmoid(-(last - rows[inside] + 1) / width) / _MAX_TP
            if prev_last >= 0:
                gap = slice(prev_last + 1, first)
                weight[gap] = _fp_weight(rows[gap], prev_last, prev_width)
            prev_last, prev_width = last, width
        if prev_last >= 0:
            tail = slice(prev_last + 1, n)
            weight[tail] = _fp_weight(rows[tail], prev_last, prev_width)
        probation = probation_rows(n) if probation is None else probation
        scored = rows >= probation
        return cls(name, window, weight, scored, len(windows), [tuple(w) for w in windows])

    @classmethod
    def from_times(cls, name: str, time_ns: I64, windows_ns: npt.NDArray[np.int64]) -> ScoringSeries:
        """Windows given as ``[start, end]`` times: the rows with ``start <= t <= end``."""
        rows = []
        for start, end in np.asarray(windows_ns).reshape(-1, 2):
            idx = np.flatnonzero((time_ns >= start) & (time_ns <= end))
            if idx.size:
                rows.append((int(idx[0]), int(idx[-1])))
        return cls.from_rows(name, int(time_ns.shape[0]), rows)

    def raw_score(self, flags: Bool, profile: Profile) -> float:
        """NAB's raw score of one series for a flag per reading."""
        return self.counts(flags, profile).raw

    def counts(self, flags: Bool, profile: Profile) -> SeriesScore:
        """Raw score and its parts: detected windows, first-flag rows, false positives."""
        flagged = np.asarray(flags, dtype=bool) & self.scored
        first_rows = np.full(self.n_windows, -1, dtype=np.int64)
        tp = 0.0
        for k in range(self.n_windows):
            hits = np.flatnonzero(flagged & (self.window == k))
            if hits.size:
                first_rows[k] = hits[0]
                tp += profile.tp * float(self.weight[hits[0]])
        outside = flagged & (self.window < 0)
        fp = profile.fp * float(self.weight[outside].sum())
        missed = int(np.count_nonzero(first_rows < 0))
        raw = tp + fp - profile.fn * missed
        return SeriesScore(self.name, raw, first_rows, int(np.count_nonzero(outside)), missed)

    def perfect(self, profile: Profile) -> float:
        """The best raw score: each window's first scored reading flagged, nothing else."""
        best = 0.0
        for k in range(self.n_windows):
            w = self.weight[(self.window == k) & self.scored]
            best += profile.tp * float(w.max()) if w.size else -profile.fn
        return best

    def null(self, profile: Profile) -> float:
        """The raw score of a detector that flags nothing."""
        return -profile.fn * self.n_windows


def _fp_weight(rows: I64, prev_last: int, prev_width: int) -> F64:
    """Unit false-positive weight (negative) of rows after a window ending at ``prev_last``."""
    return scaled_sigmoid(np.abs(rows - prev_last) / max(prev_width - 1, 1))


@dataclass(frozen=True)
class SeriesScore:
    """One series at one threshold: raw score, each window's first flagged row (-1 missed)."""

    name: str
    raw: float
    first_rows: I64
    false_positives: int
    missed: int


@dataclass(frozen=True)
class ProfileResult:
    """A detector's NAB result for one profile over a set of series."""

    profile: Profile
    threshold: float
    raw: float
    null: float
    perfect: float
    per_series: list[SeriesScore]

    @property
    def score(self) -> float:
        """``100 (raw - null) / (perfect - null)``."""
        return 100.0 * (self.raw - self.null) / (self.perfect - self.null)


def sweep(series: Sequence[ScoringSeries], scores: Sequence[F64], profile: Profile) -> tuple[float, float]:
    """The threshold that maximises the summed raw score, and that score (exhaustive sweep).

    Every distinct score of a scored reading is tried as a threshold (flag ``score >= it``),
    and one above them all (nothing flagged). Ties go to the higher threshold.
    """
    all_scores, all_window, all_weight, all_fp = [], [], [], []
    offset = 0
    for s, raw_scores in zip(series, scores, strict=True):
        sc = np.asarray(raw_scores, dtype=float)
        if sc.shape != s.window.shape:
            raise ValueError(f"{s.name}: {sc.shape[0]} scores for {s.window.shape[0]} readings")
        keep = s.scored & np.isfinite(sc)
        all_scores.append(sc[keep])
        win = s.window[keep]
        all_window.append(np.where(win >= 0, win + offset, -1))
        all_weight.append(s.weight[keep])
        all_fp.append(win < 0)
        offset += s.n_windows
    score = np.concatenate(all_scores)
    window = np.concatenate(all_window)
    weight = np.concatenate(all_weight)
    order = np.argsort(-score, kind="stable")
    score, window, weight = score[order], window[order], weight[order]
    # Contribution of each reading when the threshold reaches it: a false positive adds its
    # penalty; a window reading raises its window from -fn (or its earlier best) to a new best.
    delta = np.where(window < 0, profile.fp * weight, 0.0)
    best = np.full(offset, -profile.fn)
    for i in np.flatnonzero(window >= 0):
        k = window[i]
        value = profile.tp * weight[i]
        if value > best[k]:
            delta[i] = value - best[k]
            best[k] = value
    null = -profile.fn * offset
    total = null + np.cumsum(delta)
    # A threshold is valid only at the last reading of a run of equal scores.
    last_of_run = np.ones(score.shape[0], dtype=bool)
    last_of_run[:-1] = score[1:] != score[:-1]
    candidates = np.flatnonzero(last_of_run)
    best_threshold, best_raw = math.inf, float(null)
    if candidates.size:
        j = candidates[int(np.argmax(total[candidates]))]
        if total[j] > best_raw:
            best_threshold, best_raw = float(score[j]), float(total[j])
    return best_threshold, best_raw


def score_profile(
    series: Sequence[ScoringSeries], scores: Sequence[F64], profile: Profile, threshold: float | None = None
) -> ProfileResult:
    """NAB's result for ``profile``: the optimised threshold, or a fixed ``threshold`` if given."""
    if threshold is None:
        threshold, _ = sweep(series, scores, profile)
    per = [s.counts(np.asarray(sc) >= threshold, profile) for s, sc in zip(series, scores, strict=True)]
    return ProfileResult(
        profile,
        threshold,
        sum(p.raw for p in per),
        sum(s.null(profile) for s in series),
        sum(s.perfect(profile) for s in series),
        per,
    )


def score_all(series: Sequence[ScoringSeries], scores: Sequence[F64]) -> dict[str, ProfileResult]:
    """All three profiles, each with its own optimised threshold."""
    return {name: score_profile(series, scores, p) for name, p in PROFILES.items()}
