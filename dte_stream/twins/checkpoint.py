"""Twin bank snapshots: the bank's state as compact numpy arrays, and the bank rebuilt from them.

A snapshot holds the arrays trimmed to the twins present, keyed so that it survives changes
that keep the layout: filter state by shared model name, and by channel for per-channel filters
(which channels share a group depends on their tuning, which may change across a restart). A
snapshot of another layout (format), another twin type or a spec that changes the models,
channels or learners is refused with :class:`SnapshotMismatchError`.

>>> import numpy as np
>>> from dte_stream.readings import ReadingBatch
>>> from dte_stream.spec.twins import TwinTypeSpec
>>> from dte_stream.twins.bank import TwinBank
>>> from dte_stream.twins.routing import TypedBatch
>>> spec = TwinTypeSpec(name="pump", channels={"temp": {}})
>>> bank = TwinBank(spec)
>>> _ = bank.update(TypedBatch("pump", ReadingBatch.from_columns(["p1"], ["temp"], [0], [20.0]),
...     np.array([0])), now_ns=0)
>>> again = restore_bank(spec, bank_snapshot(bank))
>>> again.twin_ids, round(float(again.last_estimate[0]), 2)
(['p1'], 20.0)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from dte_stream.spec.twins import TwinTypeSpec
from dte_stream.twins.learners import LearnerBank
from dte_stream.twins.quality import QualityBank

if TYPE_CHECKING:
    from dte_stream.twins.bank import TwinBank

__all__ = ["SNAPSHOT_FORMAT", "SnapshotMismatchError", "bank_snapshot", "restore_bank", "retuned_bank"]

#: Version of the snapshot layout; bumped whenever it changes incompatibly.
SNAPSHOT_FORMAT = 5


class SnapshotMismatchError(ValueError):
    """A snapshot that this twin type cannot load (other layout, other spec)."""


def bank_snapshot(bank: TwinBank) -> dict[str, Any]:
    """Compact, picklable copy of ``bank``'s state: numpy arrays trimmed to the twins present."""
    from dte_stream.twins.bank import CELL_ARRAYS

    n = len(bank.twin_ids)
    groups: dict[str, dict[str, npt.NDArray[Any]]] = {}
    for group in bank.groups:
        arrays = {name: a[: group.capacity_for(n)] for name, a in group.state.arrays().items()}
        if not group.per_cell:
            groups[f"model:{group.name}"] = {name: a.copy() for name, a in arrays.items()}
            continue
        for slot, c in enumerate(group.channels):
            groups[f"channel:{bank.channels[c]}"] = {
                name: a[slot :: group.cells].copy() for name, a in arrays.items()
            }
    cells = {name: getattr(bank, name)[: n * bank.width].copy() for name in CELL_ARRAYS}
    return {
        "format": SNAPSHOT_FORMAT,
        "twin_type": bank.spec.name,
        "version": bank.spec.version,
        "fingerprint": bank.spec.state_fingerprint(),
        "layout": bank.spec.state_layout(),
        "channels": list(bank.channels),
        "twin_ids": list(bank.twin_ids),
        "last_seen": bank.last_seen[:n].copy(),
        **cells,
        "groups": groups,
        "quality": bank.quality.snapshot(n),
        "anomaly": bank.scorer.snapshot(n) if bank.scorer is not None else None,
        "learners": bank.learners.snapshot() if bank.learners is not None else None,
        "counters": dict(bank.counters),
    }


def restore_bank(spec: TwinTypeSpec, snap: dict[str, Any]) -> TwinBank:
    """Rebuild a bank from :func:`bank_snapshot`; refuses a snapshot of another layout or spec."""
    from dte_stream.twins.bank import CELL_ARRAYS, TwinBank

    if snap.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotMismatchError(
            f"twin bank snapshot format {snap.get('format')!r}, this version reads {SNAPSHOT_FORMAT}"
        )
    if snap["twin_type"] != spec.name:
        raise SnapshotMismatchError(f"snapshot is of twin type {snap['twin_type']!r}, not {spec.name!r}")
    if snap["fingerprint"] != spec.state_fingerprint():
        raise SnapshotMismatchError(
            f"twin type {spec.name!r}: the saved state was built from another spec (version "
            f"{snap['version']}, channels {snap['channels']}); this spec (version {spec.version}, "
            f"channels {spec.channel_names()}) changes the models, channels or learners"
        )
    ids: list[str] = snap["twin_ids"]
    n = len(ids)
    bank = TwinBank(spec, capacity=max(64, n))
    for group in bank.groups:
        if not group.per_cell:
            saved = snap["groups"][f"model:{group.name}"]
            for name, array in group.state.arrays().items():
                array[: saved[name].shape[0]] = saved[name]
            continue
        for slot, c in enumerate(group.channels):
            saved = snap["groups"][f"channel:{bank.channels[c]}"]
            for name, array in group.state.arrays().items():
                array[slot : n * group.cells : group.cells] = saved[name]
    bank.quality = QualityBank.restore([spec.channels[c].quality for c in bank.channels], snap["quality"])
    bank.quality.grow(bank.capacity)
    if bank.scorer is not None:
        bank.scorer.restore(snap["anomaly"])
        bank.scorer.grow(bank.capacity)
    if bank.learners is not None:
        bank.learners = LearnerBank.restore(list(spec.learners), bank.channels, snap["learners"])
    bank.last_seen[:n] = snap["last_seen"]
    for name in CELL_ARRAYS:
        getattr(bank, name)[: n * bank.width] = snap[name]
    bank.twin_ids = list(ids)
    if ids:
        bank._index.add(np.asarray(ids, dtype=np.str_), np.arange(n, dtype=np.intp))
    bank.counters.update(snap.get("counters", {}))
    return bank


def retuned_bank(bank: TwinBank, spec: TwinTypeSpec) -> TwinBank:
    """``bank`` under new settings of its twin type (a live reload): the twins carry on unchanged.

    The bank goes through a snapshot and a restore, the path a restart takes, so a reload
    accepts exactly what a restart accepts; the twins changed since the view last looked stay
    marked. Raises :class:`SnapshotMismatchError` when ``spec`` changes the layout.
    """
    if spec == bank.spec:
        return bank
    if spec.model_dump(exclude={"alerts"}) == bank.spec.model_dump(exclude={"alerts"}):
        bank.spec = spec  # only the alert rules changed: nothing in the bank uses them
        return bank
    new = restore_bank(spec, bank_snapshot(bank))
    n = len(bank.twin_ids)
    new.changed[:n] = bank.changed[:n]
    new.removed = list(bank.removed)
    return new
