"""The Kalman kernel: a general linear-Gaussian state-space filter, vectorised over the twins of one type.

Pure numpy: no Bytewax, no driver. A :class:`~dte_stream.twins.statespace.StateSpaceModel`
describes one twin type (state dimension ``n``, ``m`` observed channels, ``p`` control
channels); a :class:`~dte_stream.twins.statespace.StateSpaceState` holds every twin's filter
as struct-of-arrays; :meth:`StateSpaceKernel.step` applies one *round* of readings, at most
one per twin, with whole-array numpy operations. (The model and the state are in
:mod:`dte_stream.twins.statespace`.)

Why a round is one reading per *twin* (not per (twin, channel) cell): all channels of a twin
observe and modify the same state vector ``x`` and covariance ``P``, so two readings of one
twin in the same vectorised step would race on the same rows. Readings of different channels
at the same time stamp go to consecutive rounds; the second sees a zero gap (no predict), and
with a diagonal ``R`` these sequential scalar updates equal one joint update.

Per reading (vectorised over the round):

1. Time gap ``dt`` from the twin's last event time. ``dt > 0``: predict with the exact
   discretisation for that gap (see :class:`Discretiser`). ``dt <= 0``: no predict. A reading
   older than the last time by more than ``lateness_ns`` is *rejected*: the state is left as it
   was and the reading is flagged for the dead-letter output; a late reading within the bound
   is applied at the current state's time, without a backward predict.
2. Observation channel ``c``: scalar update with row ``H[c]``, innovation ``z - H[c] x``,
   its variance ``S``, ``NIS = innovation^2 / S``. If ``NIS > gate`` the reading is *gated*:
   the state advances to the prediction but is not corrected. After ``reset_after``
   consecutive gated readings of one (twin, channel) the next gated reading is taken as a
   genuine change: the prior covariance ``P0`` is added to the prediction's and the reading is
   applied (flag ``reset``). Covariance update in Joseph form, then symmetrised.
3. Control channel ``j``: the twin is predicted to the reading's time with the old input, then
   ``u[j]`` takes the value (zero-order hold until the next control reading).

The first observation of a twin starts from the prior ``(x0, P0)`` without predict and without
gating; its innovation and NIS are reported as NaN (they measure the prior, not the filter).

Trust: ``r_scale`` multiplies a reading's ``R[c]`` (``>= 1``; data-quality flags). Adaptive noise
(``adaptive_noise=True``): ``Q``, ``R``, ``P0`` are known up to a factor ``sigma^2`` per twin. The
filter runs in the model's units; ``sigma^2`` is learned from the unit-scale NIS of applied
readings (plain mean, then exponentially weighted with half-life ``noise_halflife`` readings,
held at ``NOISE_SCALE_FLOOR`` or above);
NIS and gating use ``sigma^2`` from before the reading (score before learn), gating is off for
the first ``warmup`` learned readings, and reported variances are in the estimated scale, which
makes the filter scale-free. Scalar models (``n == 1``) take an elementwise fast path.
"""

# Matrix names (A, H, Q, R, P, P0, B) follow the usual Kalman-filter notation on purpose.
# ruff: noqa: N806
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from dte_stream.times import NS_PER_S
from dte_stream.twins.discretise import Discretiser
from dte_stream.twins.statespace import (
    CHI2_1DOF_999,
    NOISE_SCALE_FLOOR,
    StateSpaceModel,
    StateSpaceState,
)

__all__ = ["StateSpaceKernel", "StateSpaceOutput", "noise_weight"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
IntP = npt.NDArray[np.intp]
Bool = npt.NDArray[np.bool_]


def _empty_f64() -> F64:
    return np.empty(0)


@dataclass(slots=True)
class StateSpaceOutput:
    """Per reading of a round (k readings, n states, h horizons); NaN where a value does not apply.

    ``estimate``/``std`` (k, n): the state after the reading; ``predicted``, ``innovation``,
    ``s`` (innovation variance), ``nis``: of the reading's channel (NaN for control readings,
    rejected readings and a twin's first observation; ``s`` and ``nis`` also while an adaptive
    twin has no noise scale yet); ``channel_estimate``/``channel_std`` (k,): the reading's channel
    after the reading, ``H[c] x`` and ``sqrt(H[c] P H[c]')`` (NaN for control and rejected
    readings); ``forecast``/``forecast_std`` (k, h): the reading's channel at the horizons after
    the reading's time, std including its (nominal) measurement noise. Flags: ``gated`` (not
    applied: NIS over the gate), ``reset`` (applied after ``reset_after`` gated readings, with
    the prior covariance added), ``late`` (older than the state, applied without backward
    predict), ``rejected`` (older than the lateness bound: not applied, to be dead-lettered).
    """

    estimate: F64
    std: F64
    predicted: F64
    innovation: F64
    s: F64
    nis: F64
    gated: Bool
    reset: Bool
    late: Bool
    rejected: Bool
    forecast: F64 = field(default_factory=lambda: np.empty((0, 0)))
    forecast_std: F64 = field(default_factory=lambda: np.empty((0, 0)))
    channel_estimate: F64 = field(default_factory=_empty_f64)
    channel_std: F64 = field(default_factory=_empty_f64)


class StateSpaceKernel:
    """The vectorised filter step for one :class:`StateSpaceModel`.

    Channel indices ``0..m-1`` are observations (rows of ``H``), ``m..m+p-1`` control inputs.
    With ``adaptive_noise`` the model's ``Q``, ``R`` and ``P0`` are known only up to a common
    factor ``sigma^2`` per twin, estimated online from the NIS (see the module docstring).

    >>> from dte_stream.twins.presets import local_linear_trend
    >>> model = local_linear_trend(level_noise=1e-4, slope_noise=1e-8, measurement_noise=[0.01])
    >>> kernel = StateSpaceKernel(model, horizons_s=[60.0])
    >>> state = StateSpaceState.allocate(model, capacity=2)
    >>> for t in range(5):  # twin 0 rises 1 per second, twin 1 is flat at 5
    ...     out = kernel.step(state, np.array([0, 1]), np.array([0, 0]),
    ...                       np.full(2, t * 10**9), np.array([float(t), 5.0]))
    >>> np.round(state.x, 2).tolist(), np.round(out.forecast[:, 0], 1).tolist()
    ([[4.0, 1.0], [5.0, 0.0]], [63.9, 5.0])
    """

    def __init__(
        self,
        model: StateSpaceModel,
        *,
        gate: float = CHI2_1DOF_999,
        reset_after: int = 3,
        lateness_ns: int = 60 * NS_PER_S,
        horizons_s: list[float] | None = None,
        adaptive_noise: bool = False,
        noise_halflife: float = 200.0,
        warmup: int = 10,
    ) -> None:
        if not gate > 0:
            raise ValueError(f"gate must be positive (math.inf disables gating), not {gate!r}")
        if reset_after < 1:
            raise ValueError(f"reset_after must be at least 1, not {reset_after!r}")
        if lateness_ns < 0:
            raise ValueError(f"lateness_ns must not be negative, not {lateness_ns!r}")
        if not (math.isfinite(noise_halflife) and noise_halflife > 0):
            raise ValueError(f"noise_halflife must be a positive number of readings, not {noise_halflife!r}")
        if warmup < 1:
            raise ValueError(f"warmup must be at least 1 reading, not {warmup!r}")
        self.model = model
        self.gate = float(gate)
        self.reset_after = int(reset_after)
        self.lateness_ns = int(lateness_ns)
        self.adaptive_noise = bool(adaptive_noise)
        self.noise_halflife = float(noise_halflife)
        self.warmup = int(warmup)
        self._alpha = noise_weight(noise_halflife)
        self.horizons_s = [float(h) for h in horizons_s or []]
        if any(not (math.isfinite(h) and h > 0) for h in self.horizons_s):
            raise ValueError(f"horizons must be positive seconds, not {self.horizons_s}")
        self.discretise = Discretiser(model)
        self._scalar = model.n == 1
        horizon_ns = np.array([round(h * NS_PER_S) for h in self.horizons_s], dtype=np.int64)
        self._horizon = self.discretise(horizon_ns) if horizon_ns.size else None

    def step(
        self,
        state: StateSpaceState,
        rows: IntP,
        channel_idx: IntP,
        time_ns: I64,
        values: F64,
        r_scale: F64 | None = None,
    ) -> StateSpaceOutput:
        """Apply one round of readings to ``state`` in place; each row at most once.

        ``r_scale`` (k,), finite and ``>= 1``: a factor on the measurement variance ``R[c]`` of
        each reading (lower trust); ``None`` means all ones.
        """
        mdl = self.model
        m = mdl.m
        last = state.last_ns[rows]
        init = state.initialised[rows]
        obs = channel_idx < m
        gap = time_ns - last
        late = init & (gap < 0)
        rejected = late & (-gap > self.lateness_ns)
        moving = init & (gap > 0)
        live = obs & ~rejected
        measured = live & init
        ch = np.where(obs, channel_idx, 0)
        r_nominal = mdl.R[ch]
        r = r_nominal if r_scale is None else r_nominal * _trust(r_scale, rows.shape[0])
        # Control readings hold the new input from now on; they do not initialise a twin.
        keep = rejected | (~obs & ~init)
        lin = _Scalar(self, state, rows) if self._scalar else _Matrix(self, state, rows)
        predicted, s_u = lin.predict_and_score(moving, gap, obs, ch, r)
        innovation = values - predicted
        nis = innovation * innovation / s_u
        if self.adaptive_noise:
            scale = state.scale[rows]
            count = state.scale_count[rows]
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # scale 0 or tiny: +inf
                nis = np.where(nis == 0.0, 0.0, nis / scale)
            over = measured & (count >= self.warmup) & (nis > self.gate)
        else:
            over = measured & (nis > self.gate)
        run = state.gated_run[rows, ch] + over
        reset = over & (run >= self.reset_after)
        gated = over & ~reset
        s_upd = lin.update(innovation, r, live & ~gated, reset, keep)
        state.last_ns[rows] = np.where(live | (~obs & ~rejected & init), np.maximum(last, time_ns), last)
        state.initialised[rows] = init | live
        ctrl = ~obs & ~rejected
        if ctrl.any():
            state.u[rows[ctrl], channel_idx[ctrl] - m] = values[ctrl]
        state.gated_run[rows[live], ch[live]] = np.where(gated, run, 0)[live]
        # Outputs: NaN where the quantity does not apply; variances in the estimated noise scale.
        nan = np.nan
        scored = measured
        s_out = s_u
        var_scale: F64 | float = 1.0
        if self.adaptive_noise:
            learn = measured & ~gated
            var_scale = self._learn(state, rows, scale, count, learn, innovation * innovation / s_upd)
            scored = measured & (count > 0)
            s_out = s_u * scale
        estimate, diag, chan_est, chan_var = lin.posterior()
        column = np.reshape(var_scale, (-1, 1))
        out = StateSpaceOutput(
            estimate=estimate,
            std=np.sqrt(np.maximum(diag, 0.0) * column),
            predicted=np.where(live, predicted, nan),
            innovation=np.where(measured, innovation, nan),
            s=np.where(scored, s_out, nan),
            nis=np.where(scored, nis, nan),
            gated=gated,
            reset=reset,
            late=late & ~rejected,
            rejected=rejected,
            channel_estimate=np.where(live, chan_est, nan),
            channel_std=np.where(live, np.sqrt(np.maximum(chan_var, 0.0) * var_scale), nan),
        )
        if self._horizon is not None:
            mean, var = lin.forecast(self._horizon, state.u[rows], r_nominal)
            out.forecast = np.where(live[:, None], mean, nan)
            out.forecast_std = np.where(live[:, None], np.sqrt(np.maximum(var, 0.0) * column), nan)
        return out

    def _learn(
        self, state: StateSpaceState, rows: IntP, scale: F64, count: I64, learn: Bool, sample: F64
    ) -> F64:
        """Update ``sigma^2`` from the unit-scale NIS of the applied readings; the scale after."""
        n_new = count + learn
        alpha = np.maximum(1.0 / np.maximum(n_new, 1), self._alpha)
        new = np.where(learn, np.maximum((1.0 - alpha) * scale + alpha * sample, NOISE_SCALE_FLOOR), scale)
        state.scale[rows] = new
        state.scale_count[rows] = n_new
        return new


def noise_weight(halflife: float) -> float:
    """The exponential weight of one reading for a half-life of ``halflife`` readings.

    >>> round(noise_weight(1.0), 3)
    0.5
    """
    return float(-math.expm1(-math.log(2.0) / halflife))


def _trust(r_scale: npt.ArrayLike, k: int) -> F64:
    rs = np.asarray(r_scale, dtype=np.float64)
    if rs.shape != (k,):
        raise ValueError(f"r_scale has shape {rs.shape}, expected ({k},): one factor per reading")
    if not (np.isfinite(rs).all() and (rs >= 1.0).all()):
        raise ValueError("r_scale must be finite and at least 1 (a factor on the measurement variance)")
    return rs


class _Matrix:
    """The linear algebra of one step for any ``n``: batched ``(k, n, n)`` matrix products."""

    def __init__(self, kernel: StateSpaceKernel, state: StateSpaceState, rows: IntP) -> None:
        self.kernel, self.state, self.rows = kernel, state, rows
        self.x = state.x[rows]
        self.P = state.P[rows]
        self.u = state.u[rows]

    def predict_and_score(self, moving: Bool, gap: I64, obs: Bool, ch: IntP, r: F64) -> tuple[F64, F64]:
        mdl = self.kernel.model
        x, P = self.x, self.P
        if moving.all():  # the usual round: no masks, the same products
            f, qd, g = self.kernel.discretise(gap)
            ones_u = np.concatenate([np.ones((x.shape[0], 1)), self.u], axis=1)
            self.x_pred = x_pred = (f @ x[:, :, None] + g @ ones_u[:, :, None])[:, :, 0]
            self.P_pred = P_pred = f @ P @ np.swapaxes(f, 1, 2) + qd
        else:
            self.x_pred = x_pred = x.copy()
            self.P_pred = P_pred = P.copy()
            if moving.any():
                f, qd, g = self.kernel.discretise(gap[moving])
                ones_u = np.concatenate([np.ones((int(moving.sum()), 1)), self.u[moving]], axis=1)
                x_pred[moving] = (f @ x[moving][:, :, None] + g @ ones_u[:, :, None])[:, :, 0]
                P_pred[moving] = f @ P[moving] @ np.swapaxes(f, 1, 2) + qd
        # Control readings: h = 0, no update.
        self.h = h = np.where(obs[:, None], mdl.H[ch], 0.0)
        self.ph = (P_pred @ h[:, :, None])[:, :, 0]
        return np.einsum("kn,kn->k", h, x_pred), np.einsum("kn,kn->k", h, self.ph) + r

    def update(self, innovation: F64, r: F64, apply: Bool, reset: Bool, keep: Bool) -> F64:
        """Scalar update (Joseph form), written to the state; the innovation variance it used."""
        mdl = self.kernel.model
        h, P_pred, ph = self.h, self.P_pred, self.ph
        if reset.any():
            P_pred[reset] += mdl.P0
            ph = (P_pred @ h[:, :, None])[:, :, 0]
        s_upd: F64 = np.einsum("kn,kn->k", h, ph) + r
        gain = np.where(apply[:, None], ph / s_upd[:, None], 0.0)
        x_new = self.x_pred + gain * innovation[:, None]
        ikh = np.eye(mdl.n) - gain[:, :, None] * h[:, None, :]
        P_new = (
            ikh @ P_pred @ np.swapaxes(ikh, 1, 2) + (gain[:, :, None] * gain[:, None, :]) * r[:, None, None]
        )
        P_new = 0.5 * (P_new + np.swapaxes(P_new, 1, 2))
        if keep.any():
            x_new[keep] = self.x[keep]
            P_new[keep] = self.P[keep]
        self.state.x[self.rows] = self.x_new = x_new
        self.state.P[self.rows] = self.P_new = P_new
        return s_upd

    def posterior(self) -> tuple[F64, F64, F64, F64]:
        """``x``, ``diag P``, ``h x`` and ``h P h'`` after the update."""
        h, P = self.h, self.P_new
        hph = np.einsum("kn,kn->k", h, (P @ h[:, :, None])[:, :, 0])
        return self.x_new, np.einsum("kii->ki", P), np.einsum("kn,kn->k", h, self.x_new), hph

    def forecast(self, horizon: tuple[F64, F64, F64], u: F64, r: F64) -> tuple[F64, F64]:
        """Mean and variance (unit scale) of each reading's channel at every horizon."""
        f, qd, g = horizon  # (H, n, n), (H, n, n), (H, n, 1 + p)
        x, P, h = self.x_new, self.P_new, self.h
        ones_u = np.concatenate([np.ones((x.shape[0], 1)), u], axis=1)
        x_h = np.einsum("hij,kj->khi", f, x) + np.einsum("hij,kj->khi", g, ones_u)
        mean = np.einsum("kn,khn->kh", h, x_h)
        # Var(h x_h) = (F' h)' P (F' h) + h Qd h': project first, no (k, H, n, n) temporaries.
        fh = np.einsum("hij,ki->khj", f, h)
        var = np.einsum("khi,kij,khj->kh", fh, P, fh) + np.einsum("ki,hij,kj->kh", h, qd, h) + r[:, None]
        return mean, var


class _Scalar:
    """The same algebra for ``n == 1`` with elementwise ``(k,)`` arrays: the per-channel random walk."""

    def __init__(self, kernel: StateSpaceKernel, state: StateSpaceState, rows: IntP) -> None:
        self.kernel, self.state, self.rows = kernel, state, rows
        self.x = state.x[rows, 0]
        self.P = state.P[rows, 0, 0]

    def predict_and_score(self, moving: Bool, gap: I64, obs: Bool, ch: IntP, r: F64) -> tuple[F64, F64]:
        mdl = self.kernel.model
        x, P = self.x, self.P
        if moving.all():
            f, qd, g = self.kernel.discretise.scalar(gap)
            self.x_pred = f * x + self._drive(g, self.state.u[self.rows])
            self.P_pred = f * f * P + qd
        else:
            self.x_pred = x.copy()
            self.P_pred = P.copy()
            if moving.any():
                f, qd, g = self.kernel.discretise.scalar(gap[moving])
                u = self.state.u[self.rows[moving]]
                self.x_pred[moving] = f * x[moving] + self._drive(g, u)
                self.P_pred[moving] = f * f * P[moving] + qd
        self.h = h = np.where(obs, mdl.H[ch, 0], 0.0)
        self.ph = self.P_pred * h
        return h * self.x_pred, h * self.ph + r

    @staticmethod
    def _drive(g: F64, u: F64) -> F64:
        drive: F64 = g[:, 0] if u.shape[1] == 0 else g[:, 0] + np.einsum("kj,kj->k", g[:, 1:], u)
        return drive

    def update(self, innovation: F64, r: F64, apply: Bool, reset: Bool, keep: Bool) -> F64:
        h, P_pred, ph = self.h, self.P_pred, self.ph
        if reset.any():
            P_pred = np.where(reset, P_pred + self.kernel.model.P0[0, 0], P_pred)
            ph = P_pred * h
        s_upd: F64 = h * ph + r
        gain = np.where(apply, ph / s_upd, 0.0)
        x_new = self.x_pred + gain * innovation
        ikh = 1.0 - gain * h
        P_new = ikh * ikh * P_pred + gain * gain * r
        if keep.any():
            x_new = np.where(keep, self.x, x_new)
            P_new = np.where(keep, self.P, P_new)
        self.state.x[self.rows, 0] = self.x_new = x_new
        self.state.P[self.rows, 0, 0] = self.P_new = P_new
        return s_upd

    def posterior(self) -> tuple[F64, F64, F64, F64]:
        h = self.h
        return self.x_new[:, None], self.P_new[:, None], h * self.x_new, h * h * self.P_new

    def forecast(self, horizon: tuple[F64, F64, F64], u: F64, r: F64) -> tuple[F64, F64]:
        f, qd, g = horizon[0][:, 0, 0], horizon[1][:, 0, 0], horizon[2][:, 0, :]  # (H,), (H,), (H, 1 + p)
        h = self.h[:, None]
        drive = g[:, 0] + u @ g[:, 1:].T  # (k, H)
        mean = h * (f * self.x_new[:, None] + drive)
        var = h * h * (f * f * self.P_new[:, None] + qd) + r[:, None]
        return mean, var
