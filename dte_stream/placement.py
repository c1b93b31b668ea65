"""Where a cluster's shards, Kafka partitions and InfluxDB writers run, so that data stays local.

A reading crosses processes (pickled, sent over TCP, unpickled) whenever the worker that
consumed it is not the worker that holds its twin's shard, and an estimate crosses again when
its shard's worker is not the worker of the sink partition that writes it. dte-stream therefore
places them together:

- **Shards with the Kafka partitions that feed them.** A producer that keys records by twin
  id puts them, with librdkafka's default partitioner, on partition ``crc32(twin_id) %
  partitions``; a twin's shard is ``crc32(twin_id) % shards``. When one count divides the
  other, each partition's readings belong to one shard (partitions a multiple of shards) or
  each shard's readings to one partition (shards a multiple of partitions), so the shard is
  placed on the worker that Bytewax gives that partition: :func:`shard_workers`. A reading
  that arrives on another partition (an unkeyed record, a Java producer's murmur2) goes to
  the same shard as ever, only across processes: the twin -> shard mapping is a pure function
  of the twin id.
- **Shards evenly otherwise**: shard ``i`` on worker ``i % workers``.
- **Each shard's estimates to a writer on its own worker**: :func:`writer_routes`.

Bytewax gives each keyed state (a shard) to the worker that its key hashes to, so a shard is
placed by its key's name: its usual key (``shard-0003``) when Bytewax routes that to the wanted
worker, else the first of ``shard-0003.1``, ``shard-0003.2``, ... that it routes there. Bytewax's
routing and its assignment of source and sink partitions are not public API, so they are
observed rather than reimplemented: :func:`observe` runs a tiny dataflow on ``workers`` threads
of this process that reports the worker of each key and partition (it must be the same on every
process and host, or a Bytewax cluster would not work at all). Should a Bytewax release place
differently, every key stays valid; only the data crosses processes more often.

>>> keys = balanced_shard_keys(4, 2)
>>> [worker_of_keys(keys, 2)[k] for k in keys]
[0, 1, 0, 1]
>>> balanced_shard_keys(3, 1)
['shard-0000', 'shard-0001', 'shard-0002']
>>> shard_workers(4, 2, [[1, 0, 1, 0]])  # a 4-partition topic, partition p read by worker 1 - p % 2
[1, 0, 1, 0]
"""

from __future__ import annotations

import collections
import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dte_stream.twins.routing import default_shard_key as shard_key

__all__ = [
    "ClusterPlan",
    "Observed",
    "balanced_shard_keys",
    "observe",
    "placed_shard_keys",
    "plan_cluster",
    "shard_workers",
    "worker_of_keys",
    "writer_routes",
]

#: Candidate names tried per shard before giving up on the wanted worker (at 64 workers the
#: chance that none of them lands on the wanted worker is (63/64)^512, about 3e-4).
_CANDIDATES = 512


@dataclass
class Observed:
    """The worker (0 .. workers-1) of each keyed state, source partition and sink partition.

    ``sink_parts`` maps what a sink's ``part_fn`` returns (0 .. partitions-1) to the worker of
    the partition that Bytewax picks for it.
    """

    keys: dict[str, int] = field(default_factory=dict)
    source_parts: dict[str, int] = field(default_factory=dict)
    sink_parts: dict[int, int] = field(default_factory=dict)


def observe(
    workers: int,
    keys: Sequence[str] = (),
    source_parts: Sequence[str] = (),
    sink_parts: Sequence[str] = (),
) -> Observed:
    """Where Bytewax puts ``keys`` (keyed state), ``source_parts`` and ``sink_parts`` on ``workers``.

    ``source_parts`` and ``sink_parts`` must be listed as the real source and sink list them
    (Bytewax assigns a partition by its place among all of them).
    """
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
    from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
    from bytewax.testing import TestingSource, cluster_main

    seen = Observed()
    thread_worker: dict[int, int] = {}
    sink_thread: dict[int, int] = {}  # part_fn value -> thread

    class _Part(StatefulSourcePartition[str, None]):
        def __init__(self, key: str) -> None:
            self.key: str | None = key

        def next_batch(self) -> list[str]:
            if self.key is None:
                raise StopIteration
            key, self.key = self.key, None
            return [key]

        def snapshot(self) -> None:
            return None

    class _Source(FixedPartitionedSource[str, None]):
        def list_parts(self) -> list[str]:
            return list(source_parts)

        def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Part:
            return _Part(for_part)

    class _SinkPart(StatefulSinkPartition[Any, None]):
        def __init__(self, key: str) -> None:
            self.key = key

        def write_batch(self, values: list[Any]) -> None:
            for index in values:  # Bytewax hands the values, without their keys
                sink_thread[index] = threading.get_ident()

        def snapshot(self) -> None:
            return None

    class _Sink(FixedPartitionedSink[Any, None]):
        def list_parts(self) -> list[str]:
            return list(sink_parts)

        def part_fn(self, item_key: str) -> int:
            return int(item_key.rsplit("#", 1)[1])

        def build_part(self, step_id: str, for_part: str, resume_state: None) -> _SinkPart:
            return _SinkPart(for_part)

    def keyed_seen(_step: str, item: Any, _epoch: int, worker: int) -> None:
        thread_worker[threading.get_ident()] = worker
        if not item[0].startswith("#"):
            seen.keys[item[0]] = worker

    def part_seen(_step: str, item: Any, _epoch: int, worker: int) -> None:
        seen.source_parts[item] = worker

    flow = Dataflow("dte_placement")
    # every worker gets some keyed state (probes), so each sink partition's thread is known
    probes = [
        (f"#probe-{i}#{i % max(1, len(sink_parts))}", i % max(1, len(sink_parts)))
        for i in range(32 * workers)
    ]
    pairs = [(key, 0) for key in keys] + probes
    keyed = op.input("keys", flow, TestingSource(pairs))
    owned = op.stateful_map("own", keyed, lambda state, value: (state, value))
    op.inspect_debug("where", owned, keyed_seen)
    if source_parts:
        parts = op.input("parts", flow, _Source())
        op.inspect_debug("part_where", parts, part_seen)
    if sink_parts:
        op.output("sink", op.filter("probes", owned, lambda kv: kv[0].startswith("#")), _Sink())
    cluster_main(flow, [], 0, worker_count_per_proc=workers)  # type: ignore[no-untyped-call]  # untyped stub
    for index, thread in sink_thread.items():
        if thread in thread_worker:
            seen.sink_parts[index] = thread_worker[thread]
    return seen


def worker_of_keys(keys: Sequence[str], workers: int) -> dict[str, int]:
    """The worker (0 .. workers-1) that Bytewax gives the keyed state of each key."""
    return observe(workers, keys=keys).keys


@functools.lru_cache(maxsize=16)
def _placed(wanted: tuple[int, ...], workers: int) -> tuple[str, ...]:
    chosen: dict[int, str] = {}
    tried = 0
    while len(chosen) < len(wanted) and tried < _CANDIDATES:
        batch = range(tried, tried + 16)
        names = {
            (i, n): shard_key(i) if n == 0 else f"{shard_key(i)}.{n}"
            for i in range(len(wanted))
            if i not in chosen
            for n in batch
        }
        owner = worker_of_keys(list(names.values()), workers)
        for (i, _n), name in sorted(names.items()):
            if i not in chosen and owner.get(name) == wanted[i]:
                chosen[i] = name
        tried += len(batch)
    return tuple(chosen.get(i, shard_key(i)) for i in range(len(wanted)))


def placed_shard_keys(wanted: Sequence[int], workers: int) -> list[str]:
    """The state key of each shard ``i``, one that Bytewax routes to worker ``wanted[i]``."""
    if workers <= 1:
        return [shard_key(i) for i in range(len(wanted))]
    return list(_placed(tuple(w % workers for w in wanted), workers))


def balanced_shard_keys(shards: int, workers: int) -> list[str]:
    """The state key of each of ``shards`` shards, spread evenly over ``workers`` workers."""
    return placed_shard_keys([i % workers for i in range(shards)], workers)


def shard_workers(shards: int, workers: int, topics: Sequence[Sequence[int]]) -> list[int]:
    """The worker of each shard: where the Kafka partitions that feed it are read, else ``i % workers``.

    ``topics`` holds, per topic keyed by twin id, the worker that reads each of its partitions
    (index = partition number). A topic counts only when one of its partition count and
    ``shards`` divides the other (else a partition holds readings of every shard) and it has at
    least ``workers`` partitions (else co-locating would leave a worker without shards). A
    shard fed by partitions on several workers goes where most of them are (a tie: to worker
    ``i % workers`` if it is one of them, else to the one with the fewest shards).

    >>> shard_workers(8, 2, [[0, 1, 0, 1]])  # shard s is fed by partition s % 4
    [0, 1, 0, 1, 0, 1, 0, 1]
    >>> shard_workers(4, 2, [[0, 1, 0]])  # 3 partitions, 4 shards: no partition is one shard's
    [0, 1, 0, 1]
    """
    votes: list[collections.Counter[int]] = [collections.Counter() for _ in range(shards)]
    for owners in topics:
        partitions = len(owners)
        if partitions < workers or partitions == 0:
            continue
        if partitions % shards == 0:  # partition p holds readings of shard p % shards only
            for p, worker in enumerate(owners):
                votes[p % shards][worker] += 1
        elif shards % partitions == 0:  # shard s's readings are all on partition s % partitions
            for s in range(shards):
                votes[s][owners[s % partitions]] += 1
    placed = []
    for s, counts in enumerate(votes):
        if not counts:
            placed.append(s % workers)
            continue
        best = max(counts.values())
        candidates = sorted(w for w, n in counts.items() if n == best)
        if s % workers not in candidates:  # a tie: the candidate with the fewest shards so far
            candidates.sort(key=placed.count)
        placed.append(s % workers if s % workers in candidates else candidates[0])
    return placed


def writer_routes(key_workers: dict[str, int], writer_workers: dict[int, int]) -> dict[str, int]:
    """For each shard key, a sink ``part_fn`` value whose partition is on the shard's worker.

    ``writer_workers`` is :attr:`Observed.sink_parts`. Shards of one worker take turns over
    that worker's writers; a shard whose worker has no writer is left out (the sink routes it
    by its own hash).

    >>> writer_routes({"a": 0, "b": 1, "c": 0}, {0: 1, 1: 0})
    {'a': 1, 'b': 0, 'c': 1}
    """
    on_worker: dict[int, list[int]] = {}
    for index, worker in sorted(writer_workers.items()):
        on_worker.setdefault(worker, []).append(index)
    routes: dict[str, int] = {}
    turn: collections.Counter[int] = collections.Counter()
    for key, worker in key_workers.items():
        choices = on_worker.get(worker)
        if choices:
            routes[key] = choices[turn[worker] % len(choices)]
            turn[worker] += 1
    return routes


@dataclass(frozen=True)
class ClusterPlan:
    """A cluster's shard keys (``keys[i]`` is shard ``i``'s) and the writer of each shard's estimates."""

    keys: list[str]
    writer_routes: dict[str, int]
    shard_workers: list[int]


def plan_cluster(
    shards: int,
    workers: int,
    *,
    keyed_sources: Sequence[Sequence[str]] = (),
    writer_parts: Sequence[str] = (),
    keys: Sequence[str] | None = None,
) -> ClusterPlan:
    """Place ``shards`` shards on ``workers`` workers (every process computes the same plan).

    ``keyed_sources`` holds, per Kafka source whose record keys are twin ids, its partition keys
    (``TOPIC/PARTITION``) as it lists them; ``writer_parts`` the partitions of the estimate sink
    that routes by shard key; ``keys`` the shard keys a recovery folder already holds state
    under (kept: only the writers are placed then).
    """
    # One observing dataflow answers everything in the usual case (a start costs less): the
    # first source's partitions, the writers, the recorded keys or 16 candidate names per shard.
    candidates = [_candidate(i, n) for i in range(shards) for n in range(16)] if keys is None else []
    first, *more = keyed_sources or [[]]
    seen = observe(workers, keys=[*(keys or []), *candidates], source_parts=first, sink_parts=writer_parts)
    if keys is None:
        where = [seen.source_parts, *(observe(workers, source_parts=parts).source_parts for parts in more)]
        wanted = shard_workers(shards, workers, [owners for found in where for owners in _by_topic(found)])
        keys = []
        for i in range(shards):  # the first candidate of shard i that lands on its worker
            hits = [c for c in candidates[16 * i : 16 * (i + 1)] if seen.keys.get(c) == wanted[i]]
            keys.append(hits[0] if hits else "")
        if not all(keys):  # none of the 16 landed there (at 2 workers: 1 in 65,536)
            keys = placed_shard_keys(wanted, workers)
            seen = observe(workers, keys=keys, sink_parts=writer_parts)
    routes = (
        writer_routes({k: seen.keys[k] for k in keys if k in seen.keys}, seen.sink_parts)
        if writer_parts
        else {}
    )
    return ClusterPlan(list(keys), routes, [seen.keys.get(k, -1) for k in keys])


def _candidate(shard: int, n: int) -> str:
    """Candidate ``n`` for the key of ``shard``: its usual key, then ``shard-0003.1``, ..."""
    return shard_key(shard) if n == 0 else f"{shard_key(shard)}.{n}"


def _by_topic(where: dict[str, int]) -> list[list[int]]:
    """Per topic, the worker of each partition (index = partition), from ``TOPIC/PARTITION`` keys."""
    by_topic: dict[str, dict[int, int]] = {}
    for part, worker in where.items():
        topic, _, partition = part.rpartition("/")
        by_topic.setdefault(topic, {})[int(partition)] = worker
    return [
        [owners[p] for p in range(len(owners))]
        for owners in by_topic.values()
        if sorted(owners) == list(range(len(owners)))
    ]
