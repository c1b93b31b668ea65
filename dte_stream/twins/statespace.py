"""State-space models and their filter state: what the Kalman kernel (:mod:`dte_stream.twins.kalman`) runs on.

A :class:`StateSpaceModel` describes one twin type (state dimension ``n``, ``m`` observed
channels, ``p`` control channels) with its matrices; a :class:`StateSpaceState` holds every
twin's filter as struct-of-arrays (plain numpy arrays, so snapshots are cheap). Pure numpy: no
Bytewax, no driver.
"""

# Matrix names (A, H, Q, R, P, P0, B) follow the usual Kalman-filter notation on purpose.
# ruff: noqa: N803
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from dte_stream.twins.discretise import Discretiser, expm_batched

__all__ = [
    "CHI2_1DOF_999",
    "NEVER",
    "Discretiser",
    "StateSpaceModel",
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
#: the smallest learned noise scale ``sigma^2`` (a fraction of the model's nominal noise). A
#: series that never changes (a stuck sensor) learns its scale from rounding noise, ~1e-31: the
#: next real change would then have an NIS that rounding decides. Below 1e-12 (a standard deviation
#: of 1e-6 of the nominal) the scale is held, so the change is still gated, with a finite NIS.
NOISE_SCALE_FLOOR = 1e-12


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


def _empty_f64() -> F64:
    return np.empty(0)


def _empty_i64() -> I64:
    return np.empty(0, dtype=np.int64)


@dataclass(slots=True)
class StateSpaceState:
    """Struct-of-arrays filter state for ``capacity`` twins; plain numpy arrays, so snapshots are cheap.

    ``x (cap, n)``, ``P (cap, n, n)`` (in the model's units), ``last_ns (cap)`` event time of the
    state, ``initialised (cap)``, ``u (cap, p)`` held control inputs, ``gated_run (cap, m)``
    consecutive gated readings per channel, ``scale (cap)`` the estimated noise scale
    ``sigma^2`` and ``scale_count (cap)`` the readings it was learned from (adaptive noise only;
    left out, as in snapshots from before they existed, they start at 1.0 and 0).

    >>> from dte_stream.twins.presets import random_walk
    >>> state = StateSpaceState.allocate(random_walk(0.01, [1.0]), capacity=3)
    >>> state.take(np.array([2, 0])).capacity, sorted(state.arrays())[:3]
    (2, ['P', 'gated_run', 'initialised'])
    """

    x: F64
    P: F64
    last_ns: I64
    initialised: Bool
    u: F64
    gated_run: npt.NDArray[np.int32]
    scale: F64 = field(default_factory=_empty_f64)
    scale_count: I64 = field(default_factory=_empty_i64)

    def __post_init__(self) -> None:
        cap = self.x.shape[0]
        if self.scale.shape != (cap,) and self.scale.size == 0:
            self.scale = np.ones(cap)
        if self.scale_count.shape != (cap,) and self.scale_count.size == 0:
            self.scale_count = np.zeros(cap, dtype=np.int64)

    @classmethod
    def allocate(cls, model: StateSpaceModel, capacity: int) -> StateSpaceState:
        return cls(
            x=np.broadcast_to(model.x0, (capacity, model.n)).copy(),
            P=np.broadcast_to(model.P0, (capacity, model.n, model.n)).copy(),
            last_ns=np.full(capacity, NEVER, dtype=np.int64),
            initialised=np.zeros(capacity, dtype=bool),
            u=np.zeros((capacity, model.p)),
            gated_run=np.zeros((capacity, model.m), dtype=np.int32),
            scale=np.ones(capacity),
            scale_count=np.zeros(capacity, dtype=np.int64),
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
        """A copy of the given rows, in the given order."""
        return StateSpaceState(
            self.x[index], self.P[index], self.last_ns[index], self.initialised[index], self.u[index],
            self.gated_run[index], self.scale[index], self.scale_count[index],
        )  # fmt: skip

    def take(self, index: IntP) -> StateSpaceState:
        """The state of the given rows only, in that order: compaction after evicting twins."""
        return self.rows(index)

    def reset_rows(self, model: StateSpaceModel, index: IntP) -> None:
        """Forget the given twins (eviction): back to the prior, never seen, noise scale 1."""
        fresh = StateSpaceState.allocate(model, 1)
        for name, value in self.arrays().items():
            value[index] = getattr(fresh, name)[0]
