"""The linear algebra of one round of :class:`~dte_stream.twins.kalman.StateSpaceKernel`.

One object per round holds the rows' state, predicts and scores the readings, applies the
scalar update (Joseph form) and answers the posterior and the forecasts; the kernel decides
what is applied, gated, reset or kept. Three forms, with the same formulas in the same order:

- :class:`MatrixAlgebra`: any ``n``, batched ``(k, n, n)`` matrix products;
- :class:`ScalarAlgebra`: ``n == 1`` (random walks), elementwise on ``(k,)`` arrays;
- :class:`PairAlgebra`: ``n == 2`` (level and trend, the most common model), every matrix entry
  an elementwise ``(k,)`` array. numpy's batched products cost about 90 ns per 2x2 matrix
  (one small product call each); a round of 1,000 readings spent most of its Kalman time in
  them. Equal to the matrix form to rounding (the order of a few additions differs).

>>> import numpy as np
>>> from dte_stream.twins.kalman import StateSpaceKernel
>>> from dte_stream.twins.presets import local_linear_trend
>>> from dte_stream.twins.statespace import StateSpaceState
>>> model = local_linear_trend(level_noise=1e-4, slope_noise=1e-8, measurement_noise=[0.01])
>>> algebra_for(model.n).__name__
'PairAlgebra'
>>> kernel, state = StateSpaceKernel(model), StateSpaceState.allocate(model, capacity=1)
>>> for t in range(3):
...     out = kernel.step(state, np.array([0]), np.array([0]), np.array([t * 10**9]), np.array([2.0 * t]))
>>> np.round(state.x[0], 3).tolist()
[3.99, 1.99]
"""

# Matrix names (H, P, P0) follow the usual Kalman-filter notation on purpose.
# ruff: noqa: N806
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from dte_stream.twins.kalman import StateSpaceKernel
    from dte_stream.twins.statespace import StateSpaceState

__all__ = ["Algebra", "MatrixAlgebra", "PairAlgebra", "ScalarAlgebra", "algebra_for"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
IntP = npt.NDArray[np.intp]
Bool = npt.NDArray[np.bool_]


class Algebra(Protocol):
    """What the kernel asks of a round's linear algebra (see the module docstring)."""

    def predict_and_score(self, moving: Bool, gap: I64, obs: Bool, ch: IntP, r: F64) -> tuple[F64, F64]:
        """Predict the moving rows to the readings' times; each reading's ``h x`` and ``h P h' + r``."""
        ...

    def update(self, innovation: F64, r: F64, apply: Bool, reset: Bool, keep: Bool) -> F64:
        """Scalar update (Joseph form), written to the state; the innovation variance it used."""
        ...

    def posterior(self) -> tuple[F64, F64, F64, F64]:
        """``x``, ``diag P``, ``h x`` and ``h P h'`` after the update."""
        ...

    def forecast(self, horizon: tuple[F64, F64, F64], u: F64, r: F64) -> tuple[F64, F64]:
        """Mean and variance (unit scale) of each reading's channel at every horizon."""
        ...


def algebra_for(
    n: int,
) -> type[MatrixAlgebra] | type[ScalarAlgebra] | type[PairAlgebra]:
    """The algebra class for a state of dimension ``n``."""
    if n == 1:
        return ScalarAlgebra
    if n == 2:
        return PairAlgebra
    return MatrixAlgebra


class _Rows:
    """The rows of one round: their state as read, and the posterior written back."""

    def __init__(
        self, kernel: StateSpaceKernel, state: StateSpaceState, rows: IntP, variant: IntP | None = None
    ) -> None:
        self.kernel, self.state, self.rows, self.variant = kernel, state, rows, variant
        self.x = state.x[rows]
        self.P = state.P[rows]
        self.u = state.u[rows]

    def _commit(self, x_new: F64, P_new: F64, keep: Bool) -> None:  # noqa: N803 (matrices in capitals)
        """Write the posterior back; the ``keep`` rows (not updated this round) keep their state."""
        if keep.any():
            x_new[keep] = self.x[keep]
            P_new[keep] = self.P[keep]
        self.state.x[self.rows] = self.x_new = x_new
        self.state.P[self.rows] = self.P_new = P_new


class MatrixAlgebra(_Rows):
    """The linear algebra of one step for any ``n``: batched ``(k, n, n)`` matrix products."""

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
        self._commit(x_new, P_new, keep)
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


class ScalarAlgebra:
    """The same algebra for ``n == 1`` with elementwise ``(k,)`` arrays: the per-channel random walk."""

    def __init__(
        self, kernel: StateSpaceKernel, state: StateSpaceState, rows: IntP, variant: IntP | None = None
    ) -> None:
        self.kernel, self.state, self.rows, self.variant = kernel, state, rows, variant
        # Through 1-d views of the columns: the same elements as ``x[rows, 0]``, a tenth of the cost.
        self.x = state.x[:, 0][rows]
        self.P = state.P[:, 0, 0][rows]

    def predict_and_score(self, moving: Bool, gap: I64, obs: Bool, ch: IntP, r: F64) -> tuple[F64, F64]:
        mdl = self.kernel.model
        x, P = self.x, self.P
        disc = self.kernel.discretise
        if disc.still:  # a random walk (F = 1, G = 0): the same numbers, without the products by 1
            self.x_pred = x
            if moving.all():
                self.P_pred = P + disc.walk_noise(gap, self.variant)
            else:
                self.P_pred = P.copy()
                if moving.any():
                    v = self.variant
                    self.P_pred[moving] = P[moving] + disc.walk_noise(
                        gap[moving], None if v is None else v[moving]
                    )
        elif moving.all():
            f, qd, g = disc.scalar(gap, self.variant)
            self.x_pred = f * x + self._drive(g, self.state.u[self.rows])
            self.P_pred = f * f * P + qd
        else:
            self.x_pred = x.copy()
            self.P_pred = P.copy()
            if moving.any():
                v = self.variant
                f, qd, g = self.kernel.discretise.scalar(gap[moving], None if v is None else v[moving])
                u = self.state.u[self.rows[moving]]
                self.x_pred[moving] = f * x[moving] + self._drive(g, u)
                self.P_pred[moving] = f * f * P[moving] + qd
        # One observed channel: its H entry for all (a scalar: the same numbers as a gather).
        self.h = h = np.where(obs, mdl.H[ch, 0] if mdl.m > 1 else mdl.H[0, 0], 0.0)
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
        self.state.x[:, 0][self.rows] = self.x_new = x_new
        self.state.P[:, 0, 0][self.rows] = self.P_new = P_new
        return s_upd

    def posterior(self) -> tuple[F64, F64, F64, F64]:
        h = self.h
        return self.x_new[:, None], self.P_new[:, None], h * self.x_new, h * h * self.P_new

    def forecast(self, horizon: tuple[F64, F64, F64], u: F64, r: F64) -> tuple[F64, F64]:
        # (H,), (H,) or per reading (k, H) with noise variants, (H, 1 + p)
        f, qd, g = horizon[0][:, 0, 0], horizon[1][..., 0, 0], horizon[2][:, 0, :]
        h = self.h[:, None]
        drive = g[:, 0] + u @ g[:, 1:].T  # (k, H)
        mean = h * (f * self.x_new[:, None] + drive)
        var = h * h * (f * f * self.P_new[:, None] + qd) + r[:, None]
        return mean, var


class PairAlgebra(_Rows):
    """The same algebra for ``n == 2``: each entry of ``x`` and ``P`` is its own ``(k,)`` array.

    ``a_ij`` below is entry ``(i, j)`` of matrix ``a`` for every reading of the round; the
    formulas are the matrix ones written out (``F P F' + Qd``, ``(I - K h) P (I - K h)' + K r K'``).
    """

    def predict_and_score(self, moving: Bool, gap: I64, obs: Bool, ch: IntP, r: F64) -> tuple[F64, F64]:
        x, P = self.x, self.P
        x0, x1 = x[:, 0], x[:, 1]
        p00, p01, p10, p11 = P[:, 0, 0], P[:, 0, 1], P[:, 1, 0], P[:, 1, 1]
        if moving.all():  # the usual round: no masks
            self.x_pred, self.P_pred = self._predict(gap, x0, x1, p00, p01, p10, p11, self.u, self.variant)
        else:
            xp = [x0.copy(), x1.copy()]
            pp = [p00.copy(), p01.copy(), p10.copy(), p11.copy()]
            if moving.any():
                m = moving
                v = None if self.variant is None else self.variant[m]
                xm, pm = self._predict(gap[m], x0[m], x1[m], p00[m], p01[m], p10[m], p11[m], self.u[m], v)
                for whole, part in zip([*xp, *pp], [*xm, *pm], strict=True):
                    whole[moving] = part
            self.x_pred, self.P_pred = (xp[0], xp[1]), (pp[0], pp[1], pp[2], pp[3])
        # Control readings: h = 0, no update.
        H = self.kernel.model.H
        self.h0 = h0 = np.where(obs, H[ch, 0], 0.0)
        self.h1 = h1 = np.where(obs, H[ch, 1], 0.0)
        self.ph = self._ph(self.P_pred)
        (xp0, xp1), (ph0, ph1) = self.x_pred, self.ph
        return h0 * xp0 + h1 * xp1, h0 * ph0 + h1 * ph1 + r

    def _predict(
        self, gap: I64, x0: F64, x1: F64, p00: F64, p01: F64, p10: F64, p11: F64, u: F64,
        variant: IntP | None,
    ) -> tuple[tuple[F64, F64], tuple[F64, F64, F64, F64]]:  # fmt: skip
        f, qd, g = self.kernel.discretise(gap, variant)
        f00, f01, f10, f11 = f[:, 0, 0], f[:, 0, 1], f[:, 1, 0], f[:, 1, 1]
        drive0, drive1 = g[:, 0, 0], g[:, 1, 0]
        for j in range(u.shape[1]):  # zero-order-held controls
            drive0 = drive0 + g[:, 0, 1 + j] * u[:, j]
            drive1 = drive1 + g[:, 1, 1 + j] * u[:, j]
        xp0 = f00 * x0 + f01 * x1 + drive0
        xp1 = f10 * x0 + f11 * x1 + drive1
        a00, a01 = f00 * p00 + f01 * p10, f00 * p01 + f01 * p11  # a = F P
        a10, a11 = f10 * p00 + f11 * p10, f10 * p01 + f11 * p11
        pp00 = a00 * f00 + a01 * f01 + qd[:, 0, 0]  # a F' + Qd
        pp01 = a00 * f10 + a01 * f11 + qd[:, 0, 1]
        pp10 = a10 * f00 + a11 * f01 + qd[:, 1, 0]
        pp11 = a10 * f10 + a11 * f11 + qd[:, 1, 1]
        return (xp0, xp1), (pp00, pp01, pp10, pp11)

    def _ph(self, pp: tuple[F64, F64, F64, F64]) -> tuple[F64, F64]:
        h0, h1 = self.h0, self.h1
        return pp[0] * h0 + pp[1] * h1, pp[2] * h0 + pp[3] * h1

    def update(self, innovation: F64, r: F64, apply: Bool, reset: Bool, keep: Bool) -> F64:
        """Scalar update (Joseph form), written to the state; the innovation variance it used."""
        h0, h1 = self.h0, self.h1
        pp, (ph0, ph1) = self.P_pred, self.ph
        if reset.any():
            P0 = self.kernel.model.P0
            pp = (
                np.where(reset, pp[0] + P0[0, 0], pp[0]),
                np.where(reset, pp[1] + P0[0, 1], pp[1]),
                np.where(reset, pp[2] + P0[1, 0], pp[2]),
                np.where(reset, pp[3] + P0[1, 1], pp[3]),
            )
            ph0, ph1 = self._ph(pp)
        s_upd: F64 = h0 * ph0 + h1 * ph1 + r
        g0 = np.where(apply, ph0 / s_upd, 0.0)
        g1 = np.where(apply, ph1 / s_upd, 0.0)
        xn0 = self.x_pred[0] + g0 * innovation
        xn1 = self.x_pred[1] + g1 * innovation
        i00, i01 = 1.0 - g0 * h0, -(g0 * h1)  # I - K h
        i10, i11 = -(g1 * h0), 1.0 - g1 * h1
        b00, b01 = i00 * pp[0] + i01 * pp[2], i00 * pp[1] + i01 * pp[3]  # b = (I - K h) P
        b10, b11 = i10 * pp[0] + i11 * pp[2], i10 * pp[1] + i11 * pp[3]
        gr0, gr1 = g0 * r, g1 * r
        pn00 = b00 * i00 + b01 * i01 + g0 * gr0  # b (I - K h)' + K r K'
        pn01 = b00 * i10 + b01 * i11 + g0 * gr1
        pn10 = b10 * i00 + b11 * i01 + g1 * gr0
        pn11 = b10 * i10 + b11 * i11 + g1 * gr1
        x_new = np.empty_like(self.x)
        x_new[:, 0], x_new[:, 1] = xn0, xn1
        P_new = np.empty_like(self.P)
        off = 0.5 * (pn01 + pn10)  # symmetrised
        P_new[:, 0, 0], P_new[:, 0, 1], P_new[:, 1, 0], P_new[:, 1, 1] = pn00, off, off, pn11
        self._commit(x_new, P_new, keep)
        return s_upd

    def posterior(self) -> tuple[F64, F64, F64, F64]:
        """``x``, ``diag P``, ``h x`` and ``h P h'`` after the update."""
        h0, h1, x, P = self.h0, self.h1, self.x_new, self.P_new
        p00, p01, p10, p11 = P[:, 0, 0], P[:, 0, 1], P[:, 1, 0], P[:, 1, 1]
        hph = h0 * (p00 * h0 + p01 * h1) + h1 * (p10 * h0 + p11 * h1)
        diag = np.empty_like(x)
        diag[:, 0], diag[:, 1] = p00, p11
        return x, diag, h0 * x[:, 0] + h1 * x[:, 1], hph

    def forecast(self, horizon: tuple[F64, F64, F64], u: F64, r: F64) -> tuple[F64, F64]:
        """Mean and variance (unit scale) of each reading's channel at every horizon: ``(k, H)``."""
        f, qd, g = horizon  # (H, 2, 2), (H, 2, 2) or (k, H, 2, 2), (H, 2, 1 + p)
        x, P = self.x_new, self.P_new
        h0, h1 = self.h0[:, None], self.h1[:, None]
        x0, x1 = x[:, 0:1], x[:, 1:2]
        drive0, drive1 = g[None, :, 0, 0], g[None, :, 1, 0]
        for j in range(u.shape[1]):
            drive0 = drive0 + u[:, j : j + 1] * g[None, :, 0, 1 + j]
            drive1 = drive1 + u[:, j : j + 1] * g[None, :, 1, 1 + j]
        f00, f01, f10, f11 = f[None, :, 0, 0], f[None, :, 0, 1], f[None, :, 1, 0], f[None, :, 1, 1]
        mean = h0 * (f00 * x0 + f01 * x1 + drive0) + h1 * (f10 * x0 + f11 * x1 + drive1)
        # Var(h x_h) = (F' h)' P (F' h) + h Qd h' + r
        fh0 = f00 * h0 + f10 * h1
        fh1 = f01 * h0 + f11 * h1
        p00, p01, p10, p11 = P[:, 0:1, 0], P[:, 0:1, 1], P[:, 1:2, 0], P[:, 1:2, 1]
        var = fh0 * (p00 * fh0 + p01 * fh1) + fh1 * (p10 * fh0 + p11 * fh1)
        q = qd if qd.ndim == 4 else qd[None]  # per reading (k, H, 2, 2) with noise variants
        q00, q01, q10, q11 = q[:, :, 0, 0], q[:, :, 0, 1], q[:, :, 1, 0], q[:, :, 1, 1]
        var = var + (h0 * (q00 * h0 + q01 * h1) + h1 * (q10 * h0 + q11 * h1)) + r[:, None]
        return mean, var
