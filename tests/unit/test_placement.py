"""Shard keys of a cluster: each shard beside the Kafka partitions that feed it, else evenly."""

from __future__ import annotations

from pathlib import Path

import pytest

from dte_stream.cli.cluster import recorded_shard_keys
from dte_stream.cluster_plan import cluster_plan
from dte_stream.placement import balanced_shard_keys, observe, plan_cluster, shard_workers, worker_of_keys
from dte_stream.spec import parse_spec
from dte_stream.spec.model import DataflowSpec
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


def test_shards_follow_the_kafka_partitions_that_feed_them() -> None:
    # 8 partitions read round the 2 workers in another order: partition p holds shard p % 4 only
    owners = [1, 0, 0, 1, 1, 0, 0, 1]
    assert shard_workers(4, 2, [owners]) == [1, 0, 0, 1]
    # 2 partitions, 4 shards: shard s is all on partition s % 2
    assert shard_workers(4, 2, [[1, 0]]) == [1, 0, 1, 0]
    # one partition for 2 workers: co-locating would idle a worker, so shards are spread evenly
    assert shard_workers(4, 2, [[0]]) == [0, 1, 0, 1]
    # 6 partitions, 4 shards: a partition holds several shards' readings, nothing to follow
    assert shard_workers(4, 2, [[1, 1, 1, 0, 0, 0]]) == [0, 1, 0, 1]


def test_a_cluster_plan_puts_each_shard_beside_its_partition_and_its_writer() -> None:
    parts = [f"sensors/{p}" for p in range(4)]
    read_by = observe(2, source_parts=parts).source_parts
    plan = plan_cluster(4, 2, keyed_sources=[parts], writer_parts=["writer-0", "writer-1"])
    assert plan.shard_workers == [read_by[f"sensors/{s}"] for s in range(4)]
    seen = observe(2, keys=plan.keys, sink_parts=["writer-0", "writer-1"])
    assert {key: seen.sink_parts[plan.writer_routes[key]] for key in plan.keys} == seen.keys
    # recorded keys are kept as they are (their state is stored under them)
    usual = [default_shard_key(i) for i in range(4)]
    assert plan_cluster(4, 2, keyed_sources=[parts], keys=usual).keys == usual


def _spec(tmp_path: Path) -> DataflowSpec:
    return parse_spec(
        {
            "name": "p",
            "sources": [{"kind": "simulator", "twin_type": "gauge"}],
            "twin_types": [{"name": "gauge", "channels": {"level": {}}}],
            "sinks": [{"kind": "local_store", "data_dir": str(tmp_path / "data")}],
            "engine": {"shards": 4},
        }
    )


def test_a_cluster_folder_keeps_the_shard_keys_it_was_made_with(tmp_path: Path) -> None:
    recovery = tmp_path / "rec"
    plan = cluster_plan(_spec(tmp_path), 2, recovery, [])
    assert plan.keys == balanced_shard_keys(4, 2)  # no Kafka source: evenly
    assert recorded_shard_keys(recovery) == plan.keys
    marker = (recovery / "cluster.txt").read_text().splitlines()
    assert marker[:2] == ["processes 2", "shard-keys placed"]
    # whatever chose them, a restart keeps the recorded keys
    other = [f"shard-000{i}.7" for i in range(4)]
    (recovery / "cluster.txt").write_text(f"processes 2\nshard-keys placed\nshard-keys: {' '.join(other)}\n")
    assert cluster_plan(_spec(tmp_path), 2, recovery, []).keys == other
    # a folder of the release before (placed evenly, keys not recorded) keeps the even keys
    (recovery / "cluster.txt").write_text("processes 2\nshard-keys placed\n")
    assert cluster_plan(_spec(tmp_path), 2, recovery, []).keys == balanced_shard_keys(4, 2)
    assert recorded_shard_keys(recovery) == balanced_shard_keys(4, 2)
    assert recorded_shard_keys(tmp_path / "fresh") is None
