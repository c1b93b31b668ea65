"""A straightforward per-twin, per-reading float64 implementation of the state-space filter.

The yardstick of :class:`~dte_stream.twins.kalman.StateSpaceKernel`: the same model and
the same rules (gaps, late and rejected readings, gating and resets, control inputs, first
observation from the prior, per-reading trust ``r_scale``, the adaptive noise scale), written one
reading at a time with small numpy matrices and an
independent matrix exponential (Taylor series with scaling and squaring, not the kernel's
batched Padé). Far too slow for the data path; that is the point of comparing against it.
"""

# Matrix names (P, ...) follow the usual Kalman-filter notation on purpose.
# ruff: noqa: N806
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from dte_stream.times import NS_PER_S
from dte_stream.twins.statespace import CHI2_1DOF_999, NOISE_SCALE_FLOOR, StateSpaceModel

__all__ = ["ReferenceFilter", "ReferenceOutput", "expm_taylor"]

F64 = npt.NDArray[np.float64]


def expm_taylor(a: F64) -> F64:
    """``exp(a)`` of one square matrix: scale to 1-norm <= 1/8, 30 Taylor terms, square back."""
    norm = float(np.abs(a).sum(axis=0).max()) if a.size else 0.0
    s = max(0, math.ceil(math.log2(norm * 8))) if norm > 0 else 0
    x = a / 2.0**s
    term = np.eye(a.shape[0])
    total = term.copy()
    for i in range(1, 30):
        term = term @ x / i
        total = total + term
    for _ in range(s):
        total = total @ total
    return total


@dataclass
class _Twin:
    x: F64
    P: F64
    u: F64
    gated_run: list[int]
    last_ns: int = 0
    initialised: bool = False
    scale: float = 1.0
    scale_count: int = 0


@dataclass
class ReferenceOutput:
    """The outputs of one reading, as in :class:`~dte_stream.twins.kalman.StateSpaceOutput`."""

    estimate: F64
    std: F64
    predicted: float
    innovation: float
    s: float
    nis: float
    gated: bool
    reset: bool
    late: bool
    rejected: bool
    forecast: list[float] = field(default_factory=list)
    forecast_std: list[float] = field(default_factory=list)
    channel_estimate: float = math.nan
    channel_std: float = math.nan


class ReferenceFilter:
    """One filter per twin id, updated one reading at a time.

    >>> from dte_stream.twins.presets import random_walk
    >>> f = ReferenceFilter(random_walk(0.01, [1.0], prior_variance=100.0))
    >>> round(float(f.update("p1", 0, 0, 20.0).estimate[0]), 3)
    19.802
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
        self.model = model
        self.adaptive_noise = adaptive_noise
        self.noise_halflife = noise_halflife
        self.warmup = warmup
        self.gate = gate
        self.reset_after = reset_after
        self.lateness_ns = lateness_ns
        self.horizons_s = list(horizons_s or [])
        self.twins: dict[str, _Twin] = {}

    def transition(self, dt_ns: int) -> tuple[F64, F64, F64]:
        """``F``, ``Qd`` and ``G`` (on ``[1, u]``) for a gap of ``dt_ns > 0``."""
        mdl = self.model
        n = mdl.n
        cb = np.column_stack([mdl.c, mdl.B])
        if mdl.kind == "discrete":
            step_ns = max(1, round(mdl.step_s * NS_PER_S))
            f, q, g = np.eye(n), np.zeros((n, n)), np.zeros_like(cb)
            for _ in range((dt_ns + step_ns // 2) // step_ns):
                f, q, g = mdl.A @ f, mdl.A @ q @ mdl.A.T + mdl.Q, mdl.A @ g + cb
            return f, q, g
        # Van Loan on a part of the gap short enough that exp(-A dt) cannot overflow, then doubled.
        norm = float(np.abs(mdl.A).sum(axis=0).max())
        dt = dt_ns / NS_PER_S
        halvings = max(0, math.ceil(math.log2(norm * dt))) if norm * dt > 0 else 0
        dt = dt / 2.0**halvings
        vl = np.block([[-mdl.A, mdl.Q], [np.zeros((n, n)), mdl.A.T]]) * dt
        e = expm_taylor(vl)
        f = e[n:, n:].T
        q = f @ e[:n, n:]
        aug = np.zeros((n + cb.shape[1], n + cb.shape[1]))
        aug[:n, :n] = mdl.A
        aug[:n, n:] = cb
        g = expm_taylor(aug * dt)[:n, n:]
        for _ in range(halvings):
            f, q, g = f @ f, f @ q @ f.T + q, f @ g + g
        return f, (q + q.T) / 2, g

    def update(
        self, twin_id: str, channel: int, time_ns: int, value: float, r_scale: float = 1.0
    ) -> ReferenceOutput:
        """Apply one reading of channel ``channel`` (``>= m``: a control input) and return its outputs.

        ``r_scale`` multiplies the channel's measurement variance for this reading only.
        """
        mdl = self.model
        tw = self.twins.get(twin_id)
        if tw is None:
            tw = self.twins[twin_id] = _Twin(mdl.x0.copy(), mdl.P0.copy(), np.zeros(mdl.p), [0] * mdl.m)
        nan = math.nan
        observation = channel < mdl.m
        late = tw.initialised and time_ns < tw.last_ns
        if late and tw.last_ns - time_ns > self.lateness_ns:
            return self._output(tw, nan, nan, nan, nan, False, False, False, True, None)
        x, P = tw.x, tw.P
        if tw.initialised and time_ns > tw.last_ns:
            f, q, g = self.transition(time_ns - tw.last_ns)
            x = f @ x + g @ np.concatenate([[1.0], tw.u])
            P = f @ P @ f.T + q
        if not observation:
            if tw.initialised:
                tw.x, tw.P, tw.last_ns = x, P, max(tw.last_ns, time_ns)
            tw.u[channel - mdl.m] = value
            return self._output(tw, nan, nan, nan, nan, False, False, late, False, None)
        h = mdl.H[channel]
        r = float(mdl.R[channel]) * r_scale
        predicted = float(h @ x)
        innovation = value - predicted
        s = float(h @ P @ h) + r  # in the model's units
        scale = tw.scale if self.adaptive_noise else 1.0
        nis = innovation * innovation / s
        if nis > 0.0:  # a scale of 0 (a series that never changed) makes any change infinitely unlikely
            nis = nis / scale if scale > 0.0 else math.inf
        armed = tw.scale_count >= self.warmup if self.adaptive_noise else True
        have_scale = tw.scale_count > 0
        gated = reset = False
        if tw.initialised and armed and nis > self.gate:
            tw.gated_run[channel] += 1
            if tw.gated_run[channel] >= self.reset_after:
                reset = True
                P = P + mdl.P0
            else:
                gated = True
        if gated:
            tw.x, tw.P = x, (P + P.T) / 2
        else:
            tw.gated_run[channel] = 0
            s_upd = float(h @ P @ h) + r
            k = P @ h / s_upd
            ikh = np.eye(mdl.n) - np.outer(k, h)
            new_p = ikh @ P @ ikh.T + np.outer(k, k) * r
            tw.x, tw.P = x + k * innovation, (new_p + new_p.T) / 2
            if self.adaptive_noise and tw.initialised:
                self._learn(tw, innovation * innovation / s_upd)
        measured = tw.initialised
        tw.last_ns = max(tw.last_ns, time_ns) if tw.initialised else time_ns
        tw.initialised = True
        if not measured:
            innovation = s = nis = nan
        elif self.adaptive_noise and not have_scale:  # no scale yet: s and nis are unknown
            s = nis = nan
        return self._output(tw, predicted, innovation, s * scale, nis, gated, reset, late, False, channel)

    def _learn(self, tw: _Twin, sample: float) -> None:
        """Plain mean of the unit-scale NIS over the first readings, then exponentially weighted."""
        tw.scale_count += 1
        weight = max(1.0 / tw.scale_count, 1.0 - 0.5 ** (1.0 / self.noise_halflife))
        tw.scale = max((1.0 - weight) * tw.scale + weight * sample, NOISE_SCALE_FLOOR)

    def _output(
        self,
        tw: _Twin,
        predicted: float,
        innovation: float,
        s: float,
        nis: float,
        gated: bool,
        reset: bool,
        late: bool,
        rejected: bool,
        channel: int | None,
    ) -> ReferenceOutput:
        scale = tw.scale if self.adaptive_noise else 1.0  # variances out in the estimated scale
        std = np.sqrt(np.maximum(np.diag(tw.P), 0.0) * scale)
        out = ReferenceOutput(tw.x.copy(), std, predicted, innovation, s, nis, gated, reset, late, rejected)
        if channel is not None:
            h = self.model.H[channel]
            out.channel_estimate = float(h @ tw.x)
            out.channel_std = math.sqrt(max(float(h @ tw.P @ h), 0.0) * scale)
        for horizon in self.horizons_s:
            if channel is None:
                out.forecast.append(math.nan)
                out.forecast_std.append(math.nan)
                continue
            f, q, g = self.transition(round(horizon * NS_PER_S))
            h = self.model.H[channel]
            x_h = f @ tw.x + g @ np.concatenate([[1.0], tw.u])
            p_h = f @ tw.P @ f.T + q
            out.forecast.append(float(h @ x_h))
            var = float(h @ p_h @ h) + float(self.model.R[channel])  # nominal R: a future reading
            out.forecast_std.append(math.sqrt(max(var, 0.0) * scale))
        return out
