"""Filter groups: how the channels of a twin type map onto state-space kernels.

A *shared* model (``models:`` in the spec) is one group whose rows are twins: every channel it
observes or takes as control input updates the same state vector. The other channels are
filtered on their own; channels whose ``filter`` settings are equal share one *filter* (a model,
named after its preset: ``random_walk``, ``random_walk_2``, ...), and filters whose models
differ only in their noise (``Q`` and ``R``: a random walk per channel with its own process and
measurement noise) share one group whose rows are (twin, channel) *cells*, run by one kernel
with the filters as noise variants. A type with ten random-walk channels costs one kernel call
per round, not ten, whatever their noise settings.

>>> from dte_stream.spec.twins import TwinTypeSpec
>>> spec = TwinTypeSpec(name="pump", channels={"temp": {}, "flow": {"filter": {"process_noise": 0.5}},
...     "vib": {"filter": {"model": "damped_oscillator", "period": 2.0}}})
>>> [(g.name, g.channels, g.per_cell) for g in build_groups(spec, capacity=8)]
[('random_walk', [0, 1], True), ('damped_oscillator', [2], True)]
>>> [build_groups(spec, capacity=8)[0].filter_of(c)[0] for c in (0, 1)]
['random_walk', 'random_walk_2']
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from dte_stream.spec.twins import FilterPreset, TwinTypeSpec
from dte_stream.times import NS_PER_S
from dte_stream.twins.discretise import Discretiser
from dte_stream.twins.kalman import StateSpaceKernel, same_but_noise
from dte_stream.twins.statespace import StateSpaceModel, StateSpaceState

__all__ = ["FilterGroup", "build_groups"]

IntP = npt.NDArray[np.intp]


@dataclass(eq=False)
class FilterGroup:
    """One kernel and its state; ``local[c]`` is type channel ``c``'s index in the kernel, or -1.

    Rows of a per-cell group are ``twin_row * len(channels) + slot[c]``: only the group's own
    channels have state. ``filters`` are the group's filters, ``(name, model, kernel)`` each:
    the group's own alone, or for a per-cell group of channels with different noise settings
    one per setting, the kernel's noise variants; ``variant[c]`` is channel ``c``'s.
    """

    name: str
    model: StateSpaceModel
    kernel: StateSpaceKernel
    state: StateSpaceState
    per_cell: bool
    channels: list[int]
    local: IntP
    width: int  # channels of the twin type
    filters: list[tuple[str, StateSpaceModel, StateSpaceKernel]] = field(default_factory=list)
    variant: IntP = field(default_factory=lambda: np.empty(0, dtype=np.intp))

    def __post_init__(self) -> None:
        self.cells = len(self.channels) if self.per_cell else 1
        self.slot = np.full(self.width, -1, dtype=np.intp)
        self.slot[self.channels] = np.arange(len(self.channels))
        if not self.filters:
            self.filters = [(self.name, self.model, self.kernel)]
        if self.variant.shape != (self.width,):
            self.variant = np.zeros(self.width, dtype=np.intp)

    @property
    def fused(self) -> bool:
        """Whether the kernel runs several filters (noise variants) in one call."""
        return len(self.filters) > 1

    def filter_of(self, channel: int) -> tuple[str, StateSpaceModel, StateSpaceKernel]:
        """The filter of type channel ``channel``: its name, model and own kernel."""
        return self.filters[int(self.variant[channel])]

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


def _kernel(
    spec: TwinTypeSpec, model: StateSpaceModel, variants: list[StateSpaceModel] | None = None
) -> StateSpaceKernel:
    k = spec.kalman
    return StateSpaceKernel(
        model,
        gate=np.inf if k.gate is None else k.gate,
        lateness_ns=round(k.lateness * NS_PER_S),
        reset_after=k.reset_after,
        horizons_s=list(k.horizons),
        adaptive_noise=k.adaptive_noise,
        variants=variants,
    )


def _fusable(model: StateSpaceModel) -> bool:
    """Whether per-channel filters of this model can share a kernel as noise variants."""
    return model.n <= 2 and Discretiser(model).closed_form


def build_groups(spec: TwinTypeSpec, capacity: int, *, fuse: bool = True) -> list[FilterGroup]:
    """The filter groups of a twin type, with state for ``capacity`` twins.

    ``fuse=False``: one group per filter (per distinct ``filter`` setting), as before noise
    variants; the state of each channel is the same either way.
    """
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
    filters: list[tuple[str, StateSpaceModel, list[int]]] = []
    for preset, members in zip(presets, members_of, strict=True):
        used[preset.model] = used.get(preset.model, 0) + 1
        name = preset.model if used[preset.model] == 1 else f"{preset.model}_{used[preset.model]}"
        filters.append((name, preset.build(1, 0), members))
    # Filters that differ only in noise, in the order of their first: one group each.
    fused: list[list[int]] = []
    for i, (_, model, _) in enumerate(filters):
        home = next(
            (f for f in fused if fuse and _fusable(model) and same_but_noise(filters[f[0]][1], model)),
            None,
        )
        if home is None:
            fused.append([i])
        else:
            home.append(i)
    for members_of_group in fused:
        name, model, _ = filters[members_of_group[0]]
        channels = sorted(c for i in members_of_group for c in filters[i][2])
        local = np.full(width, -1, dtype=np.intp)
        local[channels] = 0
        variant = np.zeros(width, dtype=np.intp)
        group_filters = []
        for v, i in enumerate(members_of_group):
            f_name, f_model, f_channels = filters[i]
            variant[f_channels] = v
            group_filters.append((f_name, f_model, _kernel(spec, f_model)))
        variants = [f[1] for f in group_filters] if len(group_filters) > 1 else None
        kernel = group_filters[0][2] if variants is None else _kernel(spec, model, variants)
        state = StateSpaceState.allocate(model, capacity * len(channels))
        groups.append(
            FilterGroup(name, model, kernel, state, True, channels, local, width, group_filters, variant)
        )
    return groups
