"""Shard keys that spread a cluster's shards evenly over its workers.

Bytewax gives each keyed state (here: one twin-bank shard) to the worker that its key hashes
to. With a handful of shards that hash is far from even: 6 of 8 default shard keys land on one
of 2 workers, so one process of a 2-process cluster does three times the other's work and the
cluster is slower than one process. dte-stream therefore names the shards of a cluster so that
shard ``i`` lands on worker ``i % workers``: the key of shard ``i`` is its usual key
(``shard-0003``) when Bytewax routes that to the wanted worker, else the first of
``shard-0003.1``, ``shard-0003.2``, ... that it routes there.

Bytewax's routing is not public API, so it is observed rather than reimplemented: a tiny
dataflow on ``workers`` threads of this process routes the candidate keys through a stateful
step and reports the worker of each (it must be the same on every process and host, or a
Bytewax cluster would not work at all). Should a Bytewax release route differently, the keys
are still valid, only less evenly placed. One process (one worker) keeps the usual keys.

>>> keys = balanced_shard_keys(4, 2)
>>> [worker_of_keys(keys, 2)[k] for k in keys]
[0, 1, 0, 1]
>>> balanced_shard_keys(3, 1)
['shard-0000', 'shard-0001', 'shard-0002']
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from dte_stream.twins.routing import default_shard_key as shard_key

__all__ = ["balanced_shard_keys", "worker_of_keys"]

#: Candidate names tried per shard before giving up on an even placement (at 64 workers the
#: chance that none of them lands on the wanted worker is (63/64)^512, about 3e-4).
_CANDIDATES = 512


def worker_of_keys(keys: Sequence[str], workers: int) -> dict[str, int]:
    """The worker (0 .. workers-1) that Bytewax gives the keyed state of each key."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSource, cluster_main

    owner: dict[str, int] = {}

    def seen(_step: str, item: Any, _epoch: int, worker: int) -> None:
        owner[item[0]] = worker

    flow = Dataflow("dte_shard_placement")
    keyed = op.input("keys", flow, TestingSource([(key, None) for key in keys]))
    owned = op.stateful_map("own", keyed, lambda state, _value: (state, None))
    op.inspect_debug("where", owned, seen)
    cluster_main(flow, [], 0, worker_count_per_proc=workers)  # type: ignore[no-untyped-call]  # untyped stub
    return owner


@functools.lru_cache(maxsize=16)
def _balanced(shards: int, workers: int) -> tuple[str, ...]:
    wanted = {i: i % workers for i in range(shards)}
    chosen: dict[int, str] = {}
    tried = 0
    while len(chosen) < shards and tried < _CANDIDATES:
        batch = range(tried, tried + 16)
        names = {
            (i, n): shard_key(i) if n == 0 else f"{shard_key(i)}.{n}"
            for i in range(shards)
            if i not in chosen
            for n in batch
        }
        owner = worker_of_keys(list(names.values()), workers)
        for (i, _n), name in sorted(names.items()):
            if i not in chosen and owner.get(name) == wanted[i]:
                chosen[i] = name
        tried += len(batch)
    return tuple(chosen.get(i, shard_key(i)) for i in range(shards))


def balanced_shard_keys(shards: int, workers: int) -> list[str]:
    """The state key of each of ``shards`` shards, spread evenly over ``workers`` workers."""
    if workers <= 1:
        return [shard_key(i) for i in range(shards)]
    return list(_balanced(shards, workers))
