"""Shard keys of a cluster: shard i on worker i % workers, as Bytewax itself routes them."""

from __future__ import annotations

import pytest

from dte_stream.placement import balanced_shard_keys, worker_of_keys
from dte_stream.twins.routing import default_shard_key, shard_key, use_shard_keys


@pytest.mark.parametrize(("shards", "workers"), [(4, 2), (8, 2), (8, 3), (16, 4), (3, 4)])
def test_each_shard_lands_on_its_own_share_of_the_workers(shards: int, workers: int) -> None:
    keys = balanced_shard_keys(shards, workers)
    assert len(set(keys)) == shards
    owner = worker_of_keys(keys, workers)
    assert [owner[k] for k in keys] == [i % workers for i in range(shards)]
    # The same keys every time (every process of a cluster computes them on its own).
    assert balanced_shard_keys(shards, workers) == keys


def test_one_worker_keeps_the_usual_keys() -> None:
    assert balanced_shard_keys(4, 1) == [default_shard_key(i) for i in range(4)]


def test_the_routers_keys_follow_the_process_table() -> None:
    keys = balanced_shard_keys(4, 2)
    use_shard_keys(keys)
    try:
        assert [shard_key(i) for i in range(4)] == keys
    finally:
        use_shard_keys(())
    assert shard_key(2) == "shard-0002"
