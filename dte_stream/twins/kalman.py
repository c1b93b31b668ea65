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
makes the filter scale-free. The linear algebra of a round is in :mod:`dte_stream.twins.kalman_linalg`:
batched matrix products for any ``n``, written out elementwise for ``n == 1`` and ``n == 2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from dte_stream.times import NS_PER_S
from dte_stream.twins.discretise import Discretiser
from dte_stream.twins.kalman_linalg import algebra_for
from dte_stream.twins.statespace import (
    CHI2_1DOF_999,
    NOISE_SCALE_FLOOR,
    StateSpaceModel,
    StateSpaceState,
)

__all__ = ["StateSpaceKernel", "StateSpaceOutput", "noise_weight", "same_but_noise"]

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
        variants: list[StateSpaceModel] | None = None,
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
        #: Models that differ from ``model`` only in ``Q`` and ``R`` (noise variants; see
        #: :meth:`step_rounds`), the first ``model`` itself; empty without variants.
        self.variants = list(variants or [])
        self._variant_r: F64 | None = None
        self._variant_horizon_qd: F64 | None = None
        if self.variants:
            _check_variants(model, self.variants)
            self._variant_r = np.stack([v.R for v in self.variants])  # (V, m)
        noises = [v.Q for v in self.variants] if self.variants else None
        self.discretise = Discretiser(model, noises=noises)
        self._algebra = algebra_for(model.n)
        horizon_ns = np.array([round(h * NS_PER_S) for h in self.horizons_s], dtype=np.int64)
        self._horizon = self.discretise(horizon_ns) if horizon_ns.size else None
        if self.variants and horizon_ns.size:  # (V, H, n, n): each variant's Qd at the horizons
            each = np.repeat(np.arange(len(self.variants)), horizon_ns.size)
            qd = self.discretise(np.tile(horizon_ns, len(self.variants)), each)[1]
            self._variant_horizon_qd = qd.reshape(len(self.variants), horizon_ns.size, *qd.shape[1:])

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
        return self.step_rounds(state, rows, channel_idx, time_ns, values, r_scale, [(0, rows.shape[0])])[0]

    def step_rounds(
        self,
        state: StateSpaceState,
        rows: IntP,
        channel_idx: IntP,
        time_ns: I64,
        values: F64,
        r_scale: F64 | None,
        spans: list[tuple[int, int]],
        variant: IntP | None = None,
    ) -> list[StateSpaceOutput]:
        """Apply rounds of readings in turn, as :meth:`step` for each; round ``j`` is the readings
        at positions ``spans[j][0]`` to ``spans[j][1]`` (each row at most once in a round).

        What depends only on a reading's channel and trust (observation or control, its
        measurement variance) is worked out once for every round. ``variant``: each reading's
        index in :attr:`variants` (a kernel built with them), whose ``Q`` and ``R`` it takes:
        the same numbers as that variant's own kernel gives.
        """
        obs = channel_idx < self.model.m
        ch = np.where(obs, channel_idx, 0)
        if variant is None:
            r_nominal = self.model.R[ch]
        elif self._variant_r is None:
            raise ValueError("noise variants given to a kernel built without variants")
        else:
            r_nominal = self._variant_r[variant, ch]
        r = r_nominal if r_scale is None else r_nominal * _trust(r_scale, rows.shape[0])
        every_obs = bool(obs.all())  # no control readings: the masks for them are left out
        return [
            self._round(
                state, rows[a:b], channel_idx[a:b], time_ns[a:b], values[a:b], obs[a:b], ch[a:b],
                r_nominal[a:b], r[a:b], None if variant is None else variant[a:b], every_obs,
            )
            for a, b in spans
        ]  # fmt: skip

    def _round(
        self, state: StateSpaceState, rows: IntP, channel_idx: IntP, time_ns: I64, values: F64,
        obs: Bool, ch: IntP, r_nominal: F64, r: F64, variant: IntP | None, every_obs: bool,
    ) -> StateSpaceOutput:  # fmt: skip
        """One round of :meth:`step_rounds`: ``obs``, ``ch`` (observed channel, else 0), the
        measurement variances ``r_nominal`` and ``r`` (with trust) of each reading, its noise
        variant, and whether every reading observes (``obs`` all true) given."""
        m = self.model.m
        last = state.last_ns[rows]
        init = state.initialised[rows]
        gap = time_ns - last
        late = init & (gap < 0)
        rejected = late & (-gap > self.lateness_ns)
        moving = init & (gap > 0)
        live = ~rejected if every_obs else obs & ~rejected
        measured = live & init
        # Control readings hold the new input from now on; they do not initialise a twin.
        keep = rejected if every_obs else rejected | (~obs & ~init)
        lin = self._algebra(self, state, rows, variant)
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
        run_cells = state.gated_run[:, 0] if m == 1 else None  # one observed channel: a 1-d view
        run = (state.gated_run[rows, ch] if run_cells is None else run_cells[rows]) + over
        reset = over & (run >= self.reset_after)
        gated = over & ~reset
        s_upd = lin.update(innovation, r, live & ~gated, reset, keep)
        applied = live if every_obs else live | (~obs & ~rejected & init)
        state.last_ns[rows] = np.where(applied, np.maximum(last, time_ns), last)
        state.initialised[rows] = init | live
        if not every_obs:
            ctrl = ~obs & ~rejected
            if ctrl.any():
                state.u[rows[ctrl], channel_idx[ctrl] - m] = values[ctrl]
        if run_cells is None:
            state.gated_run[rows[live], ch[live]] = np.where(gated, run, 0)[live]
        else:
            run_cells[rows[live]] = np.where(gated, run, 0)[live]
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
        # Variances in the noise scale; without adaptive noise the scale is 1.0 (x * 1.0 == x).
        column = np.reshape(var_scale, (-1, 1)) if self.adaptive_noise else None
        diag = np.maximum(diag, 0.0)
        chan_var = np.maximum(chan_var, 0.0)
        if column is not None:
            diag = diag * column
            chan_var = chan_var * var_scale
        out = StateSpaceOutput(
            estimate=estimate,
            std=np.sqrt(diag),
            predicted=np.where(live, predicted, nan),
            innovation=np.where(measured, innovation, nan),
            s=np.where(scored, s_out, nan),
            nis=np.where(scored, nis, nan),
            gated=gated,
            reset=reset,
            late=late & ~rejected,
            rejected=rejected,
            channel_estimate=np.where(live, chan_est, nan),
            channel_std=np.where(live, np.sqrt(chan_var), nan),
        )
        if self._horizon is not None:
            horizon = self._horizon
            if variant is not None and self._variant_horizon_qd is not None:
                horizon = (horizon[0], self._variant_horizon_qd[variant], horizon[2])
            mean, var = lin.forecast(horizon, state.u[rows], r_nominal)
            out.forecast = np.where(live[:, None], mean, nan)
            var = np.maximum(var, 0.0)
            if column is not None:
                var = var * column
            out.forecast_std = np.where(live[:, None], np.sqrt(var), nan)
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


def _check_variants(model: StateSpaceModel, variants: list[StateSpaceModel]) -> None:
    """Noise variants must be ``model`` but for ``Q`` and ``R``, with one of the algebras written
    out (``n <= 2``: the per-reading noise is elementwise there)."""
    if variants[0] is not model:
        raise ValueError("the first noise variant must be the kernel's own model")
    if model.n > 2:
        raise ValueError(f"noise variants need a model of at most 2 states, not {model.n}")
    for v in variants:
        if not same_but_noise(model, v):
            raise ValueError("noise variants must differ from the model only in Q and R")


def same_but_noise(a: StateSpaceModel, b: StateSpaceModel) -> bool:
    """Whether two models differ at most in their noise (``Q`` and ``R``)."""
    return (
        a.kind == b.kind
        and a.step_s == b.step_s
        and (a.n, a.m, a.p) == (b.n, b.m, b.p)
        and all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("A", "H", "x0", "P0", "c", "B"))
    )


def _trust(r_scale: npt.ArrayLike, k: int) -> F64:
    rs = np.asarray(r_scale, dtype=np.float64)
    if rs.shape != (k,):
        raise ValueError(f"r_scale has shape {rs.shape}, expected ({k},): one factor per reading")
    # Every factor in [1, inf): NaN fails both comparisons (one pass each, no temporaries kept).
    if k and not (rs.min() >= 1.0 and rs.max() < math.inf):
        raise ValueError("r_scale must be finite and at least 1 (a factor on the measurement variance)")
    return rs
