"""Twin types in the spec: channels, state-space models, filter settings, learners, lifecycle.

A twin type declares its channels. Each channel is filtered on its own by a one-channel model
(``filter``, a random-walk level by default) unless a shared model in ``models`` observes it:
a shared model has one state vector per twin that several channels observe (and others may
drive as control inputs). Models are presets or custom matrices; they become
:class:`~dte_stream.twins.statespace.StateSpaceModel` s through :meth:`FilterPreset.build` and
:meth:`MatricesSpec.build`.

>>> t = TwinTypeSpec(name="room", channels={"temp_a": {}, "temp_b": {}, "setpoint": {}},
...     models=[{"name": "air", "preset": {"model": "thermal", "tau": "10m"},
...              "observes": ["temp_a", "temp_b"], "controls": ["setpoint"]}])
>>> t.models[0].build().n, t.per_channel()
(1, [])
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Annotated, Any, Literal

import orjson
from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from dte_stream.readings import id_problem
from dte_stream.spec.alerts import AlertingSpec, NisRuleSpec
from dte_stream.spec.base import Identifier, PositiveSeconds, Seconds, SpecModel
from dte_stream.spec.learners import LearnerSpec
from dte_stream.spec.quality import QualitySpec
from dte_stream.twins.anomaly import ANOMALY_LEVEL
from dte_stream.twins.contextual import CONTEXT_AFTER_S, CONTEXT_BINS, CONTEXT_HALFLIFE_S, QUIET_READINGS
from dte_stream.twins.presets import (
    daily_seasonal,
    damped_oscillator,
    local_linear_trend,
    random_walk,
    thermal,
)
from dte_stream.twins.statespace import CHI2_1DOF_999, StateSpaceModel

__all__ = [
    "AnomalySpec",
    "ChannelSpec",
    "FilterPreset",
    "KalmanSettings",
    "MatricesSpec",
    "ModelSpec",
    "OutputsSpec",
    "TwinTypeSpec",
]

Variance = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NoiseList = Variance | list[Variance]


class _Preset(SpecModel):
    measurement_noise: NoiseList = Field(
        1.0, description="variance of one reading (one per observed channel)"
    )
    prior_variance: Variance = Field(1e4, description="variance of a new twin's state, and of a reset")

    def noises(self, channels: int) -> list[float]:
        """One measurement variance per observed channel."""
        if isinstance(self.measurement_noise, list):
            if len(self.measurement_noise) != channels:
                raise ValueError(
                    f"measurement_noise lists {len(self.measurement_noise)} variances "
                    f"for {channels} observed channels"
                )
            return list(self.measurement_noise)
        return [self.measurement_noise] * channels

    def build(self, channels: int = 1, controls: int = 0) -> StateSpaceModel:
        """The model with ``channels`` observed channels and ``controls`` control inputs."""
        raise NotImplementedError


def _no_controls(kind: str, controls: int) -> None:
    if controls:
        raise ValueError(f"the {kind} preset takes no control inputs (only thermal without setpoint does)")


class RandomWalkPreset(_Preset):
    """A level that wanders: ``process_noise`` is the variance it gains per second."""

    model: Literal["random_walk"] = "random_walk"
    process_noise: Variance = Field(0.01, description="level variance added per second")

    def build(self, channels: int = 1, controls: int = 0) -> StateSpaceModel:
        _no_controls(self.model, controls)
        return random_walk(self.process_noise, self.noises(channels), self.prior_variance)


class TrendPreset(_Preset):
    """Level and slope (per second): follows ramps and forecasts them."""

    model: Literal["local_linear_trend"]
    level_noise: Variance = Field(0.01, description="level variance added per second")
    slope_noise: Variance = Field(1e-6, description="slope variance added per second")

    def build(self, channels: int = 1, controls: int = 0) -> StateSpaceModel:
        _no_controls(self.model, controls)
        return local_linear_trend(
            self.level_noise, self.slope_noise, self.noises(channels), self.prior_variance
        )


class ThermalPreset(_Preset):
    """First-order lag towards a set point: fixed ``setpoint``, or a control channel."""

    model: Literal["thermal"]
    tau: PositiveSeconds = Field(description="time constant of the lag")
    noise: Variance = Field(0.01, description="temperature variance added per second")
    setpoint: float | None = Field(None, description="fixed set point; unset = from a control channel")

    def build(self, channels: int = 1, controls: int = 0) -> StateSpaceModel:
        if self.setpoint is None and controls != 1:
            raise ValueError("the thermal preset without setpoint needs exactly one control channel")
        if self.setpoint is not None and controls:
            raise ValueError("the thermal preset with a fixed setpoint takes no control channel")
        return thermal(self.tau, self.noise, self.noises(channels), self.setpoint, self.prior_variance)


class OscillatorPreset(_Preset):
    """Position and velocity of a damped oscillator (vibration, sloshing, swaying)."""

    model: Literal["damped_oscillator"]
    period: PositiveSeconds
    damping: float = Field(0.1, ge=0, description="damping ratio (1 = critical)")
    accel_noise: Variance = Field(0.01, description="velocity variance added per second")

    def build(self, channels: int = 1, controls: int = 0) -> StateSpaceModel:
        _no_controls(self.model, controls)
        return damped_oscillator(
            self.period, self.damping, self.accel_noise, self.noises(channels), self.prior_variance
        )


class SeasonalPreset(_Preset):
    """Level plus a daily cycle whose amplitude and phase adapt slowly."""

    model: Literal["daily_seasonal"]
    level_noise: Variance = 0.01
    season_noise: Variance = 0.001
    period: PositiveSeconds = Field(86_400.0, description="period of the cycle (default one day)")

    def build(self, channels: int = 1, controls: int = 0) -> StateSpaceModel:
        _no_controls(self.model, controls)
        return daily_seasonal(
            self.level_noise, self.season_noise, self.noises(channels), self.period, self.prior_variance
        )


def _preset_kind(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("model", "random_walk"))
    return str(getattr(value, "model", "random_walk"))


FilterPreset = Annotated[
    Annotated[RandomWalkPreset, Tag("random_walk")]
    | Annotated[TrendPreset, Tag("local_linear_trend")]
    | Annotated[ThermalPreset, Tag("thermal")]
    | Annotated[OscillatorPreset, Tag("damped_oscillator")]
    | Annotated[SeasonalPreset, Tag("daily_seasonal")],
    Discriminator(
        _preset_kind,
        custom_error_type="unknown_model",
        custom_error_message=(
            "model must be one of random_walk, local_linear_trend, thermal, damped_oscillator, daily_seasonal"
        ),
    ),
]

Matrix = list[list[float]]


class MatricesSpec(SpecModel):
    """A custom linear-Gaussian model (see docs/twins.md): rows of each matrix as lists."""

    kind: Literal["continuous", "discrete"] = "continuous"
    step: PositiveSeconds = Field(1.0, description="time step of a discrete model")
    states: list[Identifier] = Field(default_factory=list, description="state names (default x0, x1, ...)")
    A: Matrix = Field(description="transition (continuous: per second)")
    H: Matrix = Field(description="observation: one row per observed channel")
    Q: Matrix = Field(description="process noise (continuous: per second)")
    R: list[Variance] = Field(description="measurement variance per observed channel")
    P0: Matrix = Field(description="prior covariance of a new twin (also added on a reset)")
    x0: list[float] | None = None
    c: list[float] | None = Field(None, description="constant input")
    B: Matrix | None = Field(None, description="control input: one column per control channel")

    def build(self, channels: int, controls: int) -> StateSpaceModel:
        if len(self.H) != channels:
            raise ValueError(f"H has {len(self.H)} rows for {channels} observed channels")
        columns = len(self.B[0]) if self.B else 0
        if columns != controls:
            raise ValueError(f"B has {columns} columns for {controls} control channels")
        return StateSpaceModel.build(
            self.A, self.H, self.Q, self.R, P0=self.P0, x0=self.x0, c=self.c, B=self.B,
            kind=self.kind, step_s=self.step, state_names=tuple(self.states),
        )  # fmt: skip


class ModelSpec(SpecModel):
    """A state vector per twin that several channels observe: a preset or custom matrices."""

    name: Identifier
    observes: list[str] = Field(min_length=1, description="channels observing the state, in H row order")
    controls: list[str] = Field(default_factory=list, description="channels taken as control inputs")
    preset: FilterPreset | None = None
    matrices: MatricesSpec | None = None

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if (self.preset is None) == (self.matrices is None):
            raise ValueError(f"model {self.name!r}: give exactly one of preset or matrices")
        both = set(self.observes) & set(self.controls)
        if (
            both
            or len(set(self.observes)) != len(self.observes)
            or len(set(self.controls)) != len(self.controls)
        ):
            raise ValueError(f"model {self.name!r}: a channel may appear once in observes and controls")
        try:
            self.build()
        except ValueError as exc:
            raise ValueError(f"model {self.name!r}: {exc}") from None
        return self

    def build(self) -> StateSpaceModel:
        m, p = len(self.observes), len(self.controls)
        built = self.preset.build(m, p) if self.preset is not None else self.matrices.build(m, p)  # type: ignore[union-attr]
        return StateSpaceModel.build(
            built.A, built.H, built.Q, built.R, P0=built.P0, x0=built.x0, c=built.c, B=built.B,
            kind=built.kind, step_s=built.step_s, state_names=built.state_names,
            channel_names=tuple(self.observes), control_names=tuple(self.controls),
        )  # fmt: skip


class KalmanSettings(SpecModel):
    """Filter rules shared by the models of a twin type."""

    gate: float | None = Field(
        CHI2_1DOF_999, gt=0, description="NIS above which a reading is not applied (null: never gate)"
    )
    reset_after: int = Field(3, ge=1, description="gated readings in a row after which a change is accepted")
    lateness: Seconds = Field(
        60.0, description="how much older than the twin a reading may be and still apply"
    )
    horizons: list[PositiveSeconds] = Field(default_factory=list, description="forecast horizons")
    adaptive_noise: bool = Field(False, description="learn each twin's noise scale (scale-free filters)")

    @field_validator("horizons")
    @classmethod
    def _distinct(cls, value: list[float]) -> list[float]:
        if len(set(value)) != len(value):
            raise ValueError("horizons must be distinct")
        return value


class AnomalySpec(SpecModel):
    """The built-in anomaly score and the level that flags a reading.

    ``method: contextual`` (the default) scores the filter's innovation and a time-of-day
    profile of the value (:class:`~dte_stream.twins.contextual.ContextualScorer`);
    ``innovation`` scores the innovation alone (:class:`~dte_stream.twins.anomaly.AnomalyScorer`,
    the default before December 2026: less state, no daily context, no quiet period).
    The ``context_*`` settings, ``likelihood`` and ``quiet`` apply to ``contextual`` only.
    """

    enabled: bool = True
    method: Literal["contextual", "innovation"] = Field(
        "contextual",
        description="contextual: innovation and time-of-day context; innovation: innovation alone",
    )
    level: float = Field(
        ANOMALY_LEVEL, gt=0, le=1, description="score at or above which a reading is flagged anomalous"
    )
    quiet: int = Field(
        QUIET_READINGS,
        ge=0,
        le=1_000_000,
        description="readings after a flag during which scores no larger than the flag's are halved",
    )
    context_bins: int = Field(
        CONTEXT_BINS, ge=1, le=1440, description="slots of the day in the time-of-day profile"
    )
    context_halflife: PositiveSeconds = Field(
        CONTEXT_HALFLIFE_S, description="half-life of the time-of-day profile (a duration, e.g. 3d)"
    )
    context_after: Seconds = Field(
        CONTEXT_AFTER_S, description="data a cell must have seen before its time-of-day context counts"
    )
    likelihood: bool = Field(
        True,
        description="also judge the recent mean of surprises against their long run (anomaly likelihood)",
    )


class OutputsSpec(SpecModel):
    """Optional outputs beyond each reading's estimate, std, innovation, NIS, flags and anomaly score."""

    states: bool = Field(True, description="every state (and its std) of models with more than one state")


class ChannelSpec(SpecModel):
    """One sensor channel of a twin type."""

    unit: str = ""
    aliases: list[str] = Field(default_factory=list, description="other names readings may use")
    filter: FilterPreset = Field(default_factory=RandomWalkPreset)
    quality: QualitySpec = Field(default_factory=QualitySpec)


def _horizon_name(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        if seconds >= size and math.isclose(seconds / size, round(seconds / size)):
            return f"{round(seconds / size)}{unit}"
    return f"{round(seconds * 1000)}ms"


class TwinTypeSpec(SpecModel):
    """A kind of twin: its channels, models, learners, and how readings are mapped to it."""

    name: Identifier
    version: int = Field(1, ge=1, description="bump when the state layout changes on purpose")
    description: str = ""
    match: str | None = Field(
        None, description="regular expression a twin id must fully match to be of this type"
    )
    channels: dict[str, ChannelSpec] = Field(min_length=1)
    models: list[ModelSpec] = Field(default_factory=list, description="state shared by several channels")
    kalman: KalmanSettings = Field(default_factory=KalmanSettings)
    anomaly: AnomalySpec = Field(default_factory=AnomalySpec)
    learners: list[LearnerSpec] = Field(default_factory=list)
    outputs: OutputsSpec = Field(default_factory=OutputsSpec)
    ttl: Seconds | None = Field(None, description="evict twins without a reading for this long")
    alerts: AlertingSpec = Field(default_factory=AlertingSpec, description="alert rules (docs/alerting.md)")

    @model_validator(mode="after")
    def _check(self) -> TwinTypeSpec:
        if self.match is not None:
            try:
                re.compile(self.match)
            except re.error as exc:
                raise ValueError(f"match: {self.match!r} is not a regular expression: {exc}") from None
        seen: dict[str, str] = {}
        for name, channel in self.channels.items():
            for alias in [name, *channel.aliases]:
                problem = id_problem("channel", alias)
                if problem:
                    raise ValueError(f"channels: {problem}")
                if alias in seen and seen[alias] != name:
                    raise ValueError(f"channels: name {alias!r} is used by both {seen[alias]!r} and {name!r}")
                seen[alias] = name
        owner: dict[str, str] = {}
        for i, model in enumerate(self.models):
            for member in [*model.observes, *model.controls]:
                if member not in self.channels:
                    raise ValueError(
                        f"models[{i}] ({model.name}): {member!r} is not a channel; "
                        f"channels: {', '.join(self.channels)}"
                    )
                if member in owner:
                    raise ValueError(
                        f"models[{i}] ({model.name}): channel {member!r} already belongs to "
                        f"model {owner[member]!r}"
                    )
                owner[member] = model.name
                if self.channels[member].filter != RandomWalkPreset():
                    raise ValueError(
                        f"channels.{member}.filter: the channel belongs to model {model.name!r}, "
                        "so its own filter would be ignored; remove it"
                    )
        if len({m.name for m in self.models}) != len(self.models):
            raise ValueError("models: names must be unique")
        names = [learner.name for learner in self.learners]
        if len(set(names)) != len(names):
            raise ValueError(f"learners: names must be unique, got {names}")
        problems = self.alerts.check_rules(self.channel_names())
        if problems:
            raise ValueError("alerts: " + "; ".join(problems))
        for i, rule in enumerate(self.alerts.rules):
            if not isinstance(rule, NisRuleSpec) or self.kalman.gate is None:
                continue
            readings = rule.readings
            if readings > self.kalman.reset_after:
                raise ValueError(
                    f"alerts.rules[{i}] ({rule.name}): readings {readings} can never be reached: the filter "
                    f"accepts a change after kalman.reset_after ({self.kalman.reset_after}) gated readings "
                    "and the NIS drops; use at most that many"
                )
        for i, learner in enumerate(self.learners):
            problem = learner.check_channels(self.channel_names())
            if problem:
                raise ValueError(f"learners[{i}] ({learner.name}): {problem}")
        return self

    def channel_names(self) -> list[str]:
        return list(self.channels)

    def per_channel(self) -> list[str]:
        """Channels filtered on their own (not part of a shared model)."""
        shared = {c for m in self.models for c in [*m.observes, *m.controls]}
        return [c for c in self.channels if c not in shared]

    def horizon_names(self) -> list[str]:
        """Output names of the forecast horizons, e.g. ``60s``, ``1h``."""
        return [_horizon_name(h) for h in self.kalman.horizons]

    def state_layout(self) -> dict[str, Any]:
        """What the twin state's layout depends on (the input of :meth:`state_fingerprint`).

        The channels (with the model kind of those filtered on their own), the shared models
        (channels, states, kind), adaptive noise, the anomaly scorer, the learners and the type's
        ``version``. Noise levels, gates, horizons, quality limits, units, the anomaly level and
        the alert rules are settings, not layout: they may change across a restart or a reload.
        """
        own = set(self.per_channel())
        return {
            "version": self.version,
            "channels": [[c, ch.filter.model if c in own else None] for c, ch in self.channels.items()],
            "models": [
                [m.name, m.observes, m.controls, list(m.build().state_names), m.build().kind]
                for m in self.models
            ],
            "adaptive_noise": self.kalman.adaptive_noise,
            "anomaly": [self.anomaly.enabled, self.anomaly.method, self.anomaly.context_bins],
            "learners": [learner.model_dump(mode="json") for learner in self.learners],
        }

    def state_fingerprint(self) -> str:
        """A digest of :meth:`state_layout`; a snapshot of another layout is refused on restore."""
        layout = self.state_layout()
        return hashlib.sha256(orjson.dumps(layout, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
