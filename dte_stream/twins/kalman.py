"""The random-walk level Kalman filter, vectorised over twins and channels.

Pure numpy: no Bytewax, no driver. The bank calls :meth:`RandomWalkKernel.step` once per
round of a micro-batch with one reading per (twin, channel) cell, so every line below works
on whole arrays. The state of a cell is its level estimate ``x``, its variance ``p`` and the
event time of its last reading.

Model (per cell): level_k = level_{k-1} + w, w ~ N(0, q * dt); reading_k = level_k + v,
v ~ N(0, r). The first reading of a cell initialises it: x = z, p = r.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dte_stream.times import NS_PER_S

__all__ = ["KernelOutput", "RandomWalkKernel", "RandomWalkState"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
IntP = npt.NDArray[np.intp]

#: ``last_ns`` of a cell that has never had a reading.
NEVER = np.iinfo(np.int64).min


@dataclass(slots=True)
class RandomWalkState:
    """Struct-of-arrays state for ``capacity`` twins x ``channels`` cells."""

    x: F64
    p: F64
    last_ns: I64

    @classmethod
    def allocate(cls, capacity: int, channels: int) -> RandomWalkState:
        return cls(
            x=np.full((capacity, channels), np.nan),
            p=np.full((capacity, channels), np.inf),
            last_ns=np.full((capacity, channels), NEVER, dtype=np.int64),
        )

    def grow(self, capacity: int) -> RandomWalkState:
        """A copy with room for ``capacity`` twins; existing rows keep their values."""
        bigger = RandomWalkState.allocate(capacity, self.x.shape[1])
        n = self.x.shape[0]
        bigger.x[:n] = self.x
        bigger.p[:n] = self.p
        bigger.last_ns[:n] = self.last_ns
        return bigger

    def rows(self, index: IntP) -> RandomWalkState:
        return RandomWalkState(self.x[index].copy(), self.p[index].copy(), self.last_ns[index].copy())

    def reset_rows(self, index: IntP) -> None:
        self.x[index] = np.nan
        self.p[index] = np.inf
        self.last_ns[index] = NEVER


@dataclass(slots=True)
class KernelOutput:
    """Per reading: the estimate after it, its standard deviation, innovation and NIS."""

    estimate: F64
    std: F64
    innovation: F64
    nis: F64
    late: npt.NDArray[np.bool_]


class RandomWalkKernel:
    """A scalar Kalman filter per (twin, channel) cell with per-channel noise parameters.

    >>> k = RandomWalkKernel(process_noise=[0.01], measurement_noise=[1.0])
    >>> s = RandomWalkState.allocate(2, 1)
    >>> out = k.step(s, np.array([0, 1]), np.array([0, 0]), np.array([0, 0]), np.array([5.0, 7.0]))
    >>> out.estimate.tolist(), s.p[:, 0].tolist()
    ([5.0, 7.0], [1.0, 1.0])
    """

    def __init__(self, process_noise: list[float], measurement_noise: list[float]) -> None:
        self.q = np.asarray(process_noise, dtype=np.float64)
        self.r = np.asarray(measurement_noise, dtype=np.float64)

    def step(
        self, state: RandomWalkState, rows: IntP, channels: IntP, time_ns: I64, value: F64
    ) -> KernelOutput:
        """Apply one reading to each given cell; each (row, channel) pair appears at most once.

        Readings older than a cell's last reading are applied with a zero time gap and flagged
        ``late`` (the out-of-order policy of the later state-space engine refines this).
        """
        q = self.q[channels]
        r = self.r[channels]
        last = state.last_ns[rows, channels]
        fresh = last == NEVER
        # Fresh cells hold NaN/inf; give them finite stand-ins so the arithmetic stays quiet.
        x = np.where(fresh, 0.0, state.x[rows, channels])
        p = np.where(fresh, 0.0, state.p[rows, channels])
        late = ~fresh & (time_ns < last)
        dt = np.where(fresh | late, 0, time_ns - last).astype(np.float64) / NS_PER_S
        p_pred = p + q * dt
        s = p_pred + r
        gain = p_pred / s
        innovation = value - x
        x_new = x + gain * innovation
        p_new = (1.0 - gain) * p_pred
        nis = innovation * innovation / s
        # First reading of a cell: initialise from the measurement.
        x_new = np.where(fresh, value, x_new)
        p_new = np.where(fresh, r, p_new)
        innovation = np.where(fresh, np.nan, innovation)
        nis = np.where(fresh, np.nan, nis)
        state.x[rows, channels] = x_new
        state.p[rows, channels] = p_new
        state.last_ns[rows, channels] = np.maximum(last, time_ns)
        return KernelOutput(x_new, np.sqrt(p_new), innovation, nis, late)
