"""The Kalman step for one reading of one twin, in plain Python floats.

:meth:`StateSpaceKernel.step <dte_stream.twins.kalman.StateSpaceKernel.step>` applies a round
of readings with batched numpy algebra; for a round of one reading (a series replayed alone)
its few dozen numpy calls cost far more than the arithmetic. :class:`ScalarKernel` applies the
same algebra (the same formulas in the same order: predict, score, gate or reset, Joseph-form
update, noise-scale learning, forecasts) to one reading of a :class:`KernelRow`, the state of
one kernel row held as Python lists. Transitions come from the kernel's own
:class:`~dte_stream.twins.discretise.Discretiser`, cached per gap. The two paths agree to 1e-9
(``tests/unit/twins/test_scalar_path.py``).

>>> from dte_stream.twins.presets import local_linear_trend
>>> from dte_stream.twins.kalman import StateSpaceKernel
>>> from dte_stream.twins.statespace import StateSpaceState
>>> model = local_linear_trend(level_noise=1e-4, slope_noise=1e-8, measurement_noise=[0.01])
>>> kernel = ScalarKernel(StateSpaceKernel(model))
>>> state = StateSpaceState.allocate(model, capacity=1)
>>> row = KernelRow(state, 0)
>>> outs = [kernel.step(row, 0, t * 10**9, float(t), 1.0) for t in range(5)]
>>> row.store(); [round(v, 2) for v in state.x[0].tolist()]
[4.0, 1.0]
"""

# Matrix names (P, P_pred, P_new) follow the usual Kalman-filter notation on purpose.
# ruff: noqa: N803, N806
from __future__ import annotations

import math

import numpy as np

from dte_stream.twins.kalman import StateSpaceKernel
from dte_stream.twins.statespace import NOISE_SCALE_FLOOR, StateSpaceState

__all__ = ["KernelRow", "ScalarKernel", "ScalarStep"]

Matrix = list[list[float]]
_NAN = math.nan
_CACHE_SIZE = 4096

#: What one reading gives: channel estimate and std, innovation, NIS, innovation variance,
#: flags (gated, reset, late, rejected), the state's estimate and std, forecasts and their std.
ScalarStep = tuple[
    float,
    float,
    float,
    float,
    float,
    bool,
    bool,
    bool,
    bool,
    list[float],
    list[float],
    list[float],
    list[float],
]


class KernelRow:
    """One row of a :class:`StateSpaceState`, loaded into Python lists; :meth:`store` writes it back."""

    __slots__ = ("P", "count", "gated_run", "init", "last", "row", "scale", "state", "u", "x")

    def __init__(self, state: StateSpaceState, row: int) -> None:
        self.state, self.row = state, row
        self.x: list[float] = state.x[row].tolist()
        self.P: Matrix = state.P[row].tolist()
        self.last = int(state.last_ns[row])
        self.init = bool(state.initialised[row])
        self.u: list[float] = state.u[row].tolist()
        self.gated_run: list[int] = state.gated_run[row].tolist()
        self.scale = float(state.scale[row])
        self.count = int(state.scale_count[row])

    def store(self) -> None:
        s, row = self.state, self.row
        s.x[row] = self.x
        s.P[row] = self.P
        s.last_ns[row] = self.last
        s.initialised[row] = self.init
        s.u[row] = self.u
        s.gated_run[row] = self.gated_run
        s.scale[row] = self.scale
        s.scale_count[row] = self.count


class ScalarKernel:
    """The per-reading form of one :class:`StateSpaceKernel` (see the module docstring)."""

    def __init__(self, kernel: StateSpaceKernel) -> None:
        mdl = kernel.model
        self.kernel = kernel
        self.n, self.m = mdl.n, mdl.m
        self.H: Matrix = mdl.H.tolist()
        self.R: list[float] = mdl.R.tolist()
        self.P0: Matrix = mdl.P0.tolist()
        self.zero = [0.0] * self.n
        self._two = self.n == 2  # the level-and-trend model: the algebra written out
        self._cache: dict[int, tuple[Matrix, Matrix, Matrix]] = {}
        self.horizons: list[tuple[Matrix, Matrix, Matrix]] = []
        if kernel._horizon is not None:
            f, qd, g = kernel._horizon
            self.horizons = list(zip(f.tolist(), qd.tolist(), g.tolist(), strict=True))

    def transition(self, gap_ns: int) -> tuple[Matrix, Matrix, Matrix]:
        """``F``, ``Qd`` and ``G`` for a gap, from the kernel's discretiser, cached per gap."""
        got = self._cache.get(gap_ns)
        if got is None:
            f, qd, g = self.kernel.discretise(np.array([gap_ns], dtype=np.int64))
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            got = self._cache[gap_ns] = (f[0].tolist(), qd[0].tolist(), g[0].tolist())
        return got

    def step(self, row: KernelRow, channel: int, time_ns: int, value: float, r_scale: float) -> ScalarStep:
        """Apply one reading to ``row`` (as ``StateSpaceKernel.step`` applies a round of one)."""
        k = self.kernel
        n = self.n
        last, init = row.last, row.init
        obs = channel < self.m
        gap = time_ns - last
        late = init and gap < 0
        rejected = late and -gap > k.lateness_ns
        moving = init and gap > 0
        live = obs and not rejected
        measured = live and init
        c = channel if obs else 0
        r_nominal = self.R[c]
        r = r_nominal * r_scale
        keep = rejected or (not obs and not init)
        x, P = row.x, row.P
        h = self.H[c] if obs else self.zero
        x_pred, P_pred, ph, predicted, s_u = self._predict(
            x, P, row.u, self.transition(gap) if moving else None, h, r
        )
        innovation = value - predicted
        nis = _div(innovation * innovation, s_u)
        scale, count = row.scale, row.count
        if k.adaptive_noise:
            nis = 0.0 if nis == 0.0 else _div(nis, scale)
            over = measured and count >= k.warmup and nis > k.gate
        else:
            over = measured and nis > k.gate
        run = row.gated_run[c] + over
        reset = over and run >= k.reset_after
        gated = over and not reset
        apply = live and not gated
        x_new, P_new, s_upd = self._update(x_pred, P_pred, ph, h, r, innovation, apply, reset)
        if keep:
            x_new, P_new = list(x), [list(p) for p in P]
        row.x, row.P = x_new, P_new
        if live or (not obs and not rejected and init):
            row.last = max(last, time_ns)
        row.init = init or live
        if not obs and not rejected:
            row.u[channel - self.m] = value
        if live:
            row.gated_run[c] = run if gated else 0
        scored = measured
        s_out = s_u
        var_scale = 1.0
        if k.adaptive_noise:
            learn = measured and not gated
            n_new = count + learn
            if learn:
                alpha = max(1.0 / max(n_new, 1), k._alpha)
                sample = _div(innovation * innovation, s_upd)
                row.scale = max((1.0 - alpha) * scale + alpha * sample, NOISE_SCALE_FLOOR)
            row.count = n_new
            var_scale = row.scale
            scored = measured and count > 0
            s_out = s_u * scale
        std = [math.sqrt(_pos(P_new[i][i]) * var_scale) for i in range(n)]
        chan_est, chan_std, forecast, forecast_std = self._outputs(x_new, P_new, row.u, h, c, var_scale, live)
        return (
            chan_est,
            chan_std,
            innovation if measured else _NAN,
            nis if scored else _NAN,
            s_out if scored else _NAN,
            gated,
            reset,
            late and not rejected,
            rejected,
            x_new,
            std,
            forecast,
            forecast_std,
        )

    # -- the algebra, any n -------------------------------------------------------------------

    def _predict(
        self, x: list[float], P: Matrix, u: list[float], fqg: tuple[Matrix, Matrix, Matrix] | None,
        h: list[float], r: float,
    ) -> tuple[list[float], Matrix, list[float], float, float]:  # fmt: skip
        """Prediction (``fqg`` None: no time passed), ``P h'``, ``h x`` and the innovation variance."""
        if self._two:
            return self._predict2(x, P, u, fqg, h, r)
        rn = range(self.n)
        if fqg is not None:
            f, qd, g = fqg
            ones_u = [1.0, *u]
            x_pred = [
                sum(f[i][j] * x[j] for j in rn) + sum(gi * uj for gi, uj in zip(g[i], ones_u, strict=True))
                for i in rn
            ]
            fp = [[sum(f[i][a] * P[a][j] for a in rn) for j in rn] for i in rn]
            P_pred = [[sum(fp[i][a] * f[j][a] for a in rn) + qd[i][j] for j in rn] for i in rn]
        else:
            x_pred = list(x)
            P_pred = [list(p) for p in P]
        ph = [sum(P_pred[i][j] * h[j] for j in rn) for i in rn]
        return x_pred, P_pred, ph, sum(h[i] * x_pred[i] for i in rn), sum(h[i] * ph[i] for i in rn) + r

    def _update(
        self, x_pred: list[float], P_pred: Matrix, ph: list[float], h: list[float], r: float,
        innovation: float, apply: bool, reset: bool,
    ) -> tuple[list[float], Matrix, float]:  # fmt: skip
        """Joseph-form update (``reset``: the prior covariance added first), symmetrised."""
        if self._two:
            return self._update2(x_pred, P_pred, ph, h, r, innovation, apply, reset)
        rn = range(self.n)
        if reset:
            p0 = self.P0
            P_pred = [[P_pred[i][j] + p0[i][j] for j in rn] for i in rn]
            ph = [sum(P_pred[i][j] * h[j] for j in rn) for i in rn]
        s_upd = sum(h[i] * ph[i] for i in rn) + r
        gain = [_div(p, s_upd) for p in ph] if apply else self.zero
        x_new = [x_pred[i] + gain[i] * innovation for i in rn]
        ikh = [[(1.0 if i == j else 0.0) - gain[i] * h[j] for j in rn] for i in rn]
        ip = [[sum(ikh[i][a] * P_pred[a][j] for a in rn) for j in rn] for i in rn]
        joseph = [[sum(ip[i][a] * ikh[j][a] for a in rn) + (gain[i] * gain[j]) * r for j in rn] for i in rn]
        return x_new, [[0.5 * (joseph[i][j] + joseph[j][i]) for j in rn] for i in rn], s_upd

    def _outputs(
        self, x: list[float], P: Matrix, u: list[float], h: list[float], c: int, var_scale: float, live: bool
    ) -> tuple[float, float, list[float], list[float]]:
        """The channel's estimate and std, and its forecasts with their std (NaN unless ``live``)."""
        if not live:
            nans = [_NAN] * len(self.horizons)
            return _NAN, _NAN, nans, list(nans)
        if self._two:
            return self._outputs2(x, P, u, h, c, var_scale)
        rn = range(self.n)
        chan_est = sum(h[i] * x[i] for i in rn)
        chan_var = sum(h[i] * sum(P[i][j] * h[j] for j in rn) for i in rn)
        forecast: list[float] = []
        forecast_std: list[float] = []
        ones_u = [1.0, *u]
        for f_h, qd_h, g_h in self.horizons:
            x_h = [
                sum(f_h[i][j] * x[j] for j in rn) + sum(a * b for a, b in zip(g_h[i], ones_u, strict=True))
                for i in rn
            ]
            forecast.append(sum(h[i] * x_h[i] for i in rn))
            fh = [sum(f_h[i][j] * h[i] for i in rn) for j in rn]
            var = sum(fh[i] * sum(P[i][j] * fh[j] for j in rn) for i in rn)
            var += sum(h[i] * sum(qd_h[i][j] * h[j] for j in rn) for i in rn) + self.R[c]
            forecast_std.append(math.sqrt(_pos(var) * var_scale))
        return chan_est, math.sqrt(_pos(chan_var) * var_scale), forecast, forecast_std

    # -- the same algebra written out for n == 2 --------------------------------------------

    def _predict2(
        self, x: list[float], P: Matrix, u: list[float], fqg: tuple[Matrix, Matrix, Matrix] | None,
        h: list[float], r: float,
    ) -> tuple[list[float], Matrix, list[float], float, float]:  # fmt: skip
        x0, x1 = x
        (p00, p01), (p10, p11) = P
        if fqg is not None:
            ((f00, f01), (f10, f11)), ((q00, q01), (q10, q11)), g = fqg
            g0, g1 = g
            if u:
                ones_u = [1.0, *u]
                d0 = sum(a * b for a, b in zip(g0, ones_u, strict=True))
                d1 = sum(a * b for a, b in zip(g1, ones_u, strict=True))
            else:
                d0, d1 = g0[0] * 1.0, g1[0] * 1.0
            x0, x1 = f00 * x0 + f01 * x1 + d0, f10 * x0 + f11 * x1 + d1
            a00, a01 = f00 * p00 + f01 * p10, f00 * p01 + f01 * p11
            a10, a11 = f10 * p00 + f11 * p10, f10 * p01 + f11 * p11
            p00, p01 = a00 * f00 + a01 * f01 + q00, a00 * f10 + a01 * f11 + q01
            p10, p11 = a10 * f00 + a11 * f01 + q10, a10 * f10 + a11 * f11 + q11
        h0, h1 = h
        ph0, ph1 = p00 * h0 + p01 * h1, p10 * h0 + p11 * h1
        return [x0, x1], [[p00, p01], [p10, p11]], [ph0, ph1], h0 * x0 + h1 * x1, h0 * ph0 + h1 * ph1 + r

    def _update2(
        self, x_pred: list[float], P_pred: Matrix, ph: list[float], h: list[float], r: float,
        innovation: float, apply: bool, reset: bool,
    ) -> tuple[list[float], Matrix, float]:  # fmt: skip
        (p00, p01), (p10, p11) = P_pred
        h0, h1 = h
        ph0, ph1 = ph
        if reset:
            (z00, z01), (z10, z11) = self.P0
            p00, p01, p10, p11 = p00 + z00, p01 + z01, p10 + z10, p11 + z11
            ph0, ph1 = p00 * h0 + p01 * h1, p10 * h0 + p11 * h1
        s_upd = h0 * ph0 + h1 * ph1 + r
        k0, k1 = (_div(ph0, s_upd), _div(ph1, s_upd)) if apply else (0.0, 0.0)
        x_new = [x_pred[0] + k0 * innovation, x_pred[1] + k1 * innovation]
        i00, i01, i10, i11 = 1.0 - k0 * h0, 0.0 - k0 * h1, 0.0 - k1 * h0, 1.0 - k1 * h1
        a00, a01 = i00 * p00 + i01 * p10, i00 * p01 + i01 * p11
        a10, a11 = i10 * p00 + i11 * p10, i10 * p01 + i11 * p11
        j00 = a00 * i00 + a01 * i01 + (k0 * k0) * r
        j01 = a00 * i10 + a01 * i11 + (k0 * k1) * r
        j10 = a10 * i00 + a11 * i01 + (k1 * k0) * r
        j11 = a10 * i10 + a11 * i11 + (k1 * k1) * r
        off = 0.5 * (j01 + j10)
        return x_new, [[0.5 * (j00 + j00), off], [0.5 * (j10 + j01), 0.5 * (j11 + j11)]], s_upd

    def _outputs2(
        self, x: list[float], P: Matrix, u: list[float], h: list[float], c: int, var_scale: float
    ) -> tuple[float, float, list[float], list[float]]:
        x0, x1 = x
        (p00, p01), (p10, p11) = P
        h0, h1 = h
        chan_var = h0 * (p00 * h0 + p01 * h1) + h1 * (p10 * h0 + p11 * h1)
        forecast: list[float] = []
        forecast_std: list[float] = []
        r_nominal = self.R[c]
        for ((f00, f01), (f10, f11)), ((q00, q01), (q10, q11)), (g0, g1) in self.horizons:
            if u:
                ones_u = [1.0, *u]
                d0 = sum(a * b for a, b in zip(g0, ones_u, strict=True))
                d1 = sum(a * b for a, b in zip(g1, ones_u, strict=True))
            else:
                d0, d1 = g0[0] * 1.0, g1[0] * 1.0
            forecast.append(h0 * (f00 * x0 + f01 * x1 + d0) + h1 * (f10 * x0 + f11 * x1 + d1))
            fh0, fh1 = f00 * h0 + f10 * h1, f01 * h0 + f11 * h1
            var = fh0 * (p00 * fh0 + p01 * fh1) + fh1 * (p10 * fh0 + p11 * fh1)
            var += h0 * (q00 * h0 + q01 * h1) + h1 * (q10 * h0 + q11 * h1) + r_nominal
            forecast_std.append(math.sqrt(_pos(var) * var_scale))
        chan_est = h0 * x0 + h1 * x1
        return chan_est, math.sqrt(_pos(chan_var) * var_scale), forecast, forecast_std


def _div(a: float, b: float) -> float:
    """``a / b`` as numpy divides: infinite or NaN for a zero divisor, never an exception."""
    if b != 0.0:
        return a / b
    if math.isnan(a) or a == 0.0:
        return _NAN
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


def _pos(a: float) -> float:
    """``np.maximum(a, 0.0)``: NaN stays NaN."""
    return 0.0 if a < 0.0 else a
