"""The Bytewax step of one twin shard: Bytewax's stateful-logic calls become :class:`TwinShard` calls.

:func:`dte_stream.dataflow.build_flow` wires one :class:`ShardLogic` per shard key into the
``twin_bank`` step (``stateful_batch``). Everything about twins, alerts and time is in
:class:`~dte_stream.twins.shard.TwinShard`; this adapter adds what only a running dataflow has:
the twin view's publishers, the epoch hook, incremental snapshots and their metrics.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import numpy as np
from bytewax.operators import StatefulBatchLogic

from dte_stream.metrics import METRICS
from dte_stream.times import now_ns
from dte_stream.twins.routing import TypedBatch
from dte_stream.twins.shard import ShardUpdate, TwinShard
from dte_stream.twins.snapshot_log import SnapshotLog
from dte_stream.view.hub import ViewHub
from dte_stream.view.publisher import ViewPublisher

__all__ = ["EpochHook", "ShardLogic"]

#: Called with each shard as it snapshots (once per epoch): the twin state view hooks in here.
EpochHook = Callable[[TwinShard], None]


class ShardLogic(StatefulBatchLogic[TypedBatch, ShardUpdate, dict[str, Any]]):
    """Bytewax keyed state of one shard: each Bytewax call is one :class:`TwinShard` call.

    Besides, it hands every update to the shard's twin view publishers (:mod:`dte_stream.view`,
    one per twin type; they pace their own writes) and forces a write at each epoch's end.
    """

    def __init__(
        self,
        shard: TwinShard,
        view: ViewHub | None,
        on_epoch: EpochHook | None,
        log: SnapshotLog | None = None,
    ) -> None:
        self.shard = shard
        self.log = log  # incremental snapshots (None: full ones)
        self.view = view
        self.publishers: dict[str, ViewPublisher] = {}
        self.on_epoch = on_epoch
        if view is not None:
            me = weakref.ref(self)  # no cycle: the view ends when this is dropped
            shard.on_evicted = lambda twin_type, ids: _evicted(me, twin_type, ids)
            view.attach(self)

    def on_batch(self, values: list[TypedBatch]) -> tuple[Iterable[ShardUpdate], bool]:
        pid = os.getpid()
        remote = sum(len(batch) for batch in values if batch.origin not in (0, pid))
        if remote:  # routed by another process of the cluster: it crossed processes
            METRICS.add("readings_from_other_processes", remote)
        started = time.perf_counter()
        update = self.shard.on_batch(values)
        METRICS.observe("batch_seconds", time.perf_counter() - started)
        return self._published(update), StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[ShardUpdate], bool]:
        return self._published(self.shard.on_timer()), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[ShardUpdate], bool]:
        out = self._published(self.shard.on_eof())
        for twin_type, publisher in self.publishers.items():  # the input ended: the view gets all of it
            publisher.finish(self.shard.banks[twin_type], self.shard.alert_engines.get(twin_type), now_ns())
        if self.view is not None:
            self.view.finished(self)  # the last shard to finish closes the view
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        due = [d for d in (self.shard.next_due(), *(p.due_ns() for p in self.publishers.values())) if d]
        return datetime.fromtimestamp(min(due) / 1e9, tz=UTC) if due else None

    def snapshot(self) -> dict[str, Any]:
        self._published(ShardUpdate(), force=True)
        if self.on_epoch is not None:
            self.on_epoch(self.shard)
        if self.view is not None:
            self.view.follow()  # after a reload: the new twin types for the API
        started = time.perf_counter()
        snap = self.log.snapshot(self.shard) if self.log is not None else self.shard.snapshot()
        METRICS.observe("snapshot_seconds", time.perf_counter() - started)
        size = self.log.last_written if self.log is not None else _nbytes(snap)
        METRICS.set_gauge("snapshot_bytes", self.shard.key, size)
        return snap

    def _published(self, update: ShardUpdate, *, force: bool = False) -> list[ShardUpdate]:
        if self.view is not None:
            for twin_type, bank_update in update.per_type().items():
                if twin_type not in self.publishers:
                    self.publishers[twin_type] = self.view.publisher()
                self.publishers[twin_type].note(bank_update)
            for twin_type, publisher in self.publishers.items():
                bank, engine = self.shard.banks[twin_type], self.shard.alert_engines.get(twin_type)
                publisher.publish(bank, engine, now_ns(), force=force)
        return [update]

    def _evicted(self, twin_type: str, twin_ids: list[str]) -> None:
        publisher = self.publishers.get(twin_type)
        if publisher is not None:
            publisher.evicted(twin_ids)


def _evicted(logic: weakref.ref[ShardLogic], twin_type: str, twin_ids: list[str]) -> None:
    alive = logic()
    if alive is not None:
        alive._evicted(twin_type, twin_ids)


def _nbytes(value: object) -> int:
    """About how many bytes a snapshot holds (arrays and byte strings; other leaves count 8)."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, bytes | str):
        return len(value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_nbytes(v) for v in value)
    return 8
