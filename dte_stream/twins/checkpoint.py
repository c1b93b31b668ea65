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
from dte_stream.twins.idindex import RowIds
from dte_stream.twins.learners import LearnerBank
from dte_stream.twins.quality import QualityBank

if TYPE_CHECKING:
    from dte_stream.twins.bank import TwinBank

__all__ = [
    "SNAPSHOT_FORMAT",
    "SnapshotMismatchError",
    "bank_snapshot",
    "merge_bank_snapshots",
    "restore_bank",
    "retuned_bank",
]

#: Version of the snapshot layout; bumped whenever it changes incompatibly.
SNAPSHOT_FORMAT = 5


class SnapshotMismatchError(ValueError):
    """A snapshot that this twin type cannot load (other layout, other spec)."""


def _is_run(rows: npt.NDArray[np.intp]) -> bool:
    """Whether ``rows`` are ``k, k + 1, ..., k + m`` (then a slice picks them, with no copy)."""
    return rows.shape[0] > 0 and bool(np.all(np.diff(rows) == 1))


def bank_snapshot(
    bank: TwinBank, rows: npt.NDArray[np.intp] | None = None, *, copy: bool = True
) -> dict[str, Any]:
    """Compact, picklable copy of ``bank``'s state: numpy arrays trimmed to the twins present.

    With ``rows``, only those twins' state (in that order): a *part* that
    :func:`merge_bank_snapshots` lays over an earlier snapshot (incremental snapshots,
    :mod:`dte_stream.twins.snapshot_log`); everything that is not per twin is copied whole.
    ``copy=False``: views of the bank's arrays where they can be (all twins, or ``rows`` that are
    one ascending run, as in a part of every twin), for a caller that pickles the snapshot at
    once, before the bank changes: no second copy of the state.
    """
    from dte_stream.twins.bank import CELL_ARRAYS

    n = len(bank)
    pick: slice | npt.NDArray[np.intp] = slice(None) if rows is None else rows
    if rows is not None and not copy and _is_run(rows):
        pick = slice(int(rows[0]), int(rows[0]) + rows.shape[0])
    copy = copy or isinstance(pick, np.ndarray)

    def out(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
        if isinstance(pick, np.ndarray):  # a fancy index: a new array already, no second copy
            return a[pick]
        return a[pick].copy() if copy else a[pick]

    groups: dict[str, dict[str, npt.NDArray[Any]]] = {}
    for group in bank.groups:
        arrays = {name: a[: group.capacity_for(n)] for name, a in group.state.arrays().items()}
        if not group.per_cell:
            groups[f"model:{group.name}"] = {name: out(a) for name, a in arrays.items()}
            continue
        for slot, c in enumerate(group.channels):
            groups[f"channel:{bank.channels[c]}"] = {
                name: out(a[slot :: group.cells]) for name, a in arrays.items()
            }
    cells = {
        name: out(getattr(bank, name)[: n * bank.width].reshape(n, bank.width)).reshape(-1)
        for name in CELL_ARRAYS
    }
    if rows is None:
        ids = bank.twin_ids
        quality = bank.quality.snapshot(n, copy=copy)
    else:
        ids = bank.index.ids[pick].tolist()
        quality = bank.quality.snapshot(0)
        state = bank.quality.state.arrays()
        quality.update({k: state[k][pick] for k, v in quality.items() if isinstance(v, np.ndarray)})
        quality["rows"] = len(ids)
    anomaly = (
        bank.scorer.snapshot(n, None if rows is None else pick, copy=copy)
        if bank.scorer is not None
        else None
    )
    return {
        "format": SNAPSHOT_FORMAT,
        "twin_type": bank.spec.name,
        "version": bank.spec.version,
        "fingerprint": bank.spec.state_fingerprint(),
        "layout": bank.spec.state_layout(),
        "channels": list(bank.channels),
        "twin_ids": ids,
        "last_seen": out(bank.last_seen[:n]),
        **cells,
        "groups": groups,
        "quality": quality,
        "anomaly": anomaly,
        "learners": bank.learners.snapshot() if bank.learners is not None else None,
        "counters": dict(bank.counters),
    }


def merge_bank_snapshots(
    base: dict[str, Any], parts: list[dict[str, Any]], order: list[str]
) -> dict[str, Any]:
    """A bank snapshot of the twins ``order`` (in that order) from ``base`` and later ``parts``.

    Each twin's state comes from the last part that holds it, else from ``base``; what is not
    per twin (counters, layout, learners) from the last part. ``parts`` are
    :func:`bank_snapshot` with ``rows``; twins of ``base`` missing from ``order`` were evicted.
    Raises :class:`SnapshotMismatchError` when a twin of ``order`` is in none of them.
    """
    from dte_stream.twins.bank import CELL_ARRAYS
    from dte_stream.twins.contextual import upgrade_snapshot

    sources = [base, *parts]
    where: dict[str, tuple[int, int]] = {}
    for s, snap in enumerate(sources):
        for i, twin in enumerate(snap["twin_ids"]):
            where[twin] = (s, i)
    try:
        found = [where[twin] for twin in order]
    except KeyError as exc:
        raise SnapshotMismatchError(
            f"twin {exc.args[0]!r} is in no part of the incremental snapshot"
        ) from None
    src = np.array([f[0] for f in found], dtype=np.intp).reshape(-1)
    idx = np.array([f[1] for f in found], dtype=np.intp).reshape(-1)

    def gather(arrays: list[npt.NDArray[Any]]) -> npt.NDArray[Any]:
        out = np.empty((len(order), *arrays[0].shape[1:]), dtype=arrays[0].dtype)
        for s, a in enumerate(arrays):
            mine = src == s
            if mine.any():
                out[mine] = a[idx[mine]]
        return out

    last = sources[-1]
    width = len(last["channels"])
    merged: dict[str, Any] = {**last, "twin_ids": list(order)}
    merged["last_seen"] = gather([s["last_seen"] for s in sources])
    for name in CELL_ARRAYS:
        merged[name] = gather([s[name].reshape(-1, width) for s in sources]).ravel()
    merged["groups"] = {
        g: {name: gather([s["groups"][g][name] for s in sources]) for name in arrays}
        for g, arrays in last["groups"].items()
    }
    merged["quality"] = {
        k: gather([s["quality"][k] for s in sources]) if isinstance(v, np.ndarray) else v
        for k, v in last["quality"].items()
    }
    merged["quality"]["rows"] = len(order)
    if last["anomaly"] is not None:  # a base from before a scorer layout change: upgraded first
        anomaly = [upgrade_snapshot(s["anomaly"]) for s in sources]
        merged["anomaly"] = {k: gather([a[k] for a in anomaly]) for k in anomaly[-1]}
    return merged


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
    bank.index = RowIds(ids)
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
    n = len(bank)
    new.changed[:n] = bank.changed[:n]
    new.removed = list(bank.removed)
    return new
