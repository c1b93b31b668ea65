"""Scale-free anomaly scores from filter innovations, vectorised over (twin row, channel) cells.

Pure numpy: no Bytewax, no river. The state-space kernel hands every reading's innovation
(reading minus prediction) and its variance ``s``; :class:`AnomalyScorer` turns them into a
score in ``[0, 1]`` per reading, using only statistics the cell learned from its own past:

1. ``u = innovation`` by default (``use_variance=False``); with ``use_variance=True``,
   ``u = innovation / sqrt(s)``, where ``s`` only matters relative to its own history. The
   default ignores ``s`` because the engine inflates a suspect reading's measurement variance
   (quality flags), which would divide a spike's surprise away; on NAB both give the same
   results. Either way multiplying a series by any constant leaves every score unchanged.
2. Long view: a robust exponentially weighted centre and mean absolute deviation of ``u``
   (updates winsorised at ``clip`` standard deviations, so one spike barely moves them, yet a
   lasting change of noise level is learned within a few hundred readings);
   ``z = (u - centre) / sigma``.
3. Two tail probabilities: the *point* view, two-sided Gaussian ``P(|Z| >= |z|)``; the *short
   window* view, an exponentially weighted mean of ``min(z^2, window_cap^2)`` over a few
   readings against its chi-square law (Wilson-Hilferty), which sees a run of moderate
   surprises that no single reading shows. The smaller p-value (Bonferroni: times 2) gives
   ``score = min(1, -log10(p) / decades)``: with ``decades = 10`` a score of 0.5 is a p-value
   of 1e-5, and Gaussian noise mostly scores below 0.1.
4. Recurring surprises are normal: a slowly decaying peak of ``|z|`` (half-life
   ``peak_halflife`` readings) remembers how large surprises have lately been; when it exceeds
   ``peak_ref``, ``z`` is divided by ``peak / peak_ref`` before both views. Daily steps in a
   square-wave load or a server's routine spikes stop flagging after their first occurrences,
   while a surprise larger than any recent one still does.
5. A new normal: after ``relearn_after`` consecutive readings at or above ``level`` the cell
   forgets its statistics and learns afresh (scores 0 for ``warmup`` readings), so a level
   or noise shift that the filter does not absorb raises one bounded episode of flags.

Scores are computed *before* the reading updates its cell; a NaN innovation (a twin's first
reading, a rejected or control reading) scores 0.0 and is not learned.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

__all__ = ["ANOMALY_LEVEL", "AnomalyScorer", "gaussian_log_sf"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
IntP = npt.NDArray[np.intp]

#: Default score at or above which a reading is flagged ``ANOMALY`` (p-value about 1e-7 with
#: ``decades = 10``); chosen on the NAB benchmark (benchmarks/bench_nab.py), the same for every series.
ANOMALY_LEVEL: float = 0.7

_SQRT_HALF_PI = math.sqrt(math.pi / 2.0)
_U_MAX = 1e150
_Z_MAX = 1e6
_LN10 = math.log(10.0)
# Numerical Recipes' erfc: t exp(-x^2 + poly(t)), relative error below 1.2e-7 for every x >= 0.
_ERFC_COEF = (
    -1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
    0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277,
)  # fmt: skip


def _log_erfc_pos(x: F64) -> F64:
    """``log(erfc(x))`` for ``x >= 0`` without underflow (log of Numerical Recipes' erfcc)."""
    x = np.minimum(x, 1e100)  # infinite z: a finite, hugely negative log
    t = 1.0 / (1.0 + 0.5 * x)
    poly = t * _ERFC_COEF[-1]  # Horner's scheme from the top: the same products and sums
    poly += _ERFC_COEF[-2]
    for coef in _ERFC_COEF[-3::-1]:  # in place: no temporaries
        poly *= t
        poly += coef
    return np.log(t) - x * x + poly


def gaussian_log_sf(z: F64) -> F64:
    """Natural log of the standard normal upper tail ``P(Z >= z)``, accurate far into the tail.

    >>> np.round(np.exp(gaussian_log_sf(np.array([-1.0, 0.0, 1.959964]))), 4).tolist()
    [0.8413, 0.5, 0.025]
    >>> round(float(gaussian_log_sf(np.array([40.0]))[0] / math.log(10)), 2)  # no underflow
    -349.44
    """
    x = np.abs(z) / math.sqrt(2.0)
    log_upper = _log_erfc_pos(x) - math.log(2.0)  # log P(Z >= |z|)
    lower = ~(z >= 0)  # negative z (and NaN): log P(Z >= -|z|), worked out only where needed
    if lower.any():
        log_upper[lower] = np.log1p(-np.exp(log_upper[lower]))
    return log_upper


class AnomalyScorer:
    """Per-cell anomaly scores in ``[0, 1]`` from innovations; struct-of-arrays, one round at a time.

    Arrays have shape ``(capacity, channels)``; :meth:`score` takes a round of readings, each
    cell at most once (the bank's rounds already guarantee it for the kernel). Parameters are
    in readings (half-lives) and standard deviations; none depends on the data's unit.

    >>> scorer = AnomalyScorer(channels=1, capacity=2)
    >>> rng = np.random.default_rng(0)
    >>> rows, ch = np.array([0, 1]), np.array([0, 0])
    >>> for t in range(200):  # two twins of unit-free noise (innovation variance s = 1)
    ...     noise = scorer.score(rows, ch, np.full(2, t), np.zeros(2), rng.normal(size=2), np.ones(2))
    >>> bool((noise < 0.3).all())
    True
    >>> spike = scorer.score(rows, ch, np.full(2, 200), np.zeros(2), np.array([0.5, 12.0]), np.ones(2))
    >>> [bool(x) for x in spike >= ANOMALY_LEVEL]
    [False, True]
    """

    _FIELDS = ("count", "centre", "spread", "window", "peak", "run")

    def __init__(
        self,
        channels: int,
        capacity: int = 64,
        *,
        long_halflife: float = 500.0,
        short_halflife: float = 3.0,
        clip: float = 4.0,
        window_cap: float = 4.0,
        warmup: int = 20,
        decades: float = 10.0,
        level: float = ANOMALY_LEVEL,
        relearn_after: int = 20,
        peak_halflife: float = 300.0,
        peak_ref: float = 4.0,
        use_variance: bool = False,
    ) -> None:
        if channels < 1 or capacity < 0:
            raise ValueError(f"need channels >= 1 and capacity >= 0, not {channels!r}, {capacity!r}")
        for name, value in (
            ("long_halflife", long_halflife), ("short_halflife", short_halflife), ("clip", clip),
            ("window_cap", window_cap), ("decades", decades), ("peak_halflife", peak_halflife),
            ("peak_ref", peak_ref),
        ):  # fmt: skip
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, not {value!r}")
        if warmup < 2 or relearn_after < 1 or not 0 < level <= 1:
            raise ValueError(
                f"need warmup >= 2, relearn_after >= 1 and 0 < level <= 1, "
                f"not {warmup!r}, {relearn_after!r}, {level!r}"
            )
        self.channels = int(channels)
        self.long_halflife = float(long_halflife)
        self.short_halflife = float(short_halflife)
        self.clip = float(clip)
        self.window_cap = float(window_cap)
        self.warmup = int(warmup)
        self.decades = float(decades)
        self.level = float(level)
        self.relearn_after = int(relearn_after)
        self.peak_halflife = float(peak_halflife)
        self.peak_ref = float(peak_ref)
        self.use_variance = bool(use_variance)
        self._peak_decay = 0.5 ** (1.0 / self.peak_halflife)
        self._alpha_long = 1.0 - 0.5 ** (1.0 / self.long_halflife)
        self._alpha_short = 1.0 - 0.5 ** (1.0 / self.short_halflife)
        # Effective degrees of freedom of the short window's weighted mean of squares.
        self._window_dof = (2.0 - self._alpha_short) / self._alpha_short
        self.count = np.zeros((0, self.channels), dtype=np.int64)
        self.centre = np.zeros((0, self.channels))
        self.spread = np.zeros((0, self.channels))
        self.window = np.ones((0, self.channels))
        self.peak = np.zeros((0, self.channels))
        self.run = np.zeros((0, self.channels), dtype=np.int64)
        self.grow(capacity)

    @property
    def capacity(self) -> int:
        return int(self.count.shape[0])

    def grow(self, capacity: int) -> None:
        """Make room for ``capacity`` rows in place; existing rows keep their statistics."""
        extra = int(capacity) - self.capacity
        if extra <= 0:
            return
        shape = (extra, self.channels)
        self.count = np.concatenate([self.count, np.zeros(shape, dtype=np.int64)])
        self.centre = np.concatenate([self.centre, np.zeros(shape)])
        self.spread = np.concatenate([self.spread, np.zeros(shape)])
        self.window = np.concatenate([self.window, np.ones(shape)])
        self.peak = np.concatenate([self.peak, np.zeros(shape)])
        self.run = np.concatenate([self.run, np.zeros(shape, dtype=np.int64)])

    def take(self, index: IntP) -> None:
        """Keep only rows ``index``, in that order (compaction after eviction); capacity is kept."""
        index = np.asarray(index, dtype=np.intp)
        capacity = self.capacity
        for name in self._FIELDS:
            old = getattr(self, name)
            new = np.zeros_like(old) if name != "window" else np.ones_like(old)
            new[: index.shape[0]] = old[index]
            setattr(self, name, new)
        self.grow(capacity)

    def reset_rows(self, index: IntP) -> None:
        """Forget the given rows (eviction or a new twin in a reused row)."""
        for name in self._FIELDS:
            getattr(self, name)[index] = 1.0 if name == "window" else 0

    def snapshot(
        self, n_rows: int, rows: npt.NDArray[np.intp] | slice | None = None, *, copy: bool = True
    ) -> dict[str, npt.NDArray[np.generic]]:
        """Copies of the first ``n_rows`` rows of every array (or of ``rows`` only), by name
        (``copy=False``, or ``rows`` a slice: views of the rows, for a caller that pickles them
        at once)."""
        if rows is not None:
            return {name: getattr(self, name)[rows] for name in self._FIELDS}
        return {
            name: getattr(self, name)[:n_rows].copy() if copy else getattr(self, name)[:n_rows]
            for name in self._FIELDS
        }

    def restore(self, arrays: Mapping[str, npt.NDArray[np.generic]]) -> None:
        """Load a :meth:`snapshot` into rows ``0..n-1`` (growing if needed); other rows are reset."""
        missing = [name for name in self._FIELDS if name not in arrays]
        if missing:
            raise ValueError(f"anomaly scorer snapshot lacks {missing}")
        n = int(np.asarray(arrays["count"]).shape[0])
        for name in self._FIELDS:
            value = np.asarray(arrays[name])
            if value.shape != (n, self.channels):
                raise ValueError(f"anomaly scorer snapshot field {name} has shape {value.shape}, "
                                 f"expected {(n, self.channels)}")  # fmt: skip
        self.grow(n)
        self.reset_rows(np.arange(self.capacity, dtype=np.intp))
        for name in self._FIELDS:
            getattr(self, name)[:n] = arrays[name]

    def score_rounds(
        self, rows: IntP, ch: IntP, time_ns: I64, value: F64, innovation: F64, s: F64,
        rounds: list[slice | IntP],
    ) -> F64:  # fmt: skip
        """Rounds of readings in turn, each as :meth:`score`: round ``j`` is the readings at
        ``rounds[j]`` (a slice or positions); the scores of every reading, NaN if in no round."""
        scores = np.full(np.shape(rows)[0], np.nan)
        for at in rounds:
            scores[at] = self.score(rows[at], ch[at], time_ns[at], value[at], innovation[at], s[at])
        return scores

    def score(self, rows: IntP, ch: IntP, time_ns: I64, value: F64, innovation: F64, s: F64) -> F64:
        """Scores of one round (each cell at most once), then learn the round's readings.

        ``time_ns`` and ``value`` are accepted for the engine's uniform call but not used: the
        innovation already carries what the filter expected.
        """
        del time_ns, value
        count = self.count[rows, ch]
        centre = self.centre[rows, ch]
        spread = self.spread[rows, ch]
        window = self.window[rows, ch]
        peak = self.peak[rows, ch]
        run = self.run[rows, ch]
        valid = np.isfinite(innovation)
        use = self.use_variance & np.isfinite(s) & (s > 0)
        norm = np.where(use, np.sqrt(np.where(use, s, 1.0)), 1.0)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            # |u| <= U_MAX keeps every later difference, product and square finite; z <= Z_MAX
            # is already certain (score 1) and keeps its square finite.
            u = np.clip(np.where(valid, innovation, 0.0) / norm, -_U_MAX, _U_MAX)
            dev = u - centre
            sigma = spread * _SQRT_HALF_PI  # mean absolute deviation -> Gaussian standard deviation
            z = np.where(sigma > 0, dev / sigma, np.where(dev == 0, 0.0, np.inf))
        z = np.minimum(np.abs(np.where(np.isnan(z), 0.0, z)), _Z_MAX)
        z_seen = z / np.maximum(peak / self.peak_ref, 1.0)
        # Point view: two-sided tail of z; short window: chi-square upper tail of the capped squares.
        log_p_point = gaussian_log_sf(z_seen) + math.log(2.0)
        z2 = np.minimum(z_seen * z_seen, self.window_cap**2)
        new_window = (1.0 - self._alpha_short) * window + self._alpha_short * z2
        k = self._window_dof
        wh = (np.cbrt(new_window) - (1.0 - 2.0 / (9.0 * k))) / math.sqrt(2.0 / (9.0 * k))
        log_p_window = gaussian_log_sf(wh)
        log_p = np.minimum(np.minimum(log_p_point, log_p_window) + math.log(2.0), 0.0)
        ready = valid & (count >= self.warmup)
        # + 0.0 turns the -0.0 of a p-value of exactly 1 into 0.0
        scores = np.where(ready, np.clip(-log_p / (_LN10 * self.decades), 0.0, 1.0), 0.0) + 0.0
        # Learn: bias-corrected weights while young, winsorised deviations once a spread exists.
        alpha = np.maximum(self._alpha_long, 1.0 / (count + 1.0))
        limit = np.where(count >= 3, self.clip * sigma, np.inf)
        step = np.clip(dev, -limit, limit)
        new_centre = centre + alpha * step
        new_spread = spread + alpha * (np.minimum(np.abs(dev), limit) - spread)
        new_run = np.where(scores >= self.level, run + 1, 0)
        relearn = valid & (new_run >= self.relearn_after)
        learn = valid & ~relearn
        r, c = rows[valid], ch[valid]
        self.centre[r, c] = np.where(relearn, 0.0, new_centre)[valid]
        self.spread[r, c] = np.where(relearn, 0.0, new_spread)[valid]
        self.window[r, c] = np.where(relearn | (count < self.warmup), 1.0, new_window)[valid]
        new_peak = np.where(count >= 3, np.maximum(peak * self._peak_decay, z), 0.0)
        self.peak[r, c] = np.where(relearn, 0.0, new_peak)[valid]
        self.count[r, c] = np.where(learn, count + 1, 0)[valid]
        self.run[r, c] = np.where(learn, new_run, 0)[valid]
        return scores
