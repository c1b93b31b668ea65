"""Migrations of saved twin state to a new spec (``dte-stream state migrate``).

A shard snapshot (:meth:`~dte_stream.twins.shard.TwinShard.snapshot`) is migrated bank by
bank. What exists:

- the layout is unchanged (settings, alert rules, notifiers changed; a new spec version): the
  snapshot is stamped with the new spec's name, version and layouts;
- a twin type the state has never seen: nothing to migrate, its twins start when they report;
- channels added to a twin type and filtered on their own (no shared model, no learners): every
  twin gets the new channels in their starting state, the old channels keep theirs.

Anything else (channels removed or reordered, a model or the learners changed, a twin type
removed, a type ``version`` bumped) has no migration: :class:`MigrationError` says why.
Every migrated bank is loaded once with :func:`~dte_stream.twins.checkpoint.restore_bank`
before it is returned, so a migration never hands back state that does not load.

>>> import numpy as np
>>> from dte_stream.readings import ReadingBatch
>>> from dte_stream.spec import parse_spec
>>> from dte_stream.twins.routing import Router
>>> from dte_stream.twins.shard import TwinShard
>>> doc = {"name": "x", "sources": [{"kind": "simulator", "twin_type": "pump"}],
...     "twin_types": [{"name": "pump", "channels": {"temp": {}}}], "sinks": [{"kind": "local_store"}]}
>>> spec = parse_spec(doc)
>>> rb = ReadingBatch.from_columns(["p1"], ["temp"], [0], [20.0])
>>> [(key, batch)] = Router(spec).route(rb, source="doc", twin_type="pump").routed
>>> shard = TwinShard(spec, key); _ = shard.on_batch([batch])
>>> doc["twin_types"][0]["channels"]["flow"] = {}
>>> snap, notes = migrate_shard(shard.snapshot(), parse_spec({**doc, "version": 2}))
>>> notes
["twin type 'pump': channels added: flow (every twin starts them afresh)"]
>>> snap["spec"], snap["banks"]["pump"]["channels"]
({'name': 'x', 'version': 2}, ['temp', 'flow'])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from dte_stream.spec.compat import layout_diff
from dte_stream.spec.model import DataflowSpec
from dte_stream.spec.twins import TwinTypeSpec
from dte_stream.twins.bank import CELL_ARRAYS, TwinBank
from dte_stream.twins.checkpoint import SNAPSHOT_FORMAT, SnapshotMismatchError, bank_snapshot, restore_bank
from dte_stream.twins.contextual import upgrade_snapshot
from dte_stream.twins.idindex import RowIds

__all__ = ["MigrationError", "migrate_shard"]


class MigrationError(ValueError):
    """The saved state cannot be migrated to the spec; ``problems`` says why, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def migrate_shard(snap: dict[str, Any], spec: DataflowSpec) -> tuple[dict[str, Any], list[str]]:
    """``snap`` (a shard snapshot) migrated to ``spec``, and one note per change made.

    Raises :class:`MigrationError` with every problem found when any bank has no migration.
    """
    problems: list[str] = []
    notes: list[str] = []
    banks: dict[str, Any] = {}
    for name, saved in snap.get("banks", {}).items():
        try:
            type_spec = spec.twin_type(name)
        except KeyError:
            problems.append(
                f"twin type {name!r}: the state holds {len(saved.get('twin_ids', []))} twins of it and "
                "the spec does not declare it (no migration drops state)"
            )
            continue
        try:
            banks[name], note = _migrate_bank(saved, type_spec)
        except MigrationError as exc:
            problems += exc.problems
            continue
        if note:
            notes.append(note)
    if problems:
        raise MigrationError(problems)
    return {**snap, "spec": {"name": spec.name, "version": spec.version}, "banks": banks}, notes


def _migrate_bank(saved: dict[str, Any], spec: TwinTypeSpec) -> tuple[dict[str, Any], str]:
    name = spec.name
    if saved.get("format") != SNAPSHOT_FORMAT:
        raise MigrationError(
            [
                f"twin type {name!r}: bank snapshot format {saved.get('format')!r}, "
                f"this version reads {SNAPSHOT_FORMAT}"
            ]
        )
    if saved["fingerprint"] == spec.state_fingerprint():
        return {**saved, "version": spec.version, "layout": spec.state_layout()}, ""
    layout = saved.get("layout")
    if layout is None:
        raise MigrationError(
            [f"twin type {name!r}: the state was written before layouts were recorded; no migration"]
        )
    problems = layout_diff(name, layout, spec.state_layout())
    old, new = list(saved["channels"]), spec.channel_names()
    added = [c for c in new if c not in old]
    only_added = len(problems) == 1 and problems[0].startswith(f"twin type {name!r}: channels added:")
    if not only_added:
        raise MigrationError(problems)
    shared = [c for c in added if c not in spec.per_channel()]
    if shared or spec.learners:
        raise MigrationError(
            [
                problems[0]
                + (
                    f"; {', '.join(shared)} belong to a shared model (no migration)"
                    if shared
                    else "; the type has learners, which hold per-channel state (no migration)"
                )
            ]
        )
    migrated = _with_channels(saved, spec)
    try:
        restore_bank(spec, migrated)
    except (SnapshotMismatchError, KeyError, ValueError) as exc:  # never hand back state that does not load
        raise MigrationError([f"twin type {name!r}: the migrated state does not load ({exc})"]) from None
    return migrated, f"twin type {name!r}: channels added: {', '.join(added)} (every twin starts them afresh)"


def _with_channels(saved: dict[str, Any], spec: TwinTypeSpec) -> dict[str, Any]:
    """``saved`` with the spec's new channels in their starting state; old channels keep theirs."""
    ids: list[str] = list(saved["twin_ids"])
    n = len(ids)
    bank = TwinBank(spec, capacity=max(64, n))
    bank.index = RowIds(ids)
    fresh = bank_snapshot(bank)  # every twin, every channel, in its starting state
    cols = np.array([spec.channel_names().index(c) for c in saved["channels"]], dtype=np.intp)
    width_old = len(saved["channels"])
    out = dict(fresh)
    for name in CELL_ARRAYS:
        cells = fresh[name].reshape(n, -1).copy()
        cells[:, cols] = np.asarray(saved[name]).reshape(n, width_old)
        out[name] = cells.ravel()
    out["last_seen"] = np.asarray(saved["last_seen"]).copy()
    out["groups"] = {**fresh["groups"], **saved["groups"]}  # per-channel groups are keyed by channel
    out["quality"] = {**_columns(fresh["quality"], saved["quality"], cols, width_old), "rows": n}
    out["quality"]["channels"] = fresh["quality"]["channels"]
    if fresh["anomaly"] is not None and saved.get("anomaly") is not None:
        out["anomaly"] = _columns(fresh["anomaly"], upgrade_snapshot(saved["anomaly"]), cols, width_old)
    out["counters"] = dict(saved.get("counters", {}))
    return out


def _columns(
    fresh: dict[str, Any], saved: dict[str, Any], cols: npt.NDArray[np.intp], width: int
) -> dict[str, Any]:
    """Per-(twin, channel) arrays of ``fresh`` with the saved channels' columns put back."""
    out = dict(fresh)
    for key, value in saved.items():
        if isinstance(value, np.ndarray) and value.ndim >= 2 and value.shape[1] == width:
            merged = np.array(fresh[key], copy=True)
            merged[:, cols] = value
            out[key] = merged
    return out
