"""Discretisation of a :class:`~dte_stream.twins.statespace.StateSpaceModel` for time gaps.

For a gap ``dt`` the filter needs the transition ``F``, the process noise ``Qd`` and the input
matrix ``G`` on ``[1, u]`` (constant term and zero-order-held controls). Three routes, chosen
from the matrices (never from a preset's name), all exact:

- ``A @ A == 0`` (continuous time): ``exp(A s) = I + A s``, so ``F = I + A dt``,
  ``Qd = Q dt + (A Q + Q A') dt^2 / 2 + A Q A' dt^3 / 3`` and ``G = (I dt + A dt^2 / 2) [c B]``.
  This covers ``A == 0`` (random walks: ``F = I``, ``Qd = Q dt``, ``G = [c B] dt``), the
  level+trend preset and any custom model with such an ``A``. A few array operations per reading.
- ``n == 1`` (continuous time, ``a != 0``): ``F = exp(a dt)``, ``Qd = q expm1(2 a dt) / (2 a)``,
  ``G = [c B] expm1(a dt) / a``.
- Otherwise Van Loan's method with a batched matrix exponential, per distinct gap and cached;
  discrete-time models compose whole steps by repeated squaring.

The closed forms are linear in ``Q``, element by element: a discretiser of a closed-form model
given ``noises`` (one ``Q`` per *variant*: models that differ only in their process noise)
works out each reading's ``Qd`` with its variant's ``Q`` (``variant`` argument), the very
numbers a discretiser of that variant's model gives. One kernel call then serves channels of
the same model shape with different noise settings (:mod:`dte_stream.twins.filters`).
"""

# Matrix names (A, Q, B, F, G) follow the usual Kalman-filter notation on purpose.
# ruff: noqa: N806
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from dte_stream.times import NS_PER_S

if TYPE_CHECKING:
    from dte_stream.twins.statespace import StateSpaceModel

__all__ = ["Discretiser", "expm_batched"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
IntP = npt.NDArray[np.intp]


def expm_batched(a: F64) -> F64:
    """Matrix exponential of a stack ``(k, d, d)``: Padé (6, 6) with per-matrix scaling and squaring.

    Each matrix is scaled by ``2**-s`` so that its 1-norm is at most 0.5, where the (6, 6)
    Padé approximant is accurate to about 1e-17; numpy has no batched ``expm``.

    >>> round(float(expm_batched(np.array([[[1.0]]]))[0, 0, 0]), 12)
    2.718281828459
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

    ``closed_form`` says whether the model takes a closed-form route (see the module docstring);
    otherwise continuous models use Van Loan's method, exact for any gap:
    ``expm([[-A, Q], [0, A']] dt)`` gives ``F = E22'`` and ``Qd = F E12``;
    ``expm([[A, [c B]], [0, 0]] dt)`` gives ``F`` and ``G``. Two batched exponentials per
    *distinct* gap, about 10-20 us each for n <= 4, cached for up to ``cache_size`` gaps.
    Discrete models: ``k = round(dt / step_s)`` steps composed by repeated squaring.

    >>> from dte_stream.twins.presets import local_linear_trend
    >>> f, qd, g = Discretiser(local_linear_trend(1.0, 3.0, [1.0]))(np.array([2 * 10**9]))
    >>> f[0].tolist(), qd[0].tolist()
    ([[1.0, 2.0], [0.0, 1.0]], [[10.0, 6.0], [6.0, 6.0]])
    """

    def __init__(
        self, model: StateSpaceModel, cache_size: int = 4096, noises: list[F64] | None = None
    ) -> None:
        self.model = model
        self.cache_size = cache_size
        self._cache: dict[int, tuple[F64, F64, F64]] = {}
        self._step_ns = max(1, round(model.step_s * NS_PER_S))
        A, Q = model.A, model.Q
        self._cb = np.concatenate([model.c[:, None], model.B], axis=1)  # (n, 1 + p)
        continuous = model.kind == "continuous"
        self._nilpotent = continuous and not np.any(A @ A)
        self._scalar_exp = continuous and model.n == 1 and not self._nilpotent
        self.closed_form = self._nilpotent or self._scalar_exp
        # A @ A == 0: Qd = Q dt + Q2 dt^2 + Q3 dt^3, G = cb dt + G2 dt^2.
        self._q2 = 0.5 * (A @ Q + Q @ A.T)
        self._q3 = A @ Q @ A.T / 3.0
        self._g2 = 0.5 * A @ self._cb
        self._any_a = bool(np.any(A))
        #: ``n == 1``, ``A == 0`` and no drive (``c == 0``, no controls): ``F = 1`` and ``G = 0``
        #: for every gap, only ``Qd = Q dt`` (:meth:`walk_noise`) changes: a random walk.
        self.still = model.n == 1 and continuous and not self._any_a and model.p == 0 and not np.any(model.c)
        self._noises: tuple[F64, F64, F64, F64] | None = None
        if noises is not None:
            if not self.closed_form:
                raise ValueError("noise variants need a closed-form model (A @ A == 0, or n == 1)")
            qs = np.stack([np.asarray(q, dtype=np.float64).reshape(A.shape) for q in noises])
            self._noises = (
                qs,
                np.stack([0.5 * (A @ q + q @ A.T) for q in qs]),
                np.stack([A @ q @ A.T / 3.0 for q in qs]),
                qs[:, 0, 0].copy(),
            )

    def __call__(self, dt_ns: I64, variant: IntP | None = None) -> tuple[F64, F64, F64]:
        """Stacks ``F (k, n, n)``, ``Qd (k, n, n)``, ``G (k, n, 1 + p)`` for gaps ``dt_ns > 0``;
        ``variant``: each gap's noise variant (a discretiser given ``noises``)."""
        if self._nilpotent:
            return self._nilpotent_form(dt_ns, variant)
        if self._scalar_exp:
            f, q, g = self._scalar_form(dt_ns, variant)
            return f[:, None, None], q[:, None, None], g[:, None, :]
        if variant is not None:
            self._variants()  # raises: no variants without a closed form
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

    def scalar(self, dt_ns: I64, variant: IntP | None = None) -> tuple[F64, F64, F64]:
        """For ``n == 1``: ``F (k,)``, ``Qd (k,)``, ``G (k, 1 + p)`` (elementwise for a closed form)."""
        if self._nilpotent:  # n == 1 and A == 0
            dt = dt_ns * (1.0 / NS_PER_S)
            qd = np.multiply(self._q00(variant), dt)
            return np.ones_like(dt), qd, dt[:, None] * self._cb[0]
        if self._scalar_exp:
            return self._scalar_form(dt_ns, variant)
        f, q, g = self(dt_ns, variant)
        return f[:, 0, 0], q[:, 0, 0], g[:, 0, :]

    def walk_noise(self, dt_ns: I64, variant: IntP | None = None) -> F64:
        """``Qd (k,)`` of a random walk (:attr:`still`): what :meth:`scalar` gives as ``Qd``."""
        qd: F64 = np.multiply(self._q00(variant), dt_ns * (1.0 / NS_PER_S))
        return qd

    def _variants(self) -> tuple[F64, F64, F64, F64]:
        """Per variant: ``Q``, the ``dt^2`` and ``dt^3`` terms of ``Qd``, and ``Q[0, 0]``."""
        if self._noises is None:
            raise ValueError("noise variants given to a discretiser built without noises")
        return self._noises

    def _q00(self, variant: IntP | None) -> F64 | float:
        """``Q[0, 0]`` of the model, or of each reading's variant."""
        if variant is None:
            return float(self.model.Q[0, 0])
        q00: F64 = self._variants()[3][variant]
        return q00

    def _nilpotent_form(self, dt_ns: I64, variant: IntP | None = None) -> tuple[F64, F64, F64]:
        mdl = self.model
        dt = (dt_ns * (1.0 / NS_PER_S))[:, None, None]
        eye = np.eye(mdl.n)
        q, q2, q3 = mdl.Q, self._q2, self._q3
        if variant is not None:
            q, q2, q3 = (stack[variant] for stack in self._variants()[:3])
        if not self._any_a:
            k = dt.shape[0]
            return np.broadcast_to(eye, (k, mdl.n, mdl.n)), q * dt, self._cb * dt
        dt2 = dt * dt
        f = eye + mdl.A * dt
        qd = q * dt + q2 * dt2 + q3 * (dt2 * dt)
        g = self._cb * dt + self._g2 * dt2
        return f, qd, g

    def _scalar_form(self, dt_ns: I64, variant: IntP | None = None) -> tuple[F64, F64, F64]:
        a = float(self.model.A[0, 0])
        adt = a * (dt_ns * (1.0 / NS_PER_S))
        em1 = np.expm1(adt)
        f = np.exp(adt)  # not em1 + 1: that is 0 for long gaps of a stable model
        qd = self._q00(variant) * np.expm1(2.0 * adt) / (2.0 * a)
        g = (em1 / a)[:, None] * self._cb[0]
        return f, qd, g

    def _compute(self, dt_ns: I64) -> tuple[F64, F64, F64]:
        mdl = self.model
        n, p = mdl.n, mdl.p
        k = dt_ns.shape[0]
        cb = self._cb
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
