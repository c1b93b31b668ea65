"""The twin bank: the state of every twin of one type in one shard, as struct-of-arrays.

A micro-batch of readings is applied with one vectorised kernel step per *round*: readings
are ordered by (twin, channel, event time) and round k holds the k-th reading of every
(twin, channel) cell in the batch, so the readings of one cell are applied in time order and
no round touches a cell twice. A batch in which each cell appears once is a single round.
Unknown twins get a row when first seen. The bank imports no Bytewax: the wiring snapshots
it with :meth:`TwinBank.snapshot` and rebuilds it with :meth:`TwinBank.restore`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from dte_stream.spec.model import TwinTypeSpec
from dte_stream.twins.batches import EstimateBatch, TypedBatch
from dte_stream.twins.idindex import IdIndex
from dte_stream.twins.kalman import RandomWalkKernel, RandomWalkState

__all__ = ["SNAPSHOT_FORMAT", "TwinBank"]

#: Version of the snapshot layout; bumped whenever it changes incompatibly.
SNAPSHOT_FORMAT = 1

IntP = npt.NDArray[np.intp]


def rounds_of(cells: IntP, time_ns: npt.NDArray[np.int64]) -> list[IntP]:
    """Split reading positions into rounds: each round has every cell at most once, in time order.

    >>> [r.tolist() for r in rounds_of(np.array([3, 1, 3, 3]), np.array([20, 5, 10, 30]))]
    [[1, 2], [0], [3]]
    """
    n = cells.shape[0]
    if n == 0:
        return []
    order = np.lexsort((time_ns, cells))
    sorted_cells = cells[order]
    starts = np.empty(n, dtype=bool)
    starts[0] = True
    np.not_equal(sorted_cells[1:], sorted_cells[:-1], out=starts[1:])
    if starts.all():
        return [order]
    group = np.cumsum(starts) - 1
    rank = np.arange(n) - np.flatnonzero(starts)[group]
    by_rank = order[np.argsort(rank, kind="stable")]
    counts = np.bincount(rank)
    return np.split(by_rank, np.cumsum(counts)[:-1])


class TwinBank:
    """Every twin of one twin type in one shard.

    >>> from dte_stream.readings import ReadingBatch
    >>> spec = TwinTypeSpec(name="pump", channels={"temp": {}})
    >>> bank = TwinBank(spec)
    >>> rb = ReadingBatch.from_columns(["p1", "p1"], ["temp", "temp"], [0, 10**9], [20.0, 22.0])
    >>> out = bank.update(TypedBatch("pump", rb, np.array([0, 0])))
    >>> len(bank), round(float(out.estimate[1]), 3)
    (1, 21.005)
    """

    def __init__(self, spec: TwinTypeSpec, capacity: int = 64) -> None:
        self.spec = spec
        self.channels = spec.channel_names()
        self.units = np.array([spec.channels[c].unit for c in self.channels], dtype=np.str_)
        self.kernel = RandomWalkKernel(
            [spec.channels[c].filter.process_noise for c in self.channels],
            [spec.channels[c].filter.measurement_noise for c in self.channels],
        )
        self.state = RandomWalkState.allocate(capacity, len(self.channels))
        self.twin_ids: list[str] = []
        self.row_of: dict[str, int] = {}
        self._index = IdIndex()
        self.late_readings = 0

    def __len__(self) -> int:
        return len(self.twin_ids)

    def rows_for(self, twin_id: npt.NDArray[np.str_]) -> IntP:
        """Row of each twin id, adding unseen twins (vectorised; see :class:`IdIndex`)."""
        rows, known = self._index.lookup(twin_id)
        if not known.all():
            missing = ~known
            new_ids = np.unique(twin_id[missing])
            first = len(self.twin_ids)
            new_rows = np.arange(first, first + new_ids.shape[0], dtype=np.intp)
            for row, tid in zip(new_rows.tolist(), new_ids.tolist(), strict=True):
                self.row_of[tid] = row
                self.twin_ids.append(tid)
            rows[missing] = new_rows[np.searchsorted(new_ids, twin_id[missing])]
            self._index.add(new_ids, new_rows)
            if len(self.twin_ids) > self.state.x.shape[0]:
                self.state = self.state.grow(max(len(self.twin_ids), 2 * self.state.x.shape[0]))
        return rows

    def update(self, batch: TypedBatch) -> EstimateBatch:
        """Apply a micro-batch and return one estimate row per reading, in processing order."""
        r = batch.readings
        rows = self.rows_for(r.twin_id)
        ch = batch.channel_index.astype(np.intp, copy=False)
        n = len(r)
        estimate = np.empty(n)
        std = np.empty(n)
        innovation = np.empty(n)
        nis = np.empty(n)
        cells = rows * len(self.channels) + ch
        for idx in rounds_of(cells, r.time_ns):
            out = self.kernel.step(self.state, rows[idx], ch[idx], r.time_ns[idx], r.value[idx])
            estimate[idx] = out.estimate
            std[idx] = out.std
            innovation[idx] = out.innovation
            nis[idx] = out.nis
            self.late_readings += int(out.late.sum())
        unit = np.where(r.unit == "", self.units[ch], r.unit)
        return EstimateBatch(
            batch.twin_type,
            r.twin_id,
            np.asarray(self.channels, dtype=np.str_)[ch],
            r.time_ns,
            r.value,
            unit,
            estimate,
            std,
            innovation,
            nis,
        )

    def snapshot(self) -> dict[str, Any]:
        """Compact, picklable copy of the state: numpy arrays trimmed to the twins present."""
        n = len(self.twin_ids)
        return {
            "format": SNAPSHOT_FORMAT,
            "twin_type": self.spec.name,
            "channels": list(self.channels),
            "twin_ids": list(self.twin_ids),
            "x": self.state.x[:n].copy(),
            "p": self.state.p[:n].copy(),
            "last_ns": self.state.last_ns[:n].copy(),
            "late_readings": self.late_readings,
        }

    @classmethod
    def restore(cls, spec: TwinTypeSpec, snap: dict[str, Any]) -> TwinBank:
        """Rebuild a bank from :meth:`snapshot`; refuses a snapshot of another layout or type."""
        if snap.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"twin bank snapshot format {snap.get('format')!r}, expected {SNAPSHOT_FORMAT}")
        if snap["twin_type"] != spec.name or snap["channels"] != spec.channel_names():
            raise ValueError(
                f"snapshot is of twin type {snap['twin_type']!r} with channels {snap['channels']}, "
                f"the spec declares {spec.name!r} with channels {spec.channel_names()}"
            )
        ids: list[str] = snap["twin_ids"]
        bank = cls(spec, capacity=max(64, len(ids)))
        n = len(ids)
        bank.state.x[:n] = snap["x"]
        bank.state.p[:n] = snap["p"]
        bank.state.last_ns[:n] = snap["last_ns"]
        bank.twin_ids = list(ids)
        bank.row_of = {tid: i for i, tid in enumerate(ids)}
        if ids:
            bank._index.add(np.asarray(ids, dtype=np.str_), np.arange(n, dtype=np.intp))
        bank.late_readings = int(snap.get("late_readings", 0))
        return bank
