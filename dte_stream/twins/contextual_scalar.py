"""The contextual anomaly score of one cell, reading by reading, in plain Python floats.

The per-reading form of :meth:`ContextualScorer.score
<dte_stream.twins.contextual.ContextualScorer.score>` (which scores a round of cells with
numpy): :class:`ContextualCell` loads one cell's statistics into Python numbers and its two
float32 time-of-day profiles into ``array("f")`` (every write rounds to float32, as the numpy
form's does), scores and learns one reading at a time with the same formulas in the same order
(the likelihood stage included), and :meth:`ContextualCell.store` writes them back. Both agree to 1e-9
(``tests/unit/twins/test_scalar_path.py``).

>>> import numpy as np
>>> from dte_stream.twins.contextual import ContextualScorer
>>> scorer = ContextualScorer(channels=1, capacity=1)
>>> cell = ContextualCell(scorer, 0, 0)
>>> [cell.score(k * 60 * 10**9, 1.0, (-1.0) ** k) for k in range(3)]
[0.0, 0.0, 0.0]
>>> cell.store(); int(scorer._arrays["count"][0, 0])
3
"""

from __future__ import annotations

import math
from array import array

from dte_stream.twins.anomaly import _ERFC_COEF
from dte_stream.twins.contextual import (
    _LN10,
    _NS_PER_DAY,
    _SQRT_HALF_PI,
    _U_MAX,
    _VAR_FLOOR,
    _Z_MAX,
    ContextualScorer,
)
from dte_stream.twins.contextual_state import NEVER as _NEVER

__all__ = ["ContextualCell", "gaussian_log_sf"]

_LN2 = math.log(2.0)
_SQRT2 = math.sqrt(2.0)
_NEVER_INT = int(_NEVER)
_C0, _C1, _C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9 = _ERFC_COEF
_INF = math.inf


def gaussian_log_sf(z: float) -> float:
    """:func:`dte_stream.twins.anomaly.gaussian_log_sf` of one number.

    >>> round(math.exp(gaussian_log_sf(0.0)), 4), round(gaussian_log_sf(40.0) / math.log(10), 2)
    (0.5, -349.44)
    """
    x = abs(z) / _SQRT2
    x = x if x <= 1e100 or math.isnan(x) else 1e100
    t = 1.0 / (1.0 + 0.5 * x)
    # Horner's rule written out: the same products and sums as the loop of the numpy form.
    poly = (((((((_C9 * t + _C8) * t + _C7) * t + _C6) * t + _C5) * t + _C4) * t + _C3) * t + _C2) * t + _C1
    poly = poly * t + _C0
    log_upper = math.log(t) - x * x + poly - _LN2
    if z >= 0:
        return log_upper
    return math.log1p(-math.exp(log_upper))


class ContextualCell:
    """One (row, channel) cell of a :class:`ContextualScorer`, loaded into Python numbers."""

    __slots__ = (
        "anchor", "c_count", "c_peak", "c_spread", "c_window", "ch", "count", "i_centre", "i_peak",
        "i_spread", "i_window", "interval", "l_count", "l_mean", "l_short", "l_var", "last_time",
        "profile", "profile_spread",
        "quiet_left", "quiet_score", "row", "scorer",
    )  # fmt: skip

    def __init__(self, scorer: ContextualScorer, row: int, ch: int) -> None:
        self.scorer, self.row, self.ch = scorer, row, ch
        a = scorer._arrays
        self.count = int(a["count"][row, ch])
        self.last_time = int(a["last_time"][row, ch])
        self.interval = float(a["interval"][row, ch])
        self.i_centre = float(a["i_centre"][row, ch])
        self.i_spread = float(a["i_spread"][row, ch])
        self.i_window = float(a["i_window"][row, ch])
        self.i_peak = float(a["i_peak"][row, ch])
        self.c_spread = float(a["c_spread"][row, ch])
        self.c_window = float(a["c_window"][row, ch])
        self.c_peak = float(a["c_peak"][row, ch])
        self.c_count = int(a["c_count"][row, ch])
        self.quiet_left = int(a["quiet_left"][row, ch])
        self.quiet_score = float(a["quiet_score"][row, ch])
        self.l_short = float(a["l_short"][row, ch])
        self.l_mean = float(a["l_mean"][row, ch])
        self.l_var = float(a["l_var"][row, ch])
        self.l_count = int(a["l_count"][row, ch])
        self.anchor = float(a["anchor"][row, ch])
        # array("f"): every write rounds to float32, as the scorer's float32 profiles do.
        self.profile = array("f", a["profile"][row, ch].tobytes())
        self.profile_spread = array("f", a["profile_spread"][row, ch].tobytes())

    def store(self) -> None:
        a, row, ch = self.scorer._arrays, self.row, self.ch
        for name in ContextualScorer._FIELDS:
            a[name][row, ch] = getattr(self, name)

    def score(self, time_ns: int, value: float, innovation: float) -> float:
        """Score one reading, then learn it (as ``ContextualScorer.score`` does a round of one)."""
        sc = self.scorer
        count = self.count
        valid = math.isfinite(innovation) and math.isfinite(value)
        last = self.last_time
        interval = self.interval
        new_interval = interval
        if last != _NEVER_INT:
            gap = (time_ns - last) / 1e9
            if gap > 0:  # finite: an int64 difference
                new_interval = interval + 0.05 * (gap - interval) if interval > 0 else gap
        positive = new_interval > 0
        # -- the filter's surprise
        u = _clip(innovation if valid else 0.0, _U_MAX)
        per_time = sc.peak_time / new_interval if positive else 0.0
        per_time = min(max(per_time, sc.peak_halflife), sc.peak_max_halflife)
        peak_decay = 0.5 ** (1.0 / per_time)
        i_logp, i_z, i_centre, i_spread, i_window, i_peak = self._view(
            u, count, peak_decay, self.i_centre, self.i_spread, self.i_window, self.i_peak
        )
        # -- the time-of-day context
        bin_ = (time_ns % _NS_PER_DAY) * sc.bins // _NS_PER_DAY
        profile = self.profile[bin_]
        seen = math.isfinite(profile)
        v = _clip(value if valid else 0.0, _U_MAX)
        anchor = v if math.isnan(self.anchor) else self.anchor
        x = v - anchor
        resid = x - profile if seen else 0.0
        c_count = self.c_count
        c_spread = self.c_spread
        bin_spread = self.profile_spread[bin_]
        spread_eff = bin_spread if math.isfinite(bin_spread) else c_spread
        c_logp, c_z, _, _, c_window, c_peak = self._view(
            resid, c_count, peak_decay, 0.0, spread_eff, self.c_window, self.c_peak
        )
        seen_s = count * (new_interval if positive else 0.0)
        c_ready = seen and seen_s >= sc.context_after and c_count >= sc.warmup
        log_p = min(i_logp, c_logp) + _LN2 if c_ready else i_logp
        log_p = min(log_p, 0.0)
        raw = 0.0
        if valid and count >= sc.warmup:
            if sc.likelihood:
                log_p = self._likelihood((c_z if c_z > i_z else i_z) if c_ready else i_z, log_p)
            raw = min(max(-log_p / (_LN10 * sc.decades), 0.0), 1.0) + 0.0
        quiet_left = self.quiet_left
        scored = raw * 0.5 if quiet_left > 0 and raw <= self.quiet_score else raw
        if not valid:
            return scored
        if scored >= sc.level:
            self.quiet_left, self.quiet_score = sc.quiet, raw
        else:
            self.quiet_left = max(quiet_left - 1, 0)
        # -- learn
        self.i_centre, self.i_spread, self.i_window, self.i_peak = i_centre, i_spread, i_window, i_peak
        if seen:
            self.c_window, self.c_peak = c_window, c_peak
            self.c_spread = self._scale_step(resid, 0.0, c_spread, c_count, sc._alpha_long)[1]
            self.c_count = c_count + 1
        visits_per_day = 86_400.0 / (new_interval * sc.bins) if positive else 1.0
        halflife_visits = max(sc.context_halflife / 86_400.0 * visits_per_day, 1.0)
        alpha_p = 1.0 - 0.5 ** (1.0 / halflife_visits)
        self.profile[bin_] = profile + alpha_p * (x - profile) if seen else x
        self.anchor = anchor
        if seen and c_count >= 3:
            self.profile_spread[bin_] = self._scale_step(resid, 0.0, spread_eff, c_count, alpha_p)[1]
        self.count = count + 1
        self.interval = new_interval
        self.last_time = max(time_ns, last)
        return scored

    def _view(
        self,
        u: float,
        count: int,
        peak_decay: float,
        centre: float,
        spread: float,
        window: float,
        peak: float,
    ) -> tuple[float, float, float, float, float, float]:
        """Log tail probability of ``u``, its ``|z|``, and the learned centre, spread, window and peak.

        ``a if a < b else b`` and the like stand for Python's ``min``/``max`` (same results,
        without the call): this runs twice per reading.
        """
        sc = self.scorer
        dev = u - centre
        sigma = spread * _SQRT_HALF_PI
        z = dev / sigma if sigma > 0 else (0.0 if dev == 0 else _INF)
        if math.isnan(z):
            z = 0.0
        else:
            z = abs(z)
            z = _Z_MAX if z > _Z_MAX else z
        scaled_peak = peak / sc.peak_ref
        z_seen = z / (scaled_peak if scaled_peak > 1.0 else 1.0)
        log_p_point = gaussian_log_sf(z_seen) + _LN2
        z2 = z_seen * z_seen
        cap2 = sc.window_cap**2
        z2 = cap2 if cap2 < z2 else z2
        alpha_short = sc._alpha_short
        new_window = 1.0 if count < sc.warmup else (1.0 - alpha_short) * window + alpha_short * z2
        k = sc._window_dof
        wh = (math.cbrt(new_window) - (1.0 - 2.0 / (9.0 * k))) / math.sqrt(2.0 / (9.0 * k))
        log_p_window = gaussian_log_sf(wh)
        log_p = (log_p_window if log_p_window < log_p_point else log_p_point) + _LN2
        # The robust centre and spread (_scale_step, written out).
        young_alpha = 1.0 / (count + 1.0)
        alpha_long = sc._alpha_long
        alpha = young_alpha if young_alpha > alpha_long else alpha_long
        limit = sc.clip * spread * _SQRT_HALF_PI if count >= 3 and spread > 0 else _INF
        step = -limit if -limit > dev else dev
        step = limit if limit < step else step
        abs_dev = abs(dev)
        new_spread = spread + alpha * ((limit if limit < abs_dev else abs_dev) - spread)
        decayed = peak * peak_decay
        new_peak = (z if z > decayed else decayed) if count >= 3 else 0.0
        return log_p, z, centre + alpha * step, new_spread, new_window, new_peak

    def _likelihood(self, z: float, log_p: float) -> float:
        """``ContextualScorer._likelihood`` of one ready reading: the combined log p; learns."""
        sc = self.scorer
        surprise = -(gaussian_log_sf(z) + _LN2) / _LN10
        surprise = 0.0 if surprise < 0.0 else sc.decades if surprise > sc.decades else surprise
        n, mean, var = self.l_count, self.l_mean, self.l_var
        spread = math.sqrt(var if var > _VAR_FLOOR else _VAR_FLOOR)
        bound = mean + sc.likelihood_winsor * spread if n >= 2 else _INF
        short = self.l_short + sc._alpha_l_short * ((surprise if surprise < bound else bound) - self.l_short)
        sd = spread * sc._l_short_sd
        zl = (short - mean) / sd
        lp_l = gaussian_log_sf(zl) if n >= sc.likelihood_after and zl > 0 else 0.0
        alpha = max(sc._alpha_l_long, 1.0 / (n + 1.0))
        dev = surprise - mean
        self.l_short, self.l_mean, self.l_count = short, mean + alpha * dev, n + 1
        self.l_var = (1.0 - alpha) * (var + alpha * dev * dev)
        lp_l += _LN2
        return lp_l if lp_l < log_p else log_p

    def _scale_step(
        self, u: float, centre: float, spread: float, count: int, alpha_long: float
    ) -> tuple[float, float]:
        alpha = max(alpha_long, 1.0 / (count + 1.0))
        dev = u - centre
        limit = self.scorer.clip * spread * _SQRT_HALF_PI if count >= 3 and spread > 0 else _INF
        step = min(max(dev, -limit), limit)
        return centre + alpha * step, spread + alpha * (min(abs(dev), limit) - spread)


def _clip(x: float, bound: float) -> float:
    """``np.clip(x, -bound, bound)``; NaN stays NaN."""
    return -bound if x < -bound else bound if x > bound else x
