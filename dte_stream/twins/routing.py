"""Routing: which twin type and shard each reading belongs to, with numpy.

A reading's twin type comes from its source (a source may declare one) or from the first
twin type whose ``match`` pattern fully matches the twin id; its channel must be a channel
(or alias) of that type. The shard is ``crc32(twin_id) % shards``: stable across processes
and restarts, which recovery needs. Everything is decided once per *distinct* twin id or
channel in a batch (cached), then applied to the whole batch with array indexing.
Readings that cannot be routed become dead letters that say why.
"""

from __future__ import annotations

import os
import re
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import orjson

from dte_stream.readings import DeadLetter, ReadingBatch
from dte_stream.spec.model import DataflowSpec
from dte_stream.twins.idindex import IdIndex

__all__ = [
    "RouteResult",
    "Router",
    "TypedBatch",
    "default_shard_key",
    "shard_key",
    "shard_of",
    "use_shard_keys",
]

_CACHE_LIMIT = 1_000_000
#: Up to this many channel names (aliases included) a type's channels are found by comparing.
_COMPARED_NAMES = 32


@dataclass(frozen=True, slots=True, eq=False)
class TypedBatch:
    """Readings of one twin type, each with the index of its channel in the type's channels.

    ``origin`` is the process id of the process that routed them (0: not known): a cluster
    counts the readings that its shards got from another process (:mod:`dte_stream.placement`).
    """

    twin_type: str
    readings: ReadingBatch
    channel_index: npt.NDArray[np.intp]
    origin: int = 0

    def __len__(self) -> int:
        return len(self.readings)

    @classmethod
    def concat(cls, batches: list[TypedBatch]) -> TypedBatch:
        if len(batches) == 1:
            return batches[0]
        return cls(
            batches[0].twin_type,
            ReadingBatch.concat([b.readings for b in batches]),
            np.concatenate([b.channel_index for b in batches]),
            batches[0].origin,
        )


def shard_of(twin_id: str, shards: int) -> int:
    """The shard of a twin: stable for a given id and shard count."""
    return zlib.crc32(twin_id.encode("utf-8")) % shards


def default_shard_key(shard: int) -> str:
    """The usual state key of a shard: every shard's in one process (a recovery key: stable).

    >>> default_shard_key(shard_of("pump-1", 8))
    'shard-0006'
    """
    return f"shard-{shard:04d}"


#: The shard keys of this process's dataflow, when they are not the usual ones (a cluster's
#: keys are chosen to spread the shards over its workers: :mod:`dte_stream.placement`).
_KEYS: list[str] = []


def use_shard_keys(keys: Sequence[str]) -> None:
    """Make ``keys[i]`` the state key of shard ``i`` in this process (empty: the usual keys).

    Set once, before the dataflow is built; every process of a cluster sets the same keys.
    """
    _KEYS[:] = keys


def shard_key(shard: int) -> str:
    """The state key of a shard (a Bytewax recovery key: keep it stable).

    >>> shard_key(shard_of("pump-1", 8))
    'shard-0006'
    """
    return _KEYS[shard] if shard < len(_KEYS) else default_shard_key(shard)


@dataclass(frozen=True, slots=True)
class RouteResult:
    """Readings split by shard (one batch per twin type and shard), and dead letters for the rest."""

    routed: list[tuple[str, TypedBatch]]
    errors: list[DeadLetter]


def _dead(batch: ReadingBatch, index: npt.NDArray[np.intp], source: str, reason: str) -> list[DeadLetter]:
    letters = []
    for i in index.tolist():
        raw = orjson.dumps(
            {
                "twin_id": str(batch.twin_id[i]),
                "channel": str(batch.channel[i]),
                "time_ns": int(batch.time_ns[i]),
                "value": float(batch.value[i]),
            }
        )
        letters.append(DeadLetter(source, reason, raw))
    return letters


class Router:
    """Route reading batches of a dataflow spec to twin-bank shards.

    >>> from dte_stream.spec import parse_spec
    >>> spec = parse_spec({"name": "x", "sources": [{"kind": "simulator", "twin_type": "pump"}],
    ...     "twin_types": [{"name": "pump", "match": "p-.*", "channels": {"t": {}}}],
    ...     "sinks": [{"kind": "local_store"}], "engine": {"shards": 2}})
    >>> rb = ReadingBatch.from_columns(["p-1", "q-1"], ["t", "t"], [0, 0], [1.0, 2.0])
    >>> res = Router(spec).route(rb, source="test")
    >>> [(k, len(b)) for k, b in res.routed], [e.reason for e in res.errors]
    ([('shard-0001', 1)], ["twin id 'q-1' matches no twin type (pump: p-.*)"])
    """

    def __init__(self, spec: DataflowSpec) -> None:
        self.shards = spec.engine.shards
        self.types = [t.name for t in spec.twin_types]
        self._patterns = [(t.name, re.compile(t.match)) for t in spec.twin_types if t.match is not None]
        self._channel_index: list[dict[str, int]] = []
        self._channel_list: list[str] = []
        for t in spec.twin_types:
            names: dict[str, int] = {}
            for i, (name, channel) in enumerate(t.channels.items()):
                names[name] = i
                for alias in channel.aliases:
                    names[alias] = i
            self._channel_index.append(names)
            self._channel_list.append(", ".join(t.channels))
        self._groups = len(self.types) * self.shards  # (type, shard) pairs
        self._group_dtype = np.int16 if self._groups <= np.iinfo(np.int16).max else np.intp
        # Per twin id: type index * shards + shard, or -1 - shard when no type matches.
        # One router serves every worker thread of the process: the cache is locked.
        self._placement = IdIndex()
        self._lock = threading.Lock()

    def _place(self, twin_id: str) -> int:
        shard = shard_of(twin_id, self.shards)
        for name, pattern in self._patterns:
            if pattern.fullmatch(twin_id):
                return self.types.index(name) * self.shards + shard
        return -1 - shard

    def _channels_of(self, type_index: int, channels: npt.NDArray[np.str_]) -> npt.NDArray[np.intp]:
        """The index of each channel in twin type ``type_index``'s channels (-1: not one of them).

        A type has a few channel names (aliases included): one vectorised comparison per name
        costs less than finding the distinct channels of the batch (a sort of its strings).
        """
        names = self._channel_index[type_index]
        if len(names) > _COMPARED_NAMES:
            unique_ch, inverse = np.unique(channels, return_inverse=True)
            lookup = np.array([names.get(c, -1) for c in unique_ch.tolist()], dtype=np.intp)
            return lookup[inverse.reshape(-1)]
        index = np.full(channels.shape[0], -1, dtype=np.intp)
        for name, i in names.items():
            index[channels == name] = i
        return index

    def placement(self, twin_id: npt.NDArray[np.str_]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """Twin type index (-1 when no pattern matches) and shard of each twin id."""
        with self._lock:
            code, known = self._placement.lookup(twin_id)
            if not known.all():
                new_ids = np.unique(twin_id[~known])
                new_codes = np.array([self._place(t) for t in new_ids.tolist()], dtype=np.intp)
                code[~known] = new_codes[np.searchsorted(new_ids, twin_id[~known])]
                if len(self._placement) + new_ids.shape[0] > _CACHE_LIMIT:
                    self._placement.clear()
                self._placement.add(new_ids, new_codes)
        matched = code >= 0
        type_idx = np.where(matched, code // self.shards, -1)
        shard = np.where(matched, code % self.shards, -1 - code)
        return type_idx, shard

    def route(self, batch: ReadingBatch, source: str, twin_type: str | None = None) -> RouteResult:
        """Split ``batch`` by twin type and shard; ``twin_type`` forces the type of every reading."""
        n = len(batch)
        if n == 0:
            return RouteResult([], [])
        errors: list[DeadLetter] = []
        type_idx, shard = self.placement(batch.twin_id)
        if twin_type is not None:
            type_idx = np.full(n, self.types.index(twin_type), dtype=np.intp)
        elif (type_idx < 0).any():
            patterns = "; ".join(f"{name}: {p.pattern}" for name, p in self._patterns) or "none declared"
            unmatched = np.flatnonzero(type_idx < 0)
            for tid in np.unique(batch.twin_id[unmatched]).tolist():
                positions = unmatched[batch.twin_id[unmatched] == tid]
                errors += _dead(
                    batch, positions, source, f"twin id {tid!r} matches no twin type ({patterns})"
                )

        channel_idx = np.full(n, -1, dtype=np.intp)
        lowest, highest = int(type_idx.min()), int(type_idx.max())
        if lowest == highest:  # one twin type (the usual), or none
            present = [lowest] if lowest >= 0 else []
        else:
            present = np.unique(type_idx[type_idx >= 0]).tolist()
        for t in present:
            of_type = None if lowest == highest else type_idx == t
            if of_type is None:
                channel_idx = self._channels_of(t, batch.channel)
                bad = np.flatnonzero(channel_idx < 0)
            else:
                channel_idx[of_type] = self._channels_of(t, batch.channel[of_type])
                bad = np.flatnonzero(of_type & (channel_idx < 0))
            if bad.size:
                for c in np.unique(batch.channel[bad]).tolist():
                    positions = bad[batch.channel[bad] == c]
                    reason = (
                        f"twin type {self.types[t]!r} has no channel {c!r} "
                        f"(channels: {self._channel_list[t]})"
                    )
                    errors += _dead(batch, positions, source, reason)

        ok = (type_idx >= 0) & (channel_idx >= 0)
        routed: list[tuple[str, TypedBatch]] = []
        origin = os.getpid()
        good = np.flatnonzero(ok)
        if good.size:
            # Groups (type and shard) are few: a stable radix sort of 16-bit keys and a count
            # per group, where a comparison sort and np.unique sorted twice.
            group = (type_idx[good] * self.shards + shard[good]).astype(self._group_dtype)
            order = good[np.argsort(group, kind="stable")]
            counts = np.bincount(group, minlength=self._groups)
            ends = np.cumsum(counts)
            for key in np.flatnonzero(counts).tolist():
                idx = order[ends[key] - counts[key] : ends[key]]
                t, s = divmod(key, self.shards)
                routed.append(
                    (
                        shard_key(s),
                        TypedBatch(self.types[t], batch.take(idx), channel_idx[idx], origin),
                    )
                )
        return RouteResult(routed, errors)
