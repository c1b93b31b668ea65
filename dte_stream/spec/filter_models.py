"""The state-space models of a twin type in the spec: filter presets, custom matrices, shared models.

A channel's own filter is a preset (:data:`FilterPreset`: ``random_walk`` by default,
``local_linear_trend``, ``thermal``, ``damped_oscillator``, ``daily_seasonal``); a shared model
(:class:`ModelSpec`) is a preset or custom matrices (:class:`MatricesSpec`) that several channels
observe. Each becomes a :class:`~dte_stream.twins.statespace.StateSpaceModel` through its
``build``. The twin type that holds them is :class:`~dte_stream.spec.twins.TwinTypeSpec`.

>>> air = ModelSpec(name="air", preset={"model": "thermal", "tau": "10m"},
...                 observes=["temp_a", "temp_b"], controls=["setpoint"])
>>> model = air.build()
>>> model.n, model.channel_names, model.control_names
(1, ('temp_a', 'temp_b'), ('setpoint',))
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from dte_stream.spec.base import Identifier, PositiveSeconds, SpecModel
from dte_stream.twins.presets import (
    daily_seasonal,
    damped_oscillator,
    local_linear_trend,
    random_walk,
    thermal,
)
from dte_stream.twins.statespace import StateSpaceModel

__all__ = ["FilterPreset", "MatricesSpec", "ModelSpec", "NoiseList", "RandomWalkPreset", "Variance"]

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
