"""What-if simulation: a twin's state propagated forward under a scenario, with uncertainty.

Engine-free: it starts from a twin's record in the view (:mod:`dte_stream.view.records`: each
filter's state mean ``x`` and covariance ``P`` at its time), never from a live shard. For each
filter of the twin (a shared model, or a channel's own filter) and a step ``dt``, the model's
exact discretisation (:class:`~dte_stream.twins.discretise.Discretiser`) gives ``F``, ``Qd`` and
``G`` (on ``[1, u]``), and then for every step

* the closed form: ``m <- F m + G [1, u]``, ``P <- F P F' + Qd`` (the mean and std reported);
* ``N`` sampled trajectories, all in one numpy step: ``X <- X F' + [1, u] G' + W L'`` with
  ``W ~ N(0, I)`` and ``L L' = Qd``, starting from ``X0 ~ N(x, P)``; the bands are quantiles
  of the samples, the alert probabilities come from the samples;
* a channel *held* at a value: a reading of that value each step, applied to the closed form
  by the Kalman update and to every sample with the same gain (perturbed observations, so the
  samples keep the closed form's covariance);
* a control channel gets its schedule (zero-order hold), by default the input the twin holds.

Threshold alert rules of the twin type are checked on every sample: the reading (``signal:
value``, the sample's channel plus measurement noise) or the estimate (``signal: estimate``,
the sample's channel, which the filter would track) beyond the level for ``holds_for``. A
sensor that *stops reporting* sends no readings from then on: value rules on it cannot fire.
The result gives each rule's probability of firing within the horizon, and the median and
90th percentile of the firing time among the samples that fire.
"""

# Matrix names (F, G, P, Q) follow the usual Kalman-filter notation on purpose.
# ruff: noqa: N803, N806
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from dte_stream.errors import ConfigError
from dte_stream.spec.alerts import ThresholdRuleSpec
from dte_stream.spec.twins import TwinTypeSpec
from dte_stream.times import NS_PER_S
from dte_stream.twins.discretise import Discretiser
from dte_stream.twins.filters import build_groups
from dte_stream.twins.statespace import StateSpaceModel

__all__ = ["MAX_SAMPLE_STEPS", "MAX_STEPS", "Scenario", "WhatIf", "simulate"]

F64 = npt.NDArray[np.float64]
#: Upper bound of samples x steps (memory and time of one request: about 2 s and 16 MB per state).
MAX_SAMPLE_STEPS = 2_000_000
#: Upper bound of the steps over the horizon.
MAX_STEPS = 10_000
#: The band: these quantiles of the samples.
BAND = (0.05, 0.95)


@dataclass(frozen=True, slots=True)
class Scenario:
    """What is assumed over the horizon (times are seconds from the start).

    ``controls``: a control channel's input over time, ``[(at_s, value), ...]`` (held from each
    time on); ``hold``: an observed channel read at a fixed value every step; ``silent``: a
    sensor that stops reporting at ``at_s``.
    """

    controls: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    hold: dict[str, float] = field(default_factory=dict)
    silent: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WhatIf:
    """The result: per state and channel the mean, std and sample band over time; per rule the odds."""

    twin_id: str
    start_ns: int
    step_s: float
    times_s: list[float]
    samples: int
    states: dict[str, dict[str, list[float]]]
    channels: dict[str, dict[str, list[float]]]
    rules: list[dict[str, Any]]

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "twin_id": self.twin_id,
            "start_ns": self.start_ns,
            "step_s": self.step_s,
            "times_s": self.times_s,
            "samples": self.samples,
            "states": self.states,
            "channels": self.channels,
            "rules": self.rules,
        }


def _sqrt_psd(a: F64) -> F64:
    """``L`` with ``L L' = a`` for a symmetric positive semidefinite ``a`` (eigen-decomposition)."""
    w, v = np.linalg.eigh(0.5 * (a + a.T))
    root: F64 = v * np.sqrt(np.maximum(w, 0.0))
    return root


def _schedule(points: list[tuple[float, float]], times: F64, default: float) -> F64:
    """The input in force at each time: zero-order hold of the schedule, ``default`` before it."""
    out = np.full(times.shape[0], default)
    for at, value in sorted(points):
        out[times >= at - 1e-9] = value
    return out


@dataclass
class _Filter:
    """One filter of the twin while simulating: closed form and samples."""

    name: str
    model: StateSpaceModel
    observes: list[str]
    controls: list[str]
    mean: F64
    cov: F64
    u: F64
    time_ns: int


def _filters(spec: TwinTypeSpec, record: dict[str, Any]) -> list[_Filter]:
    models = {name: mdl for g in build_groups(spec, capacity=1) for name, mdl, _ in g.filters}
    out = []
    for entry in record.get("models", []):
        mdl = models.get(entry["group"])
        if mdl is None:
            raise ConfigError(
                f"twin {record['twin_id']!r}: its state has a filter {entry['group']!r} that twin type "
                f"{spec.name!r} does not declare (the view is from another spec version)"
            )
        mean = np.asarray(entry["mean"], dtype=np.float64)
        cov = np.asarray(entry["cov"], dtype=np.float64)
        if mean.shape != (mdl.n,) or cov.shape != (mdl.n, mdl.n):
            raise ConfigError(f"twin {record['twin_id']!r}: filter {entry['group']!r} does not fit its model")
        u = np.asarray(entry.get("u") or [0.0] * mdl.p, dtype=np.float64)
        out.append(
            _Filter(entry["group"], mdl, list(entry["channels"]), list(entry["controls"]), mean, cov, u,
                    int(entry["time_ns"]))
        )  # fmt: skip
    if not out:
        raise ConfigError(f"twin {record['twin_id']!r} has no filter state yet (no reading applied)")
    return out


def _check_scenario(scenario: Scenario, filters: list[_Filter], horizon_s: float) -> None:
    observed = {c for f in filters for c in f.observes}
    controls = {c for f in filters for c in f.controls}
    for name in scenario.controls:
        if name not in controls:
            known = ", ".join(sorted(controls)) or "none (this twin's models take no inputs)"
            raise ConfigError(
                f"scenario.controls: {name!r} is not a control channel of the twin; controls: {known}"
            )
    for name, value in scenario.hold.items():
        if name not in observed:
            raise ConfigError(
                f"scenario.hold: {name!r} is not an observed channel; channels: {', '.join(sorted(observed))}"
            )
        if not math.isfinite(value):
            raise ConfigError(f"scenario.hold: the value of {name!r} must be a finite number")
    for name, at in scenario.silent.items():
        if name not in observed:
            raise ConfigError(
                f"scenario.silent: {name!r} is not an observed channel; "
                f"channels: {', '.join(sorted(observed))}"
            )
        if not (math.isfinite(at) and 0 <= at <= horizon_s):
            raise ConfigError(
                f"scenario.silent: {name!r} must stop within the horizon (0 to {horizon_s:g} s)"
            )
    for name, points in scenario.controls.items():
        for at, value in points:
            if not (math.isfinite(at) and math.isfinite(value) and 0 <= at <= horizon_s):
                raise ConfigError(
                    f"scenario.controls.{name}: each point is [seconds from start within the horizon, value]"
                )


def simulate(
    spec: TwinTypeSpec,
    record: dict[str, Any],
    *,
    horizon_s: float,
    step_s: float,
    samples: int = 500,
    scenario: Scenario | None = None,
    seed: int | None = None,
    start_ns: int | None = None,
) -> WhatIf:
    """Propagate the twin of ``record`` (a view record) forward ``horizon_s`` in steps of ``step_s``.

    ``start_ns`` defaults to the twin's latest filter time; filters whose state is older are
    first predicted to it. Raises :class:`ConfigError` naming the problem for an impossible
    request (horizon, step, samples, a scenario naming unknown channels).
    """
    scenario = scenario or Scenario()
    if not (math.isfinite(step_s) and step_s > 0 and math.isfinite(horizon_s) and horizon_s >= step_s):
        raise ConfigError("horizon and step must be positive seconds with the step at most the horizon")
    if horizon_s / step_s > MAX_STEPS:
        raise ConfigError(
            f"the horizon holds {horizon_s / step_s:.3g} steps; at most {MAX_STEPS:,} (a longer step)"
        )
    steps = math.floor(horizon_s / step_s + 1e-9)
    if samples < 1 or samples * steps > MAX_SAMPLE_STEPS:
        raise ConfigError(
            f"samples x steps must be from 1 to {MAX_SAMPLE_STEPS:,}; got {samples} x {steps} "
            "(fewer samples, a longer step or a shorter horizon)"
        )
    filters = _filters(spec, record)
    _check_scenario(scenario, filters, horizon_s)
    t0 = max(f.time_ns for f in filters) if start_ns is None else int(start_ns)
    times: F64 = np.arange(steps + 1, dtype=np.float64) * step_s
    rng = np.random.default_rng(seed)
    states: dict[str, dict[str, list[float]]] = {}
    channels: dict[str, dict[str, list[float]]] = {}
    reading_samples: dict[str, F64] = {}  # channel -> (steps + 1, N) readings (NaN when silent)
    estimate_samples: dict[str, F64] = {}
    step_ns = np.array([round(step_s * NS_PER_S)], dtype=np.int64)
    for flt in filters:
        mdl = flt.model
        disc = Discretiser(mdl)
        mean, cov = flt.mean.copy(), flt.cov.copy()
        if t0 > flt.time_ns:  # bring an older state to the common start (its inputs held)
            F, Qd, G = (a[0] for a in disc(np.array([t0 - flt.time_ns], dtype=np.int64)))
            mean = F @ mean + G @ np.concatenate([[1.0], flt.u])
            cov = F @ cov @ F.T + Qd
        F, Qd, G = (a[0] for a in disc(step_ns))
        L = _sqrt_psd(Qd)
        inputs = np.empty((steps + 1, 1 + mdl.p))
        inputs[:, 0] = 1.0
        for j, name in enumerate(flt.controls):
            inputs[:, 1 + j] = _schedule(scenario.controls.get(name, []), times, float(flt.u[j]))
        held = [(i, scenario.hold[c], scenario.silent.get(c, math.inf)) for i, c in enumerate(flt.observes)
                if c in scenario.hold]  # fmt: skip
        X = mean + rng.standard_normal((samples, mdl.n)) @ _sqrt_psd(cov).T
        means = np.empty((steps + 1, mdl.n))
        covs = np.empty((steps + 1, mdl.n, mdl.n))
        path = np.empty((steps + 1, samples, mdl.n))
        for k in range(steps + 1):
            if k > 0:
                drive = G @ inputs[k - 1]
                mean = F @ mean + drive
                cov = F @ cov @ F.T + Qd
                X = X @ F.T + drive + rng.standard_normal((samples, mdl.n)) @ L.T
                for i, value, stop in held:
                    if times[k] < stop:
                        mean, cov, X = _held_reading(mdl, i, value, mean, cov, X, rng)
            means[k] = mean
            covs[k] = cov
            path[k] = X
        band = np.quantile(path, BAND, axis=1)  # (2, steps + 1, n)
        obs = np.einsum("ksn,mn->kms", path, mdl.H)  # (steps + 1, m, N)
        del path
        for s_i, state in enumerate(mdl.state_names):
            key = f"{flt.name}.{state}"
            states[key] = _series(means[:, s_i], covs[:, s_i, s_i], band[0, :, s_i], band[1, :, s_i])
        for i, name in enumerate(flt.observes):
            h = mdl.H[i]
            est = obs[:, i, :]
            low, high = np.quantile(est, BAND, axis=1)
            channels[name] = _series(means @ h, np.einsum("i,kij,j->k", h, covs, h), low, high)
            estimate_samples[name] = est
            readings = est + rng.standard_normal(est.shape) * math.sqrt(float(mdl.R[i]))
            if name in scenario.silent:
                readings[times >= scenario.silent[name] - 1e-9] = np.nan
            reading_samples[name] = readings
    rules = _rule_odds(spec, estimate_samples, reading_samples, times, t0)
    return WhatIf(str(record["twin_id"]), t0, float(step_s), times.tolist(), samples, states, channels, rules)


def _held_reading(
    mdl: StateSpaceModel, i: int, value: float, mean: F64, cov: F64, X: F64, rng: np.random.Generator
) -> tuple[F64, F64, F64]:
    """A reading ``value`` of observed channel ``i``: Kalman update of the closed form, same gain
    for every sample with its own measurement noise (so the samples keep the updated covariance)."""
    h, r = mdl.H[i], float(mdl.R[i])
    s = float(h @ cov @ h) + r
    gain = cov @ h / s
    mean = mean + gain * (value - h @ mean)
    ikh = np.eye(mdl.n) - np.outer(gain, h)
    cov = ikh @ cov @ ikh.T + np.outer(gain, gain) * r
    noise = rng.standard_normal(X.shape[0]) * math.sqrt(r)
    X = X + np.outer(value + noise - X @ h, gain)
    return mean, cov, X


def _series(mean: F64, var: F64, low: F64, high: F64) -> dict[str, list[float]]:
    return {
        "mean": mean.tolist(),
        "std": np.sqrt(np.maximum(var, 0.0)).tolist(),
        "low": low.tolist(),
        "high": high.tolist(),
    }


def _rule_odds(
    spec: TwinTypeSpec, estimates: dict[str, F64], readings: dict[str, F64], times: F64, t0: int
) -> list[dict[str, Any]]:
    """For each threshold rule and channel it watches: probability and time of firing."""
    out: list[dict[str, Any]] = []
    for rule in spec.alerts.rules:
        if not isinstance(rule, ThresholdRuleSpec):
            continue
        for name in rule.watched_channels() or spec.channel_names():
            series = (readings if rule.signal == "value" else estimates).get(name)
            if series is None:
                continue
            level = rule.level()
            with np.errstate(invalid="ignore"):
                cond = series > level if rule.above is not None else series < level
            first = _first_fire(cond, times, rule.holds_for)  # (N,) seconds or inf
            fired = first[np.isfinite(first)]
            probability = fired.shape[0] / first.shape[0]
            median = float(np.median(fired)) if fired.size else None
            p90 = float(np.quantile(fired, 0.9)) if fired.size else None
            out.append(
                {
                    "rule": rule.name,
                    "channel": name,
                    "signal": rule.signal,
                    "direction": "above" if rule.above is not None else "below",
                    "level": level,
                    "holds_for_s": rule.holds_for,
                    "severity": rule.severity,
                    "probability": probability,
                    "median_s": median,
                    "p90_s": p90,
                    "median_ns": None if median is None else t0 + round(median * NS_PER_S),
                    "p90_ns": None if p90 is None else t0 + round(p90 * NS_PER_S),
                }
            )
    return out


def _first_fire(cond: npt.NDArray[np.bool_], times: F64, holds_for: float) -> F64:
    """Per sample (columns), the first time the condition has held for ``holds_for`` (inf if never)."""
    steps, n = cond.shape
    first = np.full(n, np.inf)
    since = np.full(n, np.nan)  # when the current run of True began
    for k in range(steps):
        c = cond[k]
        since = np.where(c, np.where(np.isnan(since), times[k], since), np.nan)
        ready = c & (times[k] - since >= holds_for - 1e-9) & ~np.isfinite(first)
        first[ready] = times[k]
    return first
