"""Online learners of a twin type in the dataflow spec: which river model, on which features.

A learner is one river model per (twin, channel) cell (``scope: twin``) or one per channel
shared by every twin of the type (``scope: twin_type``). Per-twin models are many, and their
state is checkpointed with the twin, so their defaults are deliberately small (a river
``HalfSpaceTrees`` at its own defaults is about 170 kB pickled; here 4 trees of height 4, about
4.8 kB). Larger models belong to ``scope: twin_type``.

| kind | role | river class | default features |
|---|---|---|---|
| ``half_space_trees`` | anomaly score in [0, 1] | ``anomaly.HalfSpaceTrees`` | value, innovation, delta |
| ``gaussian_score`` | anomaly score in [0, 1] | ``anomaly.GaussianScorer`` | innovation |
| ``adwin`` | drift (1.0 / 0.0) | ``drift.ADWIN`` | innovation |
| ``page_hinkley`` | drift (1.0 / 0.0) | ``drift.PageHinkley`` | innovation |
| ``holt_winters`` | forecast | ``time_series.HoltWinters`` | value |
| ``snarimax`` | forecast | ``time_series.SNARIMAX`` | value |

``params`` go to the river constructor on top of the defaults in :data:`LEARNER_KINDS`; an
unknown name is refused with the allowed ones. The river module is imported only when a
spec with ``params`` is validated, so loading a spec without learners stays fast.

>>> spec = LearnerSpec(name="hst", kind="half_space_trees")
>>> spec.role, spec.features, spec.model_params()["n_trees"]
('anomaly', ['value', 'innovation', 'delta'], 4)
>>> spec.check_channels(["temp"]) is None
True
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, model_validator

from dte_stream.spec.base import Identifier, SpecModel

__all__ = [
    "FEATURE_NAMES",
    "LEARNER_KINDS",
    "FeatureName",
    "KindInfo",
    "LearnerKind",
    "LearnerRole",
    "LearnerSpec",
]

LearnerKind = Literal[
    "half_space_trees", "gaussian_score", "adwin", "page_hinkley", "holt_winters", "snarimax"
]
LearnerRole = Literal["anomaly", "drift", "forecast"]
FeatureName = Literal["value", "innovation", "nis", "estimate", "delta", "dt"]

#: Every feature a learner may read. The caller of the learner bank supplies them per reading:
#: ``value`` (the reading), ``innovation`` and ``nis`` (from the filter, NaN on a twin's first
#: reading), ``estimate`` (the filtered value of the channel), ``delta`` (value minus the
#: previous value of the cell), ``dt`` (seconds since the previous reading of the cell).
FEATURE_NAMES: tuple[str, ...] = ("value", "innovation", "nis", "estimate", "delta", "dt")


@dataclass(frozen=True)
class KindInfo:
    """What a learner kind is: its river class, role, defaults and the parameters it takes."""

    river_class: str  # "module:Class"
    role: LearnerRole
    default_features: tuple[str, ...]
    default_params: dict[str, float | int | bool | str] = field(default_factory=dict)
    #: Constructor parameters that are not scalars and cannot come from a spec.
    excluded_params: tuple[str, ...] = ()
    multivariate: bool = False

    def river_type(self) -> type[Any]:
        """Import and return the river class."""
        module, name = self.river_class.split(":")
        cls: type[Any] = getattr(importlib.import_module(module), name)
        return cls

    def allowed_params(self) -> list[str]:
        """Constructor parameters a spec may set, sorted."""
        signature = inspect.signature(self.river_type().__init__)
        names = [p for p in signature.parameters if p != "self" and p not in self.excluded_params]
        return sorted(names)


#: The learner kinds. Defaults are sized for one model per twin and channel.
LEARNER_KINDS: dict[str, KindInfo] = {
    "half_space_trees": KindInfo(
        "river.anomaly:HalfSpaceTrees",
        "anomaly",
        ("value", "innovation", "delta"),
        {"n_trees": 4, "height": 4, "window_size": 150, "seed": 42},
        excluded_params=("limits",),
        multivariate=True,
    ),
    "gaussian_score": KindInfo(
        "river.anomaly:GaussianScorer", "anomaly", ("innovation",), {"grace_period": 30}
    ),
    "adwin": KindInfo("river.drift:ADWIN", "drift", ("innovation",), {"delta": 0.002}),
    "page_hinkley": KindInfo(
        "river.drift:PageHinkley", "drift", ("innovation",), {"threshold": 50.0, "delta": 0.1}
    ),
    "holt_winters": KindInfo(
        "river.time_series:HoltWinters", "forecast", ("value",), {"alpha": 0.5, "beta": 0.2}
    ),
    "snarimax": KindInfo(
        "river.time_series:SNARIMAX",
        "forecast",
        ("value",),
        {"p": 2, "d": 1, "q": 0},
        excluded_params=("regressor",),
    ),
}


def _fill_default_features(data: Any) -> Any:
    if isinstance(data, dict) and data.get("features") is None:
        info = LEARNER_KINDS.get(str(data.get("kind")))
        data = {**data, "features": list(info.default_features) if info else ["value"]}
    return data


class LearnerSpec(SpecModel):
    """One online learner of a twin type.

    ``features`` defaults per kind (drift detectors: ``innovation``; ``half_space_trees``:
    ``value``, ``innovation``, ``delta``; forecasters: ``value``). Only ``half_space_trees``
    takes several features; the others are univariate. ``horizon`` (forecasters only) is how
    many readings ahead the forecast made *before* learning a reading looks: 1 forecasts the
    reading itself.

    >>> LearnerSpec(name="level", kind="page_hinkley", params={"threshold": 10.0}).model_params()
    {'threshold': 10.0, 'delta': 0.1}
    >>> LearnerSpec(name="f", kind="holt_winters", horizon=5).role
    'forecast'
    """

    name: Identifier
    kind: LearnerKind
    scope: Literal["twin", "twin_type"] = "twin"
    channels: list[str] | None = Field(default=None, min_length=1)
    features: list[FeatureName] = Field(min_length=1)
    params: dict[str, float | int | bool | str] = Field(default_factory=dict)
    horizon: int = Field(default=1, ge=1, le=10_000)

    @model_validator(mode="before")
    @classmethod
    def _default_features(cls, data: Any) -> Any:
        return _fill_default_features(data)

    @model_validator(mode="after")
    def _check(self) -> LearnerSpec:
        info = LEARNER_KINDS[self.kind]
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"learner {self.name!r}: features repeat a name: {self.features}")
        if not info.multivariate and len(self.features) != 1:
            raise ValueError(
                f"learner {self.name!r}: kind {self.kind!r} takes exactly one feature, got {self.features}"
            )
        if self.channels is not None and len(set(self.channels)) != len(self.channels):
            raise ValueError(f"learner {self.name!r}: channels repeat a name: {self.channels}")
        if self.horizon != 1 and info.role != "forecast":
            raise ValueError(f"learner {self.name!r}: horizon applies to forecasters only, not {self.kind!r}")
        if self.params:
            allowed = info.allowed_params()
            unknown = [p for p in self.params if p not in allowed]
            if unknown:
                raise ValueError(
                    f"learner {self.name!r}: unknown parameter {unknown[0]!r} for {self.kind} "
                    f"({info.river_class.replace(':', '.')}); allowed: {', '.join(allowed)}"
                )
            try:
                info.river_type()(**self.model_params())
            except (TypeError, ValueError) as exc:
                raise ValueError(f"learner {self.name!r}: invalid params for {self.kind}: {exc}") from None
        return self

    @property
    def role(self) -> LearnerRole:
        """``anomaly``, ``drift`` or ``forecast``."""
        return LEARNER_KINDS[self.kind].role

    def model_params(self) -> dict[str, float | int | bool | str]:
        """The river constructor's keyword arguments: the kind's defaults overridden by ``params``."""
        return {**LEARNER_KINDS[self.kind].default_params, **self.params}

    def check_channels(self, known: list[str]) -> str | None:
        """A problem text if ``channels`` names a channel not in ``known``, else None."""
        if self.channels is None:
            return None
        unknown = [c for c in self.channels if c not in known]
        if not unknown:
            return None
        names = ", ".join(repr(c) for c in unknown)
        return f"learner {self.name!r}: unknown channel {names}; the twin type has: {', '.join(known)}"
