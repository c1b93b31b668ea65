"""The placement of a spec's shards and estimate writers in a cluster, kept in its recovery folder.

:mod:`dte_stream.placement` decides where shards and writers go from what Bytewax does; this
module feeds it the spec's facts (the partitions of its Kafka sources keyed by twin id, its
InfluxDB writers) and keeps the outcome stable across restarts: the shard keys are the keys of
the shards' recovery state, so a cluster's recovery folder records them (``cluster.txt``,
:func:`~dte_stream.cli.cluster.record_shard_keys`) and a restart uses the recorded ones, even
if the topic's partitions changed since. A folder of an earlier release, whose keys were placed
evenly and not recorded, keeps its even keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bytewax.inputs import FixedPartitionedSource

from dte_stream.connectors.influxdb import InfluxDBEpochSink
from dte_stream.placement import ClusterPlan, balanced_shard_keys, plan_cluster
from dte_stream.spec.influxdb import InfluxDBSinkSpec
from dte_stream.spec.model import DataflowSpec

__all__ = ["cluster_plan"]


def cluster_plan(
    spec: DataflowSpec,
    processes: int,
    recovery_dir: Path | None,
    keyed_sources: Sequence[FixedPartitionedSource[object, object]],
) -> ClusterPlan:
    """The plan of a cluster of ``processes`` running ``spec`` (each process computes the same one).

    ``keyed_sources`` are the spec's Kafka sources whose record keys are twin ids (their
    partitions are listed here: one metadata request each).
    """
    from dte_stream.cli.cluster import record_shard_keys, recorded_shard_keys

    workers = spec.engine.workers * processes
    influx = any(isinstance(sink, InfluxDBSinkSpec) for sink in spec.sinks)
    writers = InfluxDBEpochSink.part_names(workers) if influx else []
    keys = recorded_shard_keys(recovery_dir) if recovery_dir is not None else None
    if keys == []:  # made by an earlier release: evenly placed keys
        keys = balanced_shard_keys(spec.engine.shards, workers)
    if keys is not None and len(keys) != spec.engine.shards:
        keys = None  # another shard count: the folder is refused elsewhere, or a fresh start
    plan = plan_cluster(
        spec.engine.shards,
        workers,
        keyed_sources=[source.list_parts() for source in keyed_sources] if keys is None else [],
        writer_parts=writers,
        keys=keys,
    )
    if recovery_dir is not None:
        record_shard_keys(recovery_dir, processes, plan.keys)
    return plan
