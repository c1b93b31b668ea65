"""Spec models of alert rules: when a twin raises an alert, and how its notifications are paced.

A twin type lists its rules in an :class:`AlertingSpec`; each rule is one :data:`AlertRuleSpec`,
chosen by ``kind``:

* ``threshold``: the reading (or the estimate) above / below a level, with a separate
  ``clear`` level (hysteresis);
* ``rate_of_change``: the estimate changing faster than a magnitude per second;
* ``anomaly_score``: the anomaly score at or over a level;
* ``nis``: the filter's NIS at or over a level for ``readings`` consecutive readings;
* ``stale``: a sensor went stale (the timer rows flagged ``stale``);
* ``silent_twin``: no reading of any channel of a twin for ``after`` seconds (deadman);
* ``quality``: a reading carries any of the listed flags;
* ``expression``: a safe expression over the twin's latest channel values, e.g.
  ``temperature.estimate > 90 and flow.value < 10``.

Every rule has a ``name`` (the alert's ``rule``), a ``severity``, ``labels``, ``holds_for``
(the condition must hold this long before the alert fires), a ``message`` template and,
where it applies, the ``channels`` it watches (unset: every channel of the twin type).

>>> spec = AlertingSpec.model_validate({"rules": [
...     {"kind": "threshold", "name": "overheat", "channels": ["temperature"], "above": 95,
...      "clear": 90, "severity": "critical", "holds_for": "30s"},
...     {"kind": "expression", "name": "dry_run", "expression": "pump.value > 0 and flow.value < 1"},
... ]})
>>> [(r.kind, r.name, r.holds_for) for r in spec.rules]
[('threshold', 'overheat', 30.0), ('expression', 'dry_run', 0.0)]
>>> spec.check_rules(["temperature", "pump"])
["rule 'dry_run': unknown channel 'flow' (channels: temperature, pump)"]
"""

from __future__ import annotations

import math
import re
from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from dte_stream.spec.alert_text import (
    EXPRESSION_ATTRIBUTES,
    MESSAGE_FIELDS,
    check_message,
    expression_channels,
    parse_expression,
)
from dte_stream.spec.base import Identifier, PositiveSeconds, Seconds, SpecModel
from dte_stream.twins.flags import FLAG_BITS

__all__ = [
    "EXPRESSION_ATTRIBUTES",
    "MESSAGE_FIELDS",
    "AlertRuleSpec",
    "AlertingSpec",
    "AnomalyScoreRuleSpec",
    "ExpressionRuleSpec",
    "FlappingSpec",
    "NisRuleSpec",
    "QualityRuleSpec",
    "RateOfChangeRuleSpec",
    "SilentTwinRuleSpec",
    "StaleRuleSpec",
    "ThresholdRuleSpec",
    "expression_channels",
    "parse_expression",
]

_LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
Severity = Literal["info", "warning", "critical"]


class _RuleBase(SpecModel):
    """What every rule has."""

    #: The message used when ``message`` is not given (may depend on the rule's fields).
    DEFAULT_MESSAGE: ClassVar[str] = "{rule} on {twin_id}"

    name: Identifier
    severity: Severity = "warning"
    labels: dict[str, str] = Field(default_factory=dict, description="added to every event of the rule")
    holds_for: Seconds = Field(0.0, description="the condition must hold this long before the alert fires")
    message: str | None = Field(
        None, description="template: " + ", ".join("{" + f + "}" for f in MESSAGE_FIELDS)
    )
    channels: list[str] | None = Field(None, min_length=1, description="channels watched; unset = all")

    @field_validator("message")
    @classmethod
    def _check_message(cls, value: str | None) -> str | None:
        return None if value is None else check_message(value)

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _LABEL_NAME.match(key):
                raise ValueError(f"label name {key[:60]!r}: use [A-Za-z_][A-Za-z0-9_]*")
        return value

    @field_validator("channels")
    @classmethod
    def _unique_channels(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"channels must be unique, got {value}")
        return value

    def template(self) -> str:
        """The message template: ``message`` or the kind's default."""
        return self.message if self.message is not None else self.DEFAULT_MESSAGE

    def level(self) -> float:
        """The level shown as ``{level}`` in messages (NaN when the kind has none)."""
        return math.nan

    def watched_channels(self) -> list[str] | None:
        """The channel names the rule reads (None: every channel)."""
        return self.channels


class ThresholdRuleSpec(_RuleBase):
    """The reading (``signal: value``) or the estimate over ``above`` or under ``below``.

    The alert resolves when the signal is back at or past ``clear`` (default: the trigger
    level itself, no hysteresis); between the two levels the alert keeps its state, so a noisy
    signal hovering around the trigger level fires once. (The field is ``signal``, not ``on``:
    YAML 1.1 reads a bare ``on`` key as ``true``.)
    """

    kind: Literal["threshold"]
    signal: Literal["value", "estimate"] = "value"
    above: float | None = None
    below: float | None = None
    clear: float | None = Field(None, description="level at which the alert resolves (hysteresis)")

    @model_validator(mode="after")
    def _check_levels(self) -> ThresholdRuleSpec:
        if (self.above is None) == (self.below is None):
            raise ValueError("threshold: give exactly one of above or below")
        for name in ("above", "below", "clear"):
            level = getattr(self, name)
            if level is not None and not math.isfinite(level):
                raise ValueError(f"threshold: {name} must be a finite number")
        if self.clear is not None:
            if self.above is not None and self.clear > self.above:
                raise ValueError(
                    f"threshold: clear ({self.clear:g}) must be at or below above ({self.above:g})"
                )
            if self.below is not None and self.clear < self.below:
                raise ValueError(
                    f"threshold: clear ({self.clear:g}) must be at or above below ({self.below:g})"
                )
        return self

    def level(self) -> float:
        level = self.above if self.above is not None else self.below
        return math.nan if level is None else float(level)

    def clear_level(self) -> float:
        """The level at which the alert resolves."""
        return self.clear if self.clear is not None else self.level()

    def template(self) -> str:
        if self.message is not None:
            return self.message
        side = "above" if self.above is not None else "below"
        what = "" if self.signal == "value" else " estimate"
        return f"{{channel}}{what} {{value:.4g}} {side} {{level:.4g}}"


class RateOfChangeRuleSpec(_RuleBase):
    """The estimate changing faster than ``above`` units per second between two readings.

    ``direction`` picks rises (``up``), falls (``down``) or both; the alert resolves when the
    rate's magnitude is at or under ``clear`` (default ``above``).
    """

    DEFAULT_MESSAGE: ClassVar[str] = "{channel} changing at {value:.4g}/s (limit {level:.4g}/s)"

    kind: Literal["rate_of_change"]
    above: float = Field(gt=0, description="magnitude per second")
    clear: float | None = Field(None, ge=0)
    direction: Literal["up", "down", "both"] = "both"

    @model_validator(mode="after")
    def _check_levels(self) -> RateOfChangeRuleSpec:
        if not math.isfinite(self.above):
            raise ValueError("rate_of_change: above must be a finite number")
        if self.clear is not None and self.clear > self.above:
            raise ValueError(
                f"rate_of_change: clear ({self.clear:g}) must be at or below above ({self.above:g})"
            )
        return self

    def level(self) -> float:
        return self.above

    def clear_level(self) -> float:
        """The magnitude at which the alert resolves."""
        return self.clear if self.clear is not None else self.above


class AnomalyScoreRuleSpec(_RuleBase):
    """The anomaly score (0..1) at or over ``level``; resolves under ``clear`` (default ``level``)."""

    DEFAULT_MESSAGE: ClassVar[str] = "{channel} anomalous (score {value:.2f} >= {level:.2f})"

    kind: Literal["anomaly_score"]
    level_: float = Field(alias="level", ge=0, le=1)
    clear: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _check_levels(self) -> AnomalyScoreRuleSpec:
        if self.clear is not None and self.clear > self.level_:
            raise ValueError(
                f"anomaly_score: clear ({self.clear:g}) must be at or below level ({self.level_:g})"
            )
        return self

    def level(self) -> float:
        return self.level_

    def clear_level(self) -> float:
        """The score under which the alert resolves."""
        return self.clear if self.clear is not None else self.level_


class NisRuleSpec(_RuleBase):
    """The NIS at or over ``level`` for ``readings`` consecutive readings of a channel.

    It resolves after as many consecutive readings under ``level``.
    """

    DEFAULT_MESSAGE: ClassVar[str] = "{channel} surprising the model (NIS {value:.3g} >= {level:.3g})"

    kind: Literal["nis"]
    level_: float = Field(alias="level", gt=0)
    readings: int = Field(3, ge=1, le=1_000_000)

    def level(self) -> float:
        return self.level_


class StaleRuleSpec(_RuleBase):
    """A sensor went stale (a timer row flagged ``stale``); resolves at its next reading."""

    DEFAULT_MESSAGE: ClassVar[str] = "{channel} is stale"

    kind: Literal["stale"]


class SilentTwinRuleSpec(_RuleBase):
    """Deadman: no reading of any watched channel of a twin for ``after`` seconds.

    Found by the engine's timer (``AlertEngine.due``); resolves at the twin's next reading.
    Only twins that sent at least one reading are watched.
    """

    DEFAULT_MESSAGE: ClassVar[str] = "{twin_id} silent for {value:.0f} s"

    kind: Literal["silent_twin"]
    after: PositiveSeconds

    def level(self) -> float:
        return self.after


class QualityRuleSpec(_RuleBase):
    """A reading carries any of ``flags``; resolves at a reading of the channel without them."""

    DEFAULT_MESSAGE: ClassVar[str] = "{channel} data quality"

    kind: Literal["quality"]
    flags: list[str] = Field(min_length=1, description="flag names, e.g. stuck, spike, out_of_range")

    @field_validator("flags")
    @classmethod
    def _check_flags(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in FLAG_BITS:
                raise ValueError(f"unknown flag {name[:40]!r}; allowed: {', '.join(FLAG_BITS)}")
        return value

    def flag_mask(self) -> int:
        """The flags' bits."""
        mask = 0
        for name in self.flags:
            mask |= FLAG_BITS[name]
        return mask


class ExpressionRuleSpec(_RuleBase):
    """A condition over the twin's latest value of each channel, evaluated at every reading.

    ``channel.value`` (or just ``channel``), ``.estimate``, ``.std``, ``.anomaly_score``,
    numbers, comparisons, ``and``/``or``/``not``, ``+ - * /`` and ``abs()``; nothing else
    (see :func:`parse_expression`). Until every channel it names has had a reading, the
    expression is not evaluated; it resolves when it is false.
    """

    kind: Literal["expression"]
    expression: str

    @field_validator("expression")
    @classmethod
    def _check_expression(cls, value: str) -> str:
        parse_expression(value)
        return value.strip()

    @model_validator(mode="after")
    def _no_channels(self) -> ExpressionRuleSpec:
        if self.channels is not None:
            raise ValueError("expression: channels are taken from the expression; leave channels out")
        return self

    def template(self) -> str:
        if self.message is not None:
            return self.message
        return "{rule}: " + self.expression.replace("{", "{{").replace("}", "}}")

    def watched_channels(self) -> list[str]:
        return sorted(expression_channels(parse_expression(self.expression)))


AlertRuleSpec = Annotated[
    ThresholdRuleSpec
    | RateOfChangeRuleSpec
    | AnomalyScoreRuleSpec
    | NisRuleSpec
    | StaleRuleSpec
    | SilentTwinRuleSpec
    | QualityRuleSpec
    | ExpressionRuleSpec,
    Field(discriminator="kind"),
]


class FlappingSpec(SpecModel):
    """An alert that changed state more than ``max_changes`` times within ``window`` is flapping.

    Its notifications stop until it has been stable (no change) for a whole ``window``; then
    its current state is notified once if it differs from the last one notified.
    """

    window: PositiveSeconds = 600.0
    max_changes: int = Field(4, ge=1)


class AlertingSpec(SpecModel):
    """A twin type's alert rules and how notifications are paced."""

    rules: list[AlertRuleSpec] = Field(default_factory=list)
    renotify_every: PositiveSeconds | None = Field(
        14_400.0, description="notify alerts still firing (and not acknowledged) again; unset = never"
    )
    flapping: FlappingSpec = Field(default_factory=FlappingSpec)

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, value: list[AlertRuleSpec]) -> list[AlertRuleSpec]:
        names = [rule.name for rule in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"rule names must be unique: {', '.join(twice)}")
        return value

    def check_rules(self, channels: list[str]) -> list[str]:
        """One problem text per rule naming a channel not in ``channels``."""
        known = set(channels)
        problems = []
        for rule in self.rules:
            for name in rule.watched_channels() or []:
                if name not in known:
                    problems.append(
                        f"rule {rule.name!r}: unknown channel {name!r} (channels: {', '.join(channels)})"
                    )
        return problems
