"""A straightforward per-reading implementation of the twin filter, for tests and benchmarks.

It is the yardstick of :class:`~dte_stream.twins.bank.TwinBank`: same model, same
out-of-order and first-reading rules, one reading at a time with numpy scalars. Far too slow
for the data path; that is the point of comparing against it.
"""

from __future__ import annotations

import math

import numpy as np

from dte_stream.spec.model import TwinTypeSpec
from dte_stream.times import NS_PER_S

__all__ = ["PerReadingFilter"]


class PerReadingFilter:
    """Random-walk Kalman filter per (twin, channel), updated one reading at a time.

    >>> spec = TwinTypeSpec(name="pump", channels={"temp": {}})
    >>> f = PerReadingFilter(spec)
    >>> f.update("p1", 0, 0, 20.0)[0], round(f.update("p1", 0, 10**9, 22.0)[0], 3)
    (20.0, 21.005)
    """

    def __init__(self, spec: TwinTypeSpec) -> None:
        channels = spec.channel_names()
        self.q = np.array([spec.channels[c].filter.process_noise for c in channels])
        self.r = np.array([spec.channels[c].filter.measurement_noise for c in channels])
        #: (twin id, channel) -> [estimate, variance] as a 2-element numpy array
        self.cells: dict[tuple[str, int], np.ndarray] = {}
        self.last_ns: dict[tuple[str, int], int] = {}

    def update(
        self, twin_id: str, channel: int, time_ns: int, value: float
    ) -> tuple[float, float, float, float]:
        """Apply one reading; return (estimate, std, innovation, nis)."""
        key = (twin_id, channel)
        r = self.r[channel]
        cell = self.cells.get(key)
        if cell is None:
            self.cells[key] = np.array([value, r])
            self.last_ns[key] = time_ns
            return value, math.sqrt(r), math.nan, math.nan
        last = self.last_ns[key]
        dt = max(time_ns - last, 0) / NS_PER_S
        p_pred = cell[1] + self.q[channel] * dt
        s = p_pred + r
        gain = p_pred / s
        innovation = value - cell[0]
        cell[0] = cell[0] + gain * innovation
        cell[1] = (1.0 - gain) * p_pred
        self.last_ns[key] = max(last, time_ns)
        return (
            float(cell[0]),
            math.sqrt(cell[1]),
            float(innovation),
            float(innovation * innovation / s),
        )
