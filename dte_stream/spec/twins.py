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
from typing import Any, Literal

import orjson
from pydantic import Field, field_validator, model_validator

from dte_stream.readings import id_problem
from dte_stream.spec.alerts import AlertingSpec, NisRuleSpec
from dte_stream.spec.base import Identifier, PositiveSeconds, Seconds, SpecModel
from dte_stream.spec.filter_models import FilterPreset, MatricesSpec, ModelSpec, RandomWalkPreset
from dte_stream.spec.learners import LearnerSpec
from dte_stream.spec.quality import QualitySpec
from dte_stream.twins.anomaly import ANOMALY_LEVEL
from dte_stream.twins.contextual import CONTEXT_AFTER_S, CONTEXT_BINS, CONTEXT_HALFLIFE_S, QUIET_READINGS
from dte_stream.twins.statespace import CHI2_1DOF_999

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
