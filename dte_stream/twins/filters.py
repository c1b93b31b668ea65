"""Filter groups: how the channels of a twin type map onto state-space kernels.

A *shared* model (``models:`` in the spec) is one group whose rows are twins: every channel it
observes or takes as control input updates the same state vector. The other channels are
filtered on their own; channels whose ``filter`` settings are equal share one group whose rows
are (twin, channel) *cells*, so a type with ten identical channels costs one kernel call per
round, not ten.

>>> from dte_stream.spec.twins import TwinTypeSpec
>>> spec = TwinTypeSpec(name="pump", channels={"temp": {}, "flow": {},
...     "vib": {"filter": {"model": "damped_oscillator", "period": 2.0}}})
>>> [(g.name, g.channels, g.per_cell) for g in build_groups(spec, capacity=8)]
[('random_walk', [0, 1], True), ('damped_oscillator', [2], True)]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dte_stream.spec.twins import FilterPreset, TwinTypeSpec
from dte_stream.times import NS_PER_S
from dte_stream.twins.kalman import StateSpaceKernel
from dte_stream.twins.statespace import StateSpaceModel, StateSpaceState

__all__ = ["FilterGroup", "build_groups"]

IntP = npt.NDArray[np.intp]


@dataclass(eq=False)
class FilterGroup:
    """One kernel and its state; ``local[c]`` is type channel ``c``'s index in the kernel, or -1.

    Rows of a per-cell group are ``twin_row * len(channels) + slot[c]``: only the group's own
    channels have state.
    """

    name: str
    model: StateSpaceModel
    kernel: StateSpaceKernel
    state: StateSpaceState
    per_cell: bool
    channels: list[int]
    local: IntP
    width: int  # channels of the twin type

    def __post_init__(self) -> None:
        self.cells = len(self.channels) if self.per_cell else 1
        self.slot = np.full(self.width, -1, dtype=np.intp)
        self.slot[self.channels] = np.arange(len(self.channels))

    def state_rows(self, twin_rows: IntP, channel: IntP) -> IntP:
        """Rows of the kernel state for readings of these twin rows and channels."""
        return twin_rows * self.cells + self.slot[channel] if self.per_cell else twin_rows

    def capacity_for(self, twins: int) -> int:
        return twins * self.cells

    def ensure(self, twins: int) -> None:
        """Grow the state to hold ``twins`` twins (exactly: the bank chooses its spare rows)."""
        need = self.capacity_for(twins)
        if need > self.state.capacity:
            self.state = self.state.grow(self.model, need)

    def keep(self, twin_rows: IntP, capacity: int) -> None:
        """Keep only these twin rows, in this order (eviction), with room for ``capacity`` twins."""
        index = twin_rows
        if self.per_cell:
            index = (twin_rows[:, None] * self.cells + np.arange(self.cells)).ravel()
        self.state = self.state.take(index).grow(self.model, max(1, self.capacity_for(capacity)))

    def state_columns(self) -> list[str]:
        """Output columns of every state and its std; none for one-state models."""
        if self.model.n == 1:
            return []
        prefix = "" if self.per_cell else f"{self.name}_"
        cols = []
        for state in self.model.state_names:
            cols += [f"{prefix}{state}", f"{prefix}{state}_std"]
        return cols


def _kernel(spec: TwinTypeSpec, model: StateSpaceModel) -> StateSpaceKernel:
    k = spec.kalman
    return StateSpaceKernel(
        model,
        gate=np.inf if k.gate is None else k.gate,
        lateness_ns=round(k.lateness * NS_PER_S),
        reset_after=k.reset_after,
        horizons_s=list(k.horizons),
        adaptive_noise=k.adaptive_noise,
    )


def build_groups(spec: TwinTypeSpec, capacity: int) -> list[FilterGroup]:
    """The filter groups of a twin type, with state for ``capacity`` twins."""
    names = spec.channel_names()
    width = len(names)
    groups: list[FilterGroup] = []
    for shared in spec.models:
        model = shared.build()
        local = np.full(width, -1, dtype=np.intp)
        member_names = [*shared.observes, *shared.controls]
        for i, channel in enumerate(member_names):
            local[names.index(channel)] = i
        state = StateSpaceState.allocate(model, capacity)
        channels = sorted(names.index(c) for c in member_names)
        groups.append(
            FilterGroup(shared.name, model, _kernel(spec, model), state, False, channels, local, width)
        )
    presets: list[FilterPreset] = []
    members_of: list[list[int]] = []
    for channel in spec.per_channel():
        preset = spec.channels[channel].filter
        if preset in presets:
            members_of[presets.index(preset)].append(names.index(channel))
        else:
            presets.append(preset)
            members_of.append([names.index(channel)])
    used: dict[str, int] = {}
    for preset, members in zip(presets, members_of, strict=True):
        model = preset.build(1, 0)
        used[preset.model] = used.get(preset.model, 0) + 1
        name = preset.model if used[preset.model] == 1 else f"{preset.model}_{used[preset.model]}"
        local = np.full(width, -1, dtype=np.intp)
        local[members] = 0
        state = StateSpaceState.allocate(model, capacity * len(members))
        groups.append(FilterGroup(name, model, _kernel(spec, model), state, True, members, local, width))
    return groups
