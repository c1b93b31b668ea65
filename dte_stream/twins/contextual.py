"""The default anomaly score: the filter's surprise and a time-of-day context, vectorised over cells.

Pure numpy, like :mod:`dte_stream.twins.anomaly`, whose robust scale, tail probabilities and
recurring-surprise memory it reuses. What the strongest streaming detectors on the Numenta
Anomaly Benchmark have in common, and what this scorer takes from them:

- **Two views of normal.** The Kalman filter's innovation says "this reading is not what the
  last few readings predicted" (spikes, steps, sudden changes of noise). A *context* model says
  "this is not what this time of day usually looks like": a per-cell profile of the value in
  ``bins`` slots of the day, learned with a half-life in days. It sees what a filter tracks
  away (a daily cycle that fails to rise, a holiday's low demand, a flat stretch where a wave
  should be), which is what time-of-day and contextual detectors (CAD OSE, HTM with date
  encoders) exploit. The context view only counts once the cell has seen ``context_after``
  of data.
- **Learned, not assumed, scales.** Each view's residual is standardised by its own robust
  exponentially weighted centre and mean absolute deviation, so scores are scale-free and no
  setting depends on the sensor's unit.
- **Rare, early flags from noisy surprises**: a point tail probability for one large surprise,
  and the chi-square tail of a short window of capped squared surprises for a run of moderate
  ones; surprises that recur (the peak memory of
  :class:`~dte_stream.twins.anomaly.AnomalyScorer`) stop counting as surprising.
- **A second time scale: the anomaly likelihood** (HTM's idea): each reading's surprise
  (``-log10 p`` of its larger residual, before the peak memory) is averaged over about ten
  readings, winsorised at 3 standard deviations so that one rare huge surprise is not a rate,
  and judged against the cell's long run of surprises (half-life 8,640 readings), so
  a change in the *rate* of surprises flags (denser spikes, noise creeping up) though no single
  reading does (:meth:`ContextualScorer._likelihood`; ``likelihood=False`` turns it off).
- **One flag per episode.** After a reading scores at or above ``level``, the cell's scores are
  damped for ``quiet`` readings unless a surprise exceeds the one that flagged, so a long
  excursion raises one alert, not hundreds.

The five tail probabilities (two views, point and window; the likelihood) are combined by the
smallest, with Bonferroni factors, into ``score = min(1, -log10(p) / decades)``. Scores are computed before
the reading updates its cell; a NaN innovation scores 0.0 and is not learned.

State per cell: 14 float64 and 4 int32 numbers (counts) and two float32 profiles (mean and
scale) of ``context_bins`` numbers: 320 bytes with the default 24 slots. The mean profile holds
offsets from the cell's *anchor* (its first value), so float32 keeps its precision far from
zero (a reading of 300.0 +- 0.001); scores move by about 1e-6 at most against float64
profiles. Snapshots of the layout before December 2026 (float64 absolute profiles, no
likelihood) load through :func:`upgrade_snapshot`. That state (its arrays, growth, compaction,
snapshots) is :class:`~dte_stream.twins.contextual_state.ContextualCells`, which the scorer extends.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from dte_stream.twins.anomaly import ANOMALY_LEVEL, gaussian_log_sf
from dte_stream.twins.contextual_state import NEVER as _NEVER
from dte_stream.twins.contextual_state import ContextualCells, upgrade_snapshot

__all__ = [
    "CONTEXT_AFTER_S",
    "CONTEXT_BINS",
    "CONTEXT_HALFLIFE_S",
    "LIKELIHOOD_LONG",
    "LIKELIHOOD_SHORT",
    "QUIET_READINGS",
    "ContextualScorer",
    "upgrade_snapshot",
]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
IntP = npt.NDArray[np.intp]
Bool = npt.NDArray[np.bool_]

_NS_PER_DAY = 86_400 * 10**9
_SQRT_HALF_PI = math.sqrt(math.pi / 2.0)
_LN10 = math.log(10.0)
_U_MAX = 1e150
_Z_MAX = 1e6

#: Defaults, the same for every sensor (chosen on the 13 NAB series in shared/, see docs/anomaly.md).
CONTEXT_BINS = 24
CONTEXT_HALFLIFE_S = 7 * 86_400.0
CONTEXT_AFTER_S = 2 * 86_400.0
QUIET_READINGS = 100
#: The likelihood stage's half-lives in readings: the recent mean of surprises, and their long
#: run (8,640 readings: 30 days of 5-minute readings, the history HTM's anomaly likelihood keeps).
LIKELIHOOD_SHORT = 10.0
LIKELIHOOD_LONG = 8640.0
_LN2 = math.log(2.0)
_VAR_FLOOR = 1e-12


def _abs_z(u: F64, centre: F64, spread: F64) -> F64:
    """``|u - centre| / sigma`` with sigma from a mean absolute deviation (inf when sigma is 0).

    Called under :meth:`ContextualScorer.score`'s ``np.errstate`` (overflow, division by 0).
    """
    dev = u - centre
    sigma = spread * _SQRT_HALF_PI
    z = np.where(sigma > 0, dev / sigma, np.where(dev == 0, 0.0, np.inf))
    return np.minimum(np.abs(np.where(np.isnan(z), 0.0, z)), _Z_MAX)


#: Rounds of at least this many cells work the half-life powers out once per distinct value.
_UNIQUE_POWERS_FROM = 4096


def _half_power(halflife: F64) -> F64:
    """``0.5 ** (1 / halflife)``, worked out once per distinct value when the values repeat.

    A power costs some 60 ns per element; the cells of a round mostly share their sampling
    interval, hence their half-lives. Each element gets the very number the full form gives.
    ``np.unique`` sorts, so it pays only on large rounds: on a round of a few hundred cells (a
    shard's share of a consumed Kafka batch) it cost 4 times the powers (measured 2026-12-07).
    """
    if halflife.shape[0] < _UNIQUE_POWERS_FROM:
        return 0.5 ** (1.0 / halflife)
    distinct, inverse = np.unique(halflife, return_inverse=True)
    if distinct.shape[0] * 4 > halflife.shape[0]:
        return 0.5 ** (1.0 / halflife)
    return (0.5 ** (1.0 / distinct))[inverse.reshape(-1)]


class ContextualScorer(ContextualCells):
    """Anomaly scores in ``[0, 1]`` from innovations and a time-of-day profile; struct-of-arrays.

    Arrays have shape ``(capacity, channels)`` (the profile ``(capacity, channels, bins)``);
    :meth:`score` takes a round of readings, each cell at most once, with the same call as
    :class:`~dte_stream.twins.anomaly.AnomalyScorer`.

    >>> scorer = ContextualScorer(channels=1, capacity=1)
    >>> one, rng = np.zeros(1, dtype=np.intp), np.random.default_rng(0)
    >>> minute = 60 * 10**9
    >>> def day_cycle(t):  # a daily wave with noise; its innovations are the noise
    ...     return 10 * math.sin(2 * math.pi * t / (1440 * minute)) + rng.normal()
    >>> def score(t, value, innov):
    ...     return scorer.score(one, one, np.array([t]), np.array([value]), np.array([innov]), one + 1.0)[0]
    >>> scores = [score(k * 5 * minute, day_cycle(k * 5 * minute), rng.normal()) for k in range(6 * 288)]
    >>> bool(max(scores[-288:]) < 0.5)  # six days of 5-minute readings: the sixth day is normal
    True
    >>> t = 6 * 288 * 5 * minute + 360 * minute  # the next morning, 10 below the usual value
    >>> bool(score(t, day_cycle(t) - 10.0, 0.3) >= ANOMALY_LEVEL)  # the filter saw nothing; the context did
    True
    """

    def __init__(
        self,
        channels: int,
        capacity: int = 64,
        *,
        level: float = ANOMALY_LEVEL,
        long_halflife: float = 500.0,
        short_halflife: float = 3.0,
        clip: float = 4.0,
        window_cap: float = 4.0,
        warmup: int = 20,
        decades: float = 10.0,
        peak_halflife: float = 300.0,
        peak_time: float = 2 * 86_400.0,
        peak_max_halflife: float = 600.0,
        peak_ref: float = 4.0,
        context_bins: int = CONTEXT_BINS,
        context_halflife: float = CONTEXT_HALFLIFE_S,
        context_after: float = CONTEXT_AFTER_S,
        quiet: int = QUIET_READINGS,
        likelihood: bool = True,
        likelihood_short: float = LIKELIHOOD_SHORT,
        likelihood_long: float = LIKELIHOOD_LONG,
        likelihood_after: int = 200,
        likelihood_winsor: float = 3.0,
    ) -> None:
        if channels < 1 or capacity < 0 or context_bins < 1:
            raise ValueError(f"need channels >= 1, capacity >= 0 and context_bins >= 1, "
                             f"not {channels!r}, {capacity!r}, {context_bins!r}")  # fmt: skip
        for name, value in (
            ("long_halflife", long_halflife), ("short_halflife", short_halflife), ("clip", clip),
            ("window_cap", window_cap), ("decades", decades), ("peak_halflife", peak_halflife),
            ("peak_ref", peak_ref), ("context_halflife", context_halflife), ("peak_time", peak_time),
            ("peak_max_halflife", peak_max_halflife), ("likelihood_short", likelihood_short),
            ("likelihood_long", likelihood_long), ("likelihood_winsor", likelihood_winsor),
        ):  # fmt: skip
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, not {value!r}")
        if warmup < 2 or quiet < 0 or not 0 < level <= 1 or not context_after >= 0:
            raise ValueError(f"need warmup >= 2, quiet >= 0, 0 < level <= 1 and context_after >= 0, "
                             f"not {warmup!r}, {quiet!r}, {level!r}, {context_after!r}")  # fmt: skip
        self.channels = int(channels)
        self.bins = int(context_bins)
        self.level = float(level)
        self.clip = float(clip)
        self.window_cap = float(window_cap)
        self.warmup = int(warmup)
        self.decades = float(decades)
        self.peak_ref = float(peak_ref)
        self.context_halflife = float(context_halflife)
        self.context_after = float(context_after)
        self.quiet = int(quiet)
        self._alpha_long = 1.0 - 0.5 ** (1.0 / long_halflife)
        self._alpha_short = 1.0 - 0.5 ** (1.0 / short_halflife)
        self.peak_halflife = float(peak_halflife)
        self.peak_time = float(peak_time)
        self.peak_max_halflife = max(float(peak_max_halflife), self.peak_halflife)
        self._window_dof = (2.0 - self._alpha_short) / self._alpha_short
        self.likelihood = bool(likelihood)
        self.likelihood_after = max(int(likelihood_after), 1)
        self.likelihood_winsor = float(likelihood_winsor)
        self._alpha_l_short = 1.0 - 0.5 ** (1.0 / likelihood_short)
        self._alpha_l_long = 1.0 - 0.5 ** (1.0 / likelihood_long)
        # Standard deviation of the short mean of independent surprises, per unit of theirs.
        self._l_short_sd = math.sqrt(self._alpha_l_short / (2.0 - self._alpha_l_short))
        self._arrays: dict[str, npt.NDArray[Any]] = {}
        for name in self._FIELDS:
            self._arrays[name] = self._blank(name, 0)
        self.grow(capacity)

    def score(self, rows: IntP, ch: IntP, time_ns: I64, value: F64, innovation: F64, s: F64) -> F64:
        """Scores of one round (each cell at most once), then learn the round's readings."""
        return self.score_rounds(rows, ch, time_ns, value, innovation, s, [slice(None)])

    def score_rounds(
        self, rows: IntP, ch: IntP, time_ns: I64, value: F64, innovation: F64, s: F64,
        rounds: list[slice | IntP],
    ) -> F64:  # fmt: skip
        """Rounds of readings in turn, each as :meth:`score`: round ``j`` is the readings at
        ``rounds[j]`` (a slice or positions); the scores of every reading, NaN if in no round.

        What depends only on the reading (its cell and time-of-day slot, whether it counts, its
        clipped innovation and value) is worked out once for every round.
        """
        del s  # the innovation variance follows the engine's distrust of suspect readings: not a scale
        # One error state for the rounds (entering one costs as much as a few array operations):
        # overflow, division by 0 and inf - inf are expected and handled where they occur.
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            # Flat positions: take/put move the same numbers as a[rows, ch], at a fraction of the cost.
            cell = np.asarray(rows, dtype=np.intp) * self.channels + ch
            time_ns = np.asarray(time_ns, dtype=np.int64)
            valid = np.isfinite(innovation) & np.isfinite(value)
            u = np.minimum(np.maximum(np.where(valid, innovation, 0.0), -_U_MAX), _U_MAX)  # = np.clip
            v = np.minimum(np.maximum(np.where(valid, value, 0.0), -_U_MAX), _U_MAX)
            slot = cell * self.bins + ((time_ns % _NS_PER_DAY) * self.bins // _NS_PER_DAY).astype(np.intp)
            scores = np.full(cell.shape[0], np.nan)
            for at in rounds:
                scores[at] = self._score(cell[at], time_ns[at], valid[at], u[at], v[at], slot[at])
        return scores

    def _score(self, cell: IntP, time_ns: I64, valid: Bool, u: F64, v: F64, slot: IntP) -> F64:
        a = self._arrays
        count = a["count"].take(cell)
        # Sampling interval (seconds), for the context's learning rate and readiness.
        last = a["last_time"].take(cell)
        gap = np.where(last != _NEVER, (time_ns - last) / 1e9, np.nan)
        interval = a["interval"].take(cell)
        new_interval = np.where(
            np.isfinite(gap) & (gap > 0),
            np.where(interval > 0, interval + 0.05 * (gap - interval), gap),
            interval,
        )
        # -- the filter's surprise
        i_state = tuple(a[name].take(cell) for name in ("i_centre", "i_spread", "i_window", "i_peak"))
        # Recurring surprises are remembered for about `peak_time` (two days: a daily event
        # stays known from one day to the next), within peak_halflife..peak_max_halflife readings.
        per_time = np.where(
            new_interval > 0, self.peak_time / np.where(new_interval > 0, new_interval, 1.0), 0.0
        )
        peak_decay = _half_power(np.minimum(np.maximum(per_time, self.peak_halflife), self.peak_max_halflife))
        # -- the time-of-day context
        profile = a["profile"].take(slot).astype(np.float64)
        seen = np.isfinite(profile)
        # The profile holds offsets from the cell's anchor (its first value), in float32.
        anchor = a["anchor"].take(cell)
        anchor = np.where(np.isnan(anchor), v, anchor)
        x = v - anchor
        resid = np.where(seen, x - np.where(seen, profile, 0.0), 0.0)
        c_count = a["c_count"].take(cell)
        c_spread = a["c_spread"].take(cell)
        bin_spread = a["profile_spread"].take(slot)
        # Each slot's own scale (slots around a daily step vary more than flat ones), started
        # from the cell's overall residual scale when the slot is new.
        spread_eff = np.where(np.isfinite(bin_spread), bin_spread, c_spread)
        zero = np.zeros_like(resid)
        c_state = (zero, spread_eff, a["c_window"].take(cell), a["c_peak"].take(cell))
        # Both views in one pass over stacked arrays (elementwise: the same numbers as two passes).
        k = cell.shape[0]
        z, z_seen, wh, new_window, new_peak = self._view(
            *(np.concatenate(pair) for pair in zip((u, count, peak_decay, *i_state),
                                                   (resid, c_count, peak_decay, *c_state), strict=True))
        )  # fmt: skip
        i_z, c_z = z[:k], z[k:]
        seen_s = count * np.where(new_interval > 0, new_interval, 0.0)
        c_ready = seen & (seen_s >= self.context_after) & (c_count >= self.warmup)
        # Every tail probability of the round in one call: each view's point and window tails,
        # and the likelihood's surprise (of the larger residual z, before the peak memory).
        z_likely = np.where(c_ready, np.maximum(i_z, c_z), i_z)
        tails = gaussian_log_sf(np.concatenate((z_seen, wh, z_likely) if self.likelihood else (z_seen, wh)))
        views_logp = np.minimum(tails[: 2 * k] + math.log(2.0), tails[2 * k : 4 * k]) + math.log(2.0)
        i_logp, c_logp = views_logp[:k], views_logp[k:]
        positive = new_interval > 0
        visits_per_day = np.where(
            positive, 86_400.0 / (np.where(positive, new_interval, 1.0) * self.bins), 1.0
        )
        halflife_visits = np.maximum(self.context_halflife / 86_400.0 * visits_per_day, 1.0)
        alpha_p = 1.0 - _half_power(halflife_visits)
        # The three robust scale updates (the filter's surprise; the context's, per cell and per
        # slot) in one pass over stacked arrays, like the views.
        scaled = self._scale_step(
            np.concatenate((u, resid, resid)),
            np.concatenate((i_state[0], zero, zero)),
            np.concatenate((i_state[1], c_spread, spread_eff)),
            np.concatenate((count, c_count, c_count)),
            np.concatenate((np.full(2 * k, self._alpha_long), alpha_p)),
        )
        i_new = (scaled[0][:k], scaled[1][:k], new_window[:k], new_peak[:k])
        c_new = (new_window[k:], new_peak[k:])
        new_c_spread, new_bin_spread = scaled[1][k : 2 * k], scaled[1][2 * k :]
        log_p = np.where(c_ready, np.minimum(i_logp, c_logp) + math.log(2.0), i_logp)
        log_p = np.minimum(log_p, 0.0)
        ready = valid & (count >= self.warmup)
        if self.likelihood:
            log_p, l_new, l_old = self._likelihood(cell, tails[4 * k :], log_p)
        raw = np.where(ready, np.clip(-log_p / (_LN10 * self.decades), 0.0, 1.0), 0.0) + 0.0
        # -- one flag per episode: damp scores for `quiet` readings after a flag, unless larger.
        quiet_left = a["quiet_left"].take(cell)
        quiet_score = a["quiet_score"].take(cell)
        damped = (quiet_left > 0) & (raw <= quiet_score)
        scores = np.where(damped, raw * 0.5, raw)
        flag = valid & (scores >= self.level)
        new_quiet_left = np.where(flag, self.quiet, np.maximum(quiet_left - 1, 0))
        new_quiet_score = np.where(flag, raw, quiet_score)
        # -- learn
        keep = valid
        every = bool(keep.all())
        at, slot_at = (cell, slot) if every else (cell[keep], slot[keep])

        def put(name: str, new: npt.NDArray[Any], where: IntP = at) -> None:
            a[name].put(where, new if every else new[keep])

        for name, new in zip(("i_centre", "i_spread", "i_window", "i_peak"), i_new, strict=True):
            put(name, new)
        learn_c = keep & seen
        for name, new, old in zip(("c_window", "c_peak"), c_new, c_state[2:], strict=True):
            put(name, np.where(learn_c, new, old))
        put("c_spread", np.where(learn_c, new_c_spread, c_spread))
        put("c_count", np.where(learn_c, c_count + 1, c_count))
        new_profile = np.where(seen, profile + alpha_p * (x - np.where(seen, profile, 0.0)), x)
        put("profile", new_profile, slot_at)
        put("anchor", anchor)
        new_bin_spread = np.where(learn_c & (c_count >= 3), new_bin_spread, bin_spread)
        put("profile_spread", new_bin_spread, slot_at)
        put("count", count + 1)
        put("interval", new_interval)
        put("last_time", np.maximum(time_ns, last))
        put("quiet_left", new_quiet_left)
        put("quiet_score", new_quiet_score)
        if self.likelihood:
            for name, l_value, l_was in zip(self._LIKELIHOOD, l_new, l_old, strict=True):
                put(name, np.where(ready, l_value, l_was))
        return scores

    def _likelihood(
        self, cell: IntP, log_sf: F64, log_p: F64
    ) -> tuple[F64, tuple[F64, F64, F64, I64], tuple[F64, F64, F64, I64]]:
        """The anomaly likelihood: log p of the recent mean of surprises under their long run.

        A reading's surprise is ``-log10`` of the two-sided tail of its larger residual z
        (innovation, or the context once it counts), before the recurring-surprise memory and
        capped at ``decades``. Its short exponentially weighted mean (of surprises winsorised at
        ``likelihood_winsor`` long-run standard deviations above the long-run mean, so that one
        rare, huge surprise is not a rate) is judged against the long-run mean and standard
        deviation of surprises (scaled to the short mean's spread), after ``likelihood_after``
        surprises. A rate change (spikes that become denser, noise
        that grows) raises the short mean well above the cell's own long run, though no single
        reading is surprising. Returns the combined log p (the smaller, Bonferroni times 2),
        the learned state, to be kept where the reading is ready, and the state before. ``log_sf`` is
        :func:`~dte_stream.twins.anomaly.gaussian_log_sf` of each reading's larger residual z.
        """
        a = self._arrays
        short, mean, var = (a[name].take(cell) for name in ("l_short", "l_mean", "l_var"))
        n = a["l_count"].take(cell)
        surprise = np.clip(-(log_sf + _LN2) / _LN10, 0.0, self.decades)
        spread = np.sqrt(np.maximum(var, _VAR_FLOOR))
        # Winsorised into the short mean: one rare huge surprise is not a rate.
        bound = np.where(n >= 2, mean + self.likelihood_winsor * spread, np.inf)
        new_short = short + self._alpha_l_short * (np.minimum(surprise, bound) - short)
        sd = spread * self._l_short_sd
        zl = (new_short - mean) / sd
        rising = (n >= self.likelihood_after) & (zl > 0)
        lp_l = np.zeros_like(zl)  # the tail only where the short mean rises (none while young)
        if rising.any():
            lp_l[rising] = gaussian_log_sf(zl[rising])
        alpha = np.maximum(self._alpha_l_long, 1.0 / (n + 1.0))
        dev = surprise - mean
        new_mean = mean + alpha * dev
        new_var = (1.0 - alpha) * (var + alpha * dev * dev)
        return np.minimum(log_p, lp_l + _LN2), (new_short, new_mean, new_var, n + 1), (short, mean, var, n)

    def _view(
        self, u: F64, count: I64, peak_decay: F64, centre: F64, spread: F64, window: F64, peak: F64
    ) -> tuple[F64, F64, F64, F64, F64]:
        """The ``|z|`` of residual ``u``, the z of its point and short-window tail probabilities
        (after the peak memory; :meth:`_score` works the tails out), and the learned window and
        peak (the centre and spread are :meth:`_scale_step`'s)."""
        z = _abs_z(u, centre, spread)
        z_seen = z / np.maximum(peak / self.peak_ref, 1.0)
        z2 = np.minimum(z_seen * z_seen, self.window_cap**2)
        young = count < self.warmup
        new_window = np.where(young, 1.0, (1.0 - self._alpha_short) * window + self._alpha_short * z2)
        k = self._window_dof
        wh = (np.cbrt(new_window) - (1.0 - 2.0 / (9.0 * k))) / math.sqrt(2.0 / (9.0 * k))
        new_peak = np.where(count >= 3, np.maximum(peak * peak_decay, z), 0.0)
        return z, z_seen, wh, new_window, new_peak

    def _scale_step(
        self, u: F64, centre: F64, spread: F64, count: I64, alpha_long: F64 | float
    ) -> tuple[F64, F64]:
        """One robust update of a centre and mean absolute deviation (winsorised at ``clip`` sigma).

        Bias-corrected weights while young (``1 / (count + 1)``), then ``alpha_long``. Called
        under :meth:`score`'s ``np.errstate``.
        """
        alpha = np.maximum(alpha_long, 1.0 / (count + 1.0))
        dev = u - centre
        # No winsorising while the spread is 0 (a flat start), or it could never grow.
        limit = np.where((count >= 3) & (spread > 0), self.clip * spread * _SQRT_HALF_PI, np.inf)
        step = np.minimum(np.maximum(dev, -limit), limit)  # np.clip: the limit is never 0
        new_centre = centre + alpha * step
        new_spread = spread + alpha * (np.minimum(np.abs(dev), limit) - spread)
        return new_centre, new_spread
