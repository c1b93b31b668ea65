"""A general linear-Gaussian state-space Kalman filter, vectorised over the twins of one type.

Pure numpy: no Bytewax, no driver. A :class:`StateSpaceModel` describes one twin type (state
dimension ``n``, ``m`` observed channels, ``p`` control channels); a :class:`StateSpaceState`
holds every twin's filter as struct-of-arrays; :meth:`StateSpaceKernel.step` applies one
*round* of readings, at most one per twin, with whole-array numpy operations.

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
"""

# Matrix names (A, H, Q, R, P, P0, B) follow the usual Kalman-filter notation on purpose.
# ruff: noqa: N803, N806
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from dte_stream.times import NS_PER_S

__all__ = [
    "NEVER",
    "Discretiser",
    "StateSpaceKernel",
    "StateSpaceModel",
    "StateSpaceOutput",
    "StateSpaceState",
    "expm_batched",
]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
IntP = npt.NDArray[np.intp]
Bool = npt.NDArray[np.bool_]

#: ``last_ns`` of a twin that has never had an observation.
NEVER = np.iinfo(np.int64).min
#: chi-square 99.9 % quantile for one degree of freedom: the default NIS gate.
CHI2_1DOF_999 = 10.827566170662733


def _matrix(name: str, value: npt.ArrayLike, shape: tuple[int, int]) -> F64:
    a = np.array(value, dtype=np.float64, ndmin=2)
    if a.shape != shape:
        raise ValueError(f"matrix {name} has shape {a.shape}, expected {shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"matrix {name} has non-finite values (NaN or inf)")
    return a


def _covariance(name: str, value: npt.ArrayLike, size: int, *, definite: bool) -> F64:
    a = _matrix(name, value, (size, size))
    if not np.allclose(a, a.T, rtol=1e-10, atol=1e-12):
        raise ValueError(f"matrix {name} is not symmetric")
    a = 0.5 * (a + a.T)
    low = float(np.linalg.eigvalsh(a).min()) if size else 0.0
    tol = 1e-12 * max(1.0, float(np.abs(a).max(initial=0.0)))
    if low < -tol or (definite and low <= 0.0):
        kind = "positive definite" if definite else "positive semidefinite"
        raise ValueError(f"matrix {name} is not {kind} (smallest eigenvalue {low:.3g})")
    return a


@dataclass(frozen=True, eq=False)
class StateSpaceModel:
    """The linear-Gaussian model of one twin type; the constructor validates every matrix.

    Continuous time (``kind="continuous"``): ``dx = (A x + c + B u) dt + dw`` with
    ``Cov(dw) = Q dt`` (``Q`` per second). Discrete time (``kind="discrete"``): every
    ``step_s`` seconds ``x <- A x + c + B u + w`` with ``Cov(w) = Q``; a gap is rounded to a
    whole number of steps. Channel ``i < m`` observes ``z = H[i] x + v``, ``Var(v) = R[i]``;
    control channel ``j`` sets ``u[j]``. ``x0``/``P0`` is the prior of a new twin and the
    covariance added on a gating reset.
    """

    A: F64
    H: F64
    Q: F64
    R: F64
    x0: F64
    P0: F64
    c: F64
    B: F64
    kind: Literal["continuous", "discrete"] = "continuous"
    step_s: float = 1.0
    state_names: tuple[str, ...] = ()
    channel_names: tuple[str, ...] = ()
    control_names: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        A: npt.ArrayLike,
        H: npt.ArrayLike,
        Q: npt.ArrayLike,
        R: npt.ArrayLike,
        *,
        P0: npt.ArrayLike,
        x0: npt.ArrayLike | None = None,
        c: npt.ArrayLike | None = None,
        B: npt.ArrayLike | None = None,
        kind: Literal["continuous", "discrete"] = "continuous",
        step_s: float = 1.0,
        state_names: tuple[str, ...] = (),
        channel_names: tuple[str, ...] = (),
        control_names: tuple[str, ...] = (),
    ) -> StateSpaceModel:
        """Validate and normalise the matrices; ``R`` may be a vector (the diagonal) or diagonal matrix.

        Raises :class:`ValueError` naming the matrix and the problem (shape, non-finite,
        not symmetric, not positive (semi)definite).
        """
        a = np.array(A, dtype=np.float64, ndmin=2)
        if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
            raise ValueError(f"matrix A has shape {a.shape}, expected a non-empty square (n, n)")
        n = a.shape[0]
        a = _matrix("A", a, (n, n))
        h = np.array(H, dtype=np.float64, ndmin=2)
        if h.ndim != 2 or h.shape[1] != n or h.shape[0] == 0:
            raise ValueError(f"matrix H has shape {h.shape}, expected (m, {n}) with m >= 1")
        h = _matrix("H", h, h.shape)
        m = h.shape[0]
        q = _covariance("Q", Q, n, definite=False)
        r_in = np.asarray(R, dtype=np.float64)
        if r_in.ndim == 2:
            r_full = _covariance("R", r_in, m, definite=True)
            if np.count_nonzero(r_full - np.diag(np.diag(r_full))):
                raise ValueError("matrix R must be diagonal (channels are updated one reading at a time)")
            r = np.diag(r_full).copy()
        else:
            r = _matrix("R", r_in.reshape(1, -1), (1, m))[0]
            if (r <= 0).any():
                raise ValueError("matrix R must have positive diagonal entries (measurement variances)")
        p0 = _covariance("P0", P0, n, definite=True)
        x0v = np.zeros(n) if x0 is None else _matrix("x0", np.reshape(x0, (1, -1)), (1, n))[0]
        cv = np.zeros(n) if c is None else _matrix("c", np.reshape(c, (1, -1)), (1, n))[0]
        b = np.zeros((n, 0)) if B is None else np.array(B, dtype=np.float64, ndmin=2)
        if b.ndim != 2 or b.shape[0] != n:
            raise ValueError(f"matrix B has shape {b.shape}, expected ({n}, p)")
        b = _matrix("B", b, b.shape)
        if kind not in ("continuous", "discrete"):
            raise ValueError(f"kind must be 'continuous' or 'discrete', not {kind!r}")
        if not (math.isfinite(step_s) and step_s > 0):
            raise ValueError(f"step_s must be a positive number of seconds, not {step_s!r}")
        for label, names, size in (("state", state_names, n), ("channel", channel_names, m)):
            if names and len(names) != size:
                raise ValueError(f"{len(names)} {label} names for {size} {label}s")
        if control_names and len(control_names) != b.shape[1]:
            raise ValueError(f"{len(control_names)} control names for {b.shape[1]} columns of B")
        return cls(
            a, h, q, r, x0v, p0, cv, b, kind, float(step_s),
            state_names or tuple(f"x{i}" for i in range(n)),
            channel_names or tuple(f"y{i}" for i in range(m)),
            control_names or tuple(f"u{j}" for j in range(b.shape[1])),
        )  # fmt: skip

    @property
    def n(self) -> int:
        return int(self.A.shape[0])

    @property
    def m(self) -> int:
        return int(self.H.shape[0])

    @property
    def p(self) -> int:
        return int(self.B.shape[1])


def expm_batched(a: F64) -> F64:
    """Matrix exponential of a stack ``(k, d, d)``: Padé (6, 6) with per-matrix scaling and squaring.

    Each matrix is scaled by ``2**-s`` so that its 1-norm is at most 0.5, where the (6, 6)
    Padé approximant is accurate to about 1e-17; numpy has no batched ``expm``.
    """
    k, d, _ = a.shape
    if k == 0:
        return a.copy()
    norm = np.abs(a).sum(axis=1).max(axis=1)
    s = np.maximum(0, np.ceil(np.log2(np.maximum(norm, 1e-300) / 0.5))).astype(np.int64)
    x = a * np.ldexp(1.0, -s)[:, None, None]
    coef = [1.0, 1 / 2, 5 / 44, 1 / 66, 1 / 792, 1 / 15840, 1 / 665280]
    eye = np.broadcast_to(np.eye(d), a.shape)
    x2 = x @ x
    x4 = x2 @ x2
    x6 = x4 @ x2
    even = coef[0] * eye + coef[2] * x2 + coef[4] * x4 + coef[6] * x6
    odd = x @ (coef[1] * eye + coef[3] * x2 + coef[5] * x4)
    e = np.linalg.solve(even - odd, even + odd)
    for j in range(int(s.max())):
        sel = s > j
        e[sel] = e[sel] @ e[sel]
    return e


class Discretiser:
    """Transition ``F``, process noise ``Qd`` and input matrix ``G`` (on ``[1, u]``) for time gaps.

    Continuous models: Van Loan's method, exact for any gap. ``expm([[-A, Q], [0, A']] dt)``
    gives ``F = E22'`` and ``Qd = F E12``; ``expm([[A, [c B]], [0, 0]] dt)`` gives ``F`` and
    ``G`` (zero-order hold on ``u``). Two batched exponentials of size ``2n`` and ``n+1+p``
    per *distinct* gap: about 10-20 us per distinct gap for n <= 4, amortised over twins that
    share a gap. Discrete models: ``k = round(dt / step_s)`` steps composed by repeated
    squaring, batched over the distinct ``k``. Results for up to ``cache_size`` distinct gaps
    are cached (regular sampling hits the cache; irregular sampling computes in one batch).
    """

    def __init__(self, model: StateSpaceModel, cache_size: int = 4096) -> None:
        self.model = model
        self.cache_size = cache_size
        self._cache: dict[int, tuple[F64, F64, F64]] = {}
        self._step_ns = max(1, round(model.step_s * NS_PER_S))

    def __call__(self, dt_ns: I64) -> tuple[F64, F64, F64]:
        """Stacks ``F (k, n, n)``, ``Qd (k, n, n)``, ``G (k, n, 1 + p)`` for gaps ``dt_ns > 0``."""
        uniq, inverse = np.unique(dt_ns, return_inverse=True)
        if uniq.shape[0] > 256:  # irregular sampling: one batch, no cache traffic
            f, q, g = self._compute(uniq)
            return f[inverse], q[inverse], g[inverse]
        keys = uniq.tolist()
        todo = [key for key in keys if key not in self._cache]
        if todo:
            f, q, g = self._compute(np.asarray(todo, dtype=np.int64))
            if len(self._cache) + len(todo) > self.cache_size:
                self._cache.clear()
            for i, key in enumerate(todo):
                self._cache[key] = (f[i], q[i], g[i])
        parts = [self._cache[key] for key in keys]
        f = np.stack([pt[0] for pt in parts])
        q = np.stack([pt[1] for pt in parts])
        g = np.stack([pt[2] for pt in parts])
        return f[inverse], q[inverse], g[inverse]

    def _compute(self, dt_ns: I64) -> tuple[F64, F64, F64]:
        mdl = self.model
        n, p = mdl.n, mdl.p
        k = dt_ns.shape[0]
        cb = np.concatenate([mdl.c[:, None], mdl.B], axis=1)  # (n, 1 + p)
        if mdl.kind == "discrete":
            return self._compose(dt_ns, cb)
        # Van Loan's block holds exp(-A dt), which overflows for stable A and long gaps: compute
        # each gap as 2**halvings equal parts with ||A|| dt_part <= 1, then compose by squaring.
        norm = float(np.abs(mdl.A).sum(axis=0).max())
        dt_s = dt_ns.astype(np.float64) / NS_PER_S
        halvings = np.maximum(0, np.ceil(np.log2(np.maximum(norm * dt_s, 1e-300)))).astype(np.int64)
        dt = np.ldexp(dt_s, -halvings)[:, None, None]
        vl = np.zeros((2 * n, 2 * n))
        vl[:n, :n] = -mdl.A
        vl[:n, n:] = mdl.Q
        vl[n:, n:] = mdl.A.T
        e = expm_batched(vl[None] * dt)
        f = np.ascontiguousarray(np.swapaxes(e[:, n:, n:], 1, 2))
        qd = f @ e[:, :n, n:]
        qd = 0.5 * (qd + np.swapaxes(qd, 1, 2))
        aug = np.zeros((n + 1 + p, n + 1 + p))
        aug[:n, :n] = mdl.A
        aug[:n, n:] = cb
        g = np.ascontiguousarray(expm_batched(aug[None] * dt)[:, :n, n:].reshape(k, n, 1 + p))
        for j in range(int(halvings.max(initial=0))):
            sel = halvings > j  # the gap twice: F' = F F, Q' = F Q F' + Q, G' = F G + G
            fs = f[sel]
            qd[sel] = fs @ qd[sel] @ np.swapaxes(fs, 1, 2) + qd[sel]
            g[sel] = fs @ g[sel] + g[sel]
            f[sel] = fs @ fs
        return f, 0.5 * (qd + np.swapaxes(qd, 1, 2)), g

    def _compose(self, dt_ns: I64, cb: F64) -> tuple[F64, F64, F64]:
        mdl = self.model
        n = mdl.n
        steps = (dt_ns + self._step_ns // 2) // self._step_ns
        k = steps.shape[0]
        f = np.broadcast_to(np.eye(n), (k, n, n)).copy()
        q = np.zeros((k, n, n))
        g = np.zeros((k, n, cb.shape[1]))
        pf, pq, pg = mdl.A.copy(), mdl.Q.copy(), cb.copy()  # one step, then 2, 4, 8, ... steps
        remaining = steps.copy()
        while (remaining > 0).any():
            sel = (remaining & 1).astype(bool)
            # (F, Q, G) followed by (pf, pq, pg): F' = pf F, Q' = pf Q pf' + pq, G' = pf G + pg
            f[sel] = pf @ f[sel]
            q[sel] = pf @ q[sel] @ pf.T + pq
            g[sel] = pf @ g[sel] + pg
            pq = pf @ pq @ pf.T + pq
            pg = pf @ pg + pg
            pf = pf @ pf
            remaining >>= 1
        return f, 0.5 * (q + np.swapaxes(q, 1, 2)), g


@dataclass(slots=True)
class StateSpaceState:
    """Struct-of-arrays filter state for ``capacity`` twins; plain numpy arrays, so snapshots are cheap.

    ``x (cap, n)``, ``P (cap, n, n)``, ``last_ns (cap)`` event time of the state,
    ``initialised (cap)``, ``u (cap, p)`` held control inputs, ``gated_run (cap, m)`` consecutive
    gated readings per channel.
    """

    x: F64
    P: F64
    last_ns: I64
    initialised: Bool
    u: F64
    gated_run: npt.NDArray[np.int32]

    @classmethod
    def allocate(cls, model: StateSpaceModel, capacity: int) -> StateSpaceState:
        return cls(
            x=np.broadcast_to(model.x0, (capacity, model.n)).copy(),
            P=np.broadcast_to(model.P0, (capacity, model.n, model.n)).copy(),
            last_ns=np.full(capacity, NEVER, dtype=np.int64),
            initialised=np.zeros(capacity, dtype=bool),
            u=np.zeros((capacity, model.p)),
            gated_run=np.zeros((capacity, model.m), dtype=np.int32),
        )

    @property
    def capacity(self) -> int:
        return int(self.x.shape[0])

    def arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        """The fields by name (for snapshots: slice each to the twins present)."""
        return {name: getattr(self, name) for name in self.__slots__}

    def grow(self, model: StateSpaceModel, capacity: int) -> StateSpaceState:
        """A copy with room for ``capacity`` twins; existing rows keep their values."""
        bigger = StateSpaceState.allocate(model, capacity)
        n = self.capacity
        for name, value in self.arrays().items():
            getattr(bigger, name)[:n] = value
        return bigger

    def rows(self, index: IntP) -> StateSpaceState:
        """A copy of the given rows."""
        return StateSpaceState(
            self.x[index].copy(),
            self.P[index].copy(),
            self.last_ns[index].copy(),
            self.initialised[index].copy(),
            self.u[index].copy(),
            self.gated_run[index].copy(),
        )

    def reset_rows(self, model: StateSpaceModel, index: IntP) -> None:
        """Forget the given twins (eviction): back to the prior, never seen."""
        fresh = StateSpaceState.allocate(model, 1)
        for name, value in self.arrays().items():
            value[index] = getattr(fresh, name)[0]


@dataclass(slots=True)
class StateSpaceOutput:
    """Per reading of a round (k readings, n states, h horizons); NaN where a value does not apply.

    ``estimate``/``std`` (k, n): the state after the reading; ``predicted``, ``innovation``,
    ``s`` (innovation variance), ``nis``: of the reading's channel (NaN for control readings,
    rejected readings and a twin's first observation); ``forecast``/``forecast_std`` (k, h):
    the reading's channel at the horizons after the reading's time, std including its
    measurement noise. Flags: ``gated`` (not applied: NIS over the gate), ``reset`` (applied
    after ``reset_after`` gated readings, with the prior covariance added), ``late`` (older than
    the state, applied without backward predict), ``rejected`` (older than the lateness bound:
    not applied, to be dead-lettered).
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


class StateSpaceKernel:
    """The vectorised filter step for one :class:`StateSpaceModel`.

    Channel indices ``0..m-1`` are observations (rows of ``H``), ``m..m+p-1`` control inputs.

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
    ) -> None:
        if not gate > 0:
            raise ValueError(f"gate must be positive (math.inf disables gating), not {gate!r}")
        if reset_after < 1:
            raise ValueError(f"reset_after must be at least 1, not {reset_after!r}")
        if lateness_ns < 0:
            raise ValueError(f"lateness_ns must not be negative, not {lateness_ns!r}")
        self.model = model
        self.gate = float(gate)
        self.reset_after = int(reset_after)
        self.lateness_ns = int(lateness_ns)
        self.horizons_s = [float(h) for h in horizons_s or []]
        if any(not (math.isfinite(h) and h > 0) for h in self.horizons_s):
            raise ValueError(f"horizons must be positive seconds, not {self.horizons_s}")
        self.discretise = Discretiser(model)
        horizon_ns = np.array([round(h * NS_PER_S) for h in self.horizons_s], dtype=np.int64)
        self._horizon = self.discretise(horizon_ns) if horizon_ns.size else None

    def step(
        self, state: StateSpaceState, rows: IntP, channel_idx: IntP, time_ns: I64, values: F64
    ) -> StateSpaceOutput:
        """Apply one round of readings to ``state`` in place; each row at most once."""
        mdl = self.model
        n, m = mdl.n, mdl.m
        x = state.x[rows]
        P = state.P[rows]
        last = state.last_ns[rows]
        init = state.initialised[rows]
        u = state.u[rows]
        obs = channel_idx < m
        gap = time_ns - last
        late = init & (gap < 0)
        rejected = late & (-gap > self.lateness_ns)
        # Predict over the gap (twins with dt <= 0, fresh or rejected keep x, P).
        moving = init & (gap > 0)
        x_pred = x.copy()
        P_pred = P.copy()
        if moving.any():
            f, qd, g = self.discretise(gap[moving])
            ones_u = np.concatenate([np.ones((int(moving.sum()), 1)), u[moving]], axis=1)
            x_pred[moving] = (f @ x[moving][:, :, None] + g @ ones_u[:, :, None])[:, :, 0]
            P_pred[moving] = f @ P[moving] @ np.swapaxes(f, 1, 2) + qd
        # Scalar update on the channel's row of H (control readings: h = 0, no update).
        ch = np.where(obs, channel_idx, 0)
        h = np.where(obs[:, None], mdl.H[ch], 0.0)
        r = mdl.R[ch]
        ph = (P_pred @ h[:, :, None])[:, :, 0]
        predicted = np.einsum("kn,kn->k", h, x_pred)
        s = np.einsum("kn,kn->k", h, ph) + r
        innovation = values - predicted
        nis = innovation * innovation / s
        live = obs & ~rejected
        over = live & init & (nis > self.gate)
        run = state.gated_run[rows, ch] + over
        reset = over & (run >= self.reset_after)
        gated = over & ~reset
        if reset.any():
            P_pred[reset] += mdl.P0
            ph = (P_pred @ h[:, :, None])[:, :, 0]
        s_upd = np.einsum("kn,kn->k", h, ph) + r
        apply = live & ~gated
        gain = np.where(apply[:, None], ph / s_upd[:, None], 0.0)
        x_new = x_pred + gain * innovation[:, None]
        ikh = np.eye(n) - gain[:, :, None] * h[:, None, :]
        P_new = (
            ikh @ P_pred @ np.swapaxes(ikh, 1, 2) + (gain[:, :, None] * gain[:, None, :]) * r[:, None, None]
        )
        P_new = 0.5 * (P_new + np.swapaxes(P_new, 1, 2))
        # Control readings hold the new input from now on; they do not initialise a twin.
        ctrl = ~obs & ~rejected
        keep = rejected | (~obs & ~init)
        x_new[keep] = x[keep]
        P_new[keep] = P[keep]
        state.x[rows] = x_new
        state.P[rows] = P_new
        starts = live | (ctrl & init)
        state.last_ns[rows] = np.where(starts, np.maximum(last, time_ns), last)
        state.initialised[rows] = init | live
        if ctrl.any():
            state.u[rows[ctrl], channel_idx[ctrl] - m] = values[ctrl]
        state.gated_run[rows[live], ch[live]] = np.where(gated, run, 0)[live]
        # Outputs: NaN where the quantity does not apply.
        measured = live & init
        nan = np.nan
        out = StateSpaceOutput(
            estimate=x_new,
            std=np.sqrt(np.maximum(np.einsum("kii->ki", P_new), 0.0)),
            predicted=np.where(live, predicted, nan),
            innovation=np.where(measured, innovation, nan),
            s=np.where(measured, s, nan),
            nis=np.where(measured, nis, nan),
            gated=gated,
            reset=reset,
            late=late & ~rejected,
            rejected=rejected,
        )
        if self._horizon is not None:
            out.forecast, out.forecast_std = _forecast(
                self._horizon, x_new, P_new, state.u[rows], h, r, obs & ~rejected
            )
        return out


def _forecast(
    horizon: tuple[F64, F64, F64], x: F64, P: F64, u: F64, h: F64, r: F64, valid: Bool
) -> tuple[F64, F64]:
    """Mean and std of each reading's channel ``h`` at every horizon (transition stacks ``horizon``)."""
    f, qd, g = horizon  # (H, n, n), (H, n, n), (H, n, 1 + p)
    ones_u = np.concatenate([np.ones((x.shape[0], 1)), u], axis=1)
    x_h = np.einsum("hij,kj->khi", f, x) + np.einsum("hij,kj->khi", g, ones_u)
    mean = np.einsum("kn,khn->kh", h, x_h)
    # Var(h x_h) = (F' h)' P (F' h) + h Qd h': project first, no (k, H, n, n) temporaries.
    fh = np.einsum("hij,ki->khj", f, h)
    var = np.einsum("khi,kij,khj->kh", fh, P, fh) + np.einsum("ki,hij,kj->kh", h, qd, h) + r[:, None]
    mean = np.where(valid[:, None], mean, np.nan)
    std = np.where(valid[:, None], np.sqrt(np.maximum(var, 0.0)), np.nan)
    return mean, std
