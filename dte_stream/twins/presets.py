"""Ready-made :class:`~dte_stream.twins.statespace.StateSpaceModel` s for common twin behaviours.

All are continuous-time; the kernel discretises them exactly for each gap (Van Loan).
Noise densities are variances per second; ``measurement_noise`` lists one variance per
observed channel (several channels may observe the same state, e.g. two redundant
thermometers). ``prior_variance`` is the diagonal of ``P0``: the uncertainty of a new twin
and what a gating reset adds, so set it to a generous multiple of the expected level changes.

>>> damped_oscillator(period_s=10.0, damping=0.1, accel_noise=0.01, measurement_noise=[0.1]).n
2
"""

from __future__ import annotations

import math

import numpy as np

from dte_stream.twins.statespace import StateSpaceModel

__all__ = ["DAY_S", "daily_seasonal", "damped_oscillator", "local_linear_trend", "random_walk", "thermal"]

#: Seconds in a day: the period of :func:`daily_seasonal`.
DAY_S = 86_400.0


def _observe(states: int, channels: int, row: list[float]) -> np.ndarray:
    return np.tile(np.asarray(row, dtype=np.float64)[:states], (channels, 1))


def random_walk(
    level_noise: float, measurement_noise: list[float], prior_variance: float = 1e4
) -> StateSpaceModel:
    """Level only (n = 1): ``d level = dw``; the model of today's scalar filter."""
    m = len(measurement_noise)
    return StateSpaceModel.build(
        [[0.0]], _observe(1, m, [1.0]), [[level_noise]], measurement_noise,
        P0=[[prior_variance]], state_names=("level",),
    )  # fmt: skip


def local_linear_trend(
    level_noise: float, slope_noise: float, measurement_noise: list[float], prior_variance: float = 1e4
) -> StateSpaceModel:
    """Level and slope per second (n = 2): ``d level = slope dt + dw1``, ``d slope = dw2``."""
    m = len(measurement_noise)
    return StateSpaceModel.build(
        [[0.0, 1.0], [0.0, 0.0]], _observe(2, m, [1.0, 0.0]), np.diag([level_noise, slope_noise]),
        measurement_noise, P0=np.diag([prior_variance, prior_variance * 1e-4]),
        state_names=("level", "slope"),
    )  # fmt: skip


def thermal(
    tau_s: float,
    noise: float,
    measurement_noise: list[float],
    setpoint: float | None = None,
    prior_variance: float = 1e4,
) -> StateSpaceModel:
    """First-order lag towards a set point (n = 1): ``dx = -(x - s) / tau dt + dw``.

    With ``setpoint=None`` the set point is a control input: the kernel's channel ``m`` (named
    ``setpoint``) carries it, held between readings (zero-order hold). A fixed set point is the
    constant term ``c = s / tau``.
    """
    if not (math.isfinite(tau_s) and tau_s > 0):
        raise ValueError(f"thermal time constant tau_s must be positive seconds, not {tau_s!r}")
    m = len(measurement_noise)
    fixed = setpoint is not None
    return StateSpaceModel.build(
        [[-1.0 / tau_s]], _observe(1, m, [1.0]), [[noise]], measurement_noise,
        P0=[[prior_variance]], x0=[0.0 if setpoint is None else setpoint],
        c=[setpoint / tau_s] if setpoint is not None else None,
        B=None if fixed else [[1.0 / tau_s]],
        state_names=("temperature",), control_names=() if fixed else ("setpoint",),
    )  # fmt: skip


def damped_oscillator(
    period_s: float, damping: float, accel_noise: float, measurement_noise: list[float],
    prior_variance: float = 1e4,
) -> StateSpaceModel:  # fmt: skip
    """Position and velocity (n = 2) of ``x'' + 2 zeta w x' + w^2 x = noise``, ``w = 2 pi / period``."""
    if not (math.isfinite(period_s) and period_s > 0) or not (math.isfinite(damping) and damping >= 0):
        raise ValueError(
            f"damped oscillator needs period_s > 0 and damping >= 0, not {period_s!r}, {damping!r}"
        )
    w = 2.0 * math.pi / period_s
    m = len(measurement_noise)
    return StateSpaceModel.build(
        [[0.0, 1.0], [-w * w, -2.0 * damping * w]], _observe(2, m, [1.0, 0.0]),
        np.diag([0.0, accel_noise]), measurement_noise,
        P0=np.diag([prior_variance, prior_variance * w * w]), state_names=("position", "velocity"),
    )  # fmt: skip


def daily_seasonal(
    level_noise: float,
    season_noise: float,
    measurement_noise: list[float],
    period_s: float = DAY_S,
    prior_variance: float = 1e4,
) -> StateSpaceModel:
    """Level plus one trigonometric seasonal pair (n = 3): reading = level + s1.

    ``(s1, s2)`` rotates with angular frequency ``2 pi / period_s`` (a daily cycle by default),
    each state drifting by its own noise, so amplitude and phase adapt slowly.
    """
    w = 2.0 * math.pi / period_s
    m = len(measurement_noise)
    a = np.zeros((3, 3))
    a[1, 2], a[2, 1] = w, -w
    return StateSpaceModel.build(
        a, _observe(3, m, [1.0, 1.0, 0.0]), np.diag([level_noise, season_noise, season_noise]),
        measurement_noise, P0=np.eye(3) * prior_variance, state_names=("level", "season_cos", "season_sin"),
    )  # fmt: skip
