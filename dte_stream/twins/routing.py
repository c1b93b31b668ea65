"""Routing: which twin type and shard each reading belongs to, with numpy.

A reading's twin type comes from its source (a source may declare one) or from the first
twin type whose ``match`` pattern fully matches the twin id; its channel must be a channel
(or alias) of that type. The shard is ``crc32(twin_id) % shards``: stable across processes
and restarts, which recovery needs. Everything is decided once per *distinct* twin id or
channel in a batch (cached), then applied to the whole batch with array indexing.
Readings that cannot be routed become dead letters that say why.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import orjson

from dte_stream.readings import DeadLetter, ReadingBatch
from dte_stream.spec.model import DataflowSpec
from dte_stream.twins.batches import TypedBatch

__all__ = ["RouteResult", "Router", "shard_key", "shard_of"]

_CACHE_LIMIT = 1_000_000


def shard_of(twin_id: str, shards: int) -> int:
    """The shard of a twin: stable for a given id and shard count."""
    return zlib.crc32(twin_id.encode("utf-8")) % shards


def shard_key(twin_type: str, shard: int) -> str:
    """The Bytewax state key of a twin type's shard (a recovery key: keep it stable)."""
    return f"{twin_type}/{shard:04d}"


@dataclass(frozen=True, slots=True)
class RouteResult:
    """Readings split by (twin type, shard) key, and dead letters for the rest."""

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
    ([('pump/0001', 1)], ["twin id 'q-1' matches no twin type (pump: p-.*)"])
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
        self._type_of: dict[str, int] = {}
        self._shard_of: dict[str, int] = {}

    def _type_index(self, twin_id: str) -> int:
        cached = self._type_of.get(twin_id)
        if cached is not None:
            return cached
        found = -1
        for name, pattern in self._patterns:
            if pattern.fullmatch(twin_id):
                found = self.types.index(name)
                break
        if len(self._type_of) >= _CACHE_LIMIT:
            self._type_of.clear()
        self._type_of[twin_id] = found
        return found

    def _shard(self, twin_id: str) -> int:
        cached = self._shard_of.get(twin_id)
        if cached is None:
            if len(self._shard_of) >= _CACHE_LIMIT:
                self._shard_of.clear()
            cached = self._shard_of[twin_id] = shard_of(twin_id, self.shards)
        return cached

    def route(self, batch: ReadingBatch, source: str, twin_type: str | None = None) -> RouteResult:
        """Split ``batch`` by (twin type, shard); ``twin_type`` forces the type of every reading."""
        n = len(batch)
        if n == 0:
            return RouteResult([], [])
        errors: list[DeadLetter] = []
        unique_ids, id_inverse = np.unique(batch.twin_id, return_inverse=True)
        id_inverse = id_inverse.reshape(-1)
        ids = unique_ids.tolist()
        if twin_type is not None:
            type_idx = np.full(n, self.types.index(twin_type), dtype=np.intp)
        else:
            per_id = np.fromiter((self._type_index(t) for t in ids), dtype=np.intp, count=len(ids))
            type_idx = per_id[id_inverse]
            unmatched = np.flatnonzero(per_id < 0)
            patterns = "; ".join(f"{name}: {p.pattern}" for name, p in self._patterns) or "none declared"
            for u in unmatched.tolist():
                positions = np.flatnonzero(id_inverse == u)
                errors += _dead(batch, positions, source, f"twin id {ids[u]!r} matches no twin type ({patterns})")
        shard_per_id = np.fromiter((self._shard(t) for t in ids), dtype=np.intp, count=len(ids))
        shard = shard_per_id[id_inverse]

        channel_idx = np.full(n, -1, dtype=np.intp)
        unique_ch, ch_inverse = np.unique(batch.channel, return_inverse=True)
        ch_inverse = ch_inverse.reshape(-1)
        for t in np.unique(type_idx[type_idx >= 0]).tolist():
            names = self._channel_index[t]
            lookup = np.array([names.get(c, -1) for c in unique_ch.tolist()], dtype=np.intp)
            of_type = type_idx == t
            channel_idx[of_type] = lookup[ch_inverse[of_type]]
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
        group = np.where(ok, type_idx * self.shards + shard, -1)
        routed: list[tuple[str, TypedBatch]] = []
        good = np.flatnonzero(ok)
        if good.size:
            order = good[np.argsort(group[good], kind="stable")]
            keys, starts = np.unique(group[order], return_index=True)
            for key, idx in zip(keys.tolist(), np.split(order, starts[1:]), strict=True):
                t, s = divmod(key, self.shards)
                routed.append(
                    (shard_key(self.types[t], s), TypedBatch(self.types[t], batch.take(idx), channel_idx[idx]))
                )
        return RouteResult(routed, errors)
