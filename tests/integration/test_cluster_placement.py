"""A 2-process cluster applies the readings of a keyed Kafka partition in the process that read it.

A producer keyed by twin id (librdkafka's default partitioner: ``crc32(key) % partitions``)
puts every reading of a twin on the partition whose number is the twin's shard (4 partitions,
4 shards), and the cluster places each shard on the worker that Bytewax gives that partition
(:mod:`dte_stream.placement`): no reading crosses processes. Readings that arrive on another
partition (here written to the next partition on purpose, as an unkeyed or Java producer
might) still go to their twin's shard, across processes, and are counted as such. Counts, not
timing: each process's summary line gives the readings its shards applied and how many of them
came from the other process; InfluxDB holds every reading's point once.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from influxql import influxql_rows

from dte_stream.cli.cluster import recorded_shard_keys
from dte_stream.placement import observe

pytestmark = pytest.mark.integration

PARTITIONS = SHARDS = 4
TWINS = 40
TICKS = 5
T0_NS = 1_767_225_600 * 10**9


def _produce(bootstrap: str, topic: str) -> dict[tuple[str, int], int]:
    """Keyed readings, plus a stray copy of every 4th twin's readings on the next partition."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    partition_of: dict[tuple[str, int], int] = {}  # (twin, time) -> partition it went to

    def delivered(err: Any, msg: Any) -> None:
        assert err is None, err
        reading = orjson.loads(msg.value())
        partition_of[reading["twin_id"], reading["time_ns"]] = msg.partition()

    for k in range(TICKS):
        for i in range(TWINS):
            twin = f"pump-{i:03d}"
            keyed = {
                "twin_id": twin,
                "channel": "temperature",
                "time_ns": T0_NS + k * 10**9,
                "value": 20.0 + k,
            }
            producer.produce(topic, orjson.dumps(keyed), key=twin.encode(), on_delivery=delivered)
            if i % 4 == 0:  # the same twin, a later time, on a partition its key does not give
                stray = {**keyed, "time_ns": keyed["time_ns"] + 500_000_000}
                wrong = (zlib.crc32(twin.encode()) + 1) % PARTITIONS
                producer.produce(
                    topic, orjson.dumps(stray), key=twin.encode(), partition=wrong, on_delivery=delivered
                )
            producer.poll(0)
    assert producer.flush(30) == 0
    return partition_of


def _spec(path: Path, bootstrap: str, topic: str, url: str, db: str) -> Path:
    spec = {
        "name": "placement",
        "sources": [
            {
                "kind": "kafka",
                "name": "sensors",
                "bootstrap_servers": bootstrap,
                "topics": [topic],
                "stop_at_end": True,
            }
        ],
        "twin_types": [{"name": "pump", "match": "pump-.*", "channels": {"temperature": {}}}],
        "sinks": [{"kind": "influxdb", "url": url, "database": db, "create_database": True}],
        "dead_letters": {"path": str(path.parent / "dead_letters.jsonl")},
        "engine": {"shards": SHARDS, "epoch_seconds": 1.0, "clock": "event"},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_readings_of_a_keyed_partition_stay_in_the_process_that_read_them(
    kafka: Any, influxdb: Any, tmp_path: Path
) -> None:
    topic = f"placement-{uuid.uuid4().hex[:8]}"
    partition_of = _produce(kafka.bootstrap_servers, topic)
    db = f"dte_placement_{uuid.uuid4().hex[:8]}"
    spec = _spec(tmp_path / "flow.yaml", kafka.bootstrap_servers, topic, influxdb.url, db)
    recovery = tmp_path / "recovery"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "dte_stream",
            "run",
            str(spec),
            "--processes",
            "2",
            "--recovery-dir",
            str(recovery),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    summary = re.findall(
        r"\[process (\d) of 2\]: finished after [\d.]+ s: ([\d,]+) readings processed .*?"
        r"([\d,]+) readings from other processes",
        run.stderr,
    )
    applied = {int(p): int(n.replace(",", "")) for p, n, _ in summary}
    crossed = {int(p): int(r.replace(",", "")) for p, _, r in summary}
    assert sorted(applied) == [0, 1], run.stderr[-4000:]

    # Where Bytewax runs each partition and each shard (2 processes of one worker: worker = process).
    read_by = observe(2, source_parts=[f"{topic}/{p}" for p in range(PARTITIONS)]).source_parts
    keys = recorded_shard_keys(recovery)
    assert keys is not None
    assert len(keys) == SHARDS
    held_by = observe(2, keys=keys).keys
    shard_process = [held_by[keys[s]] for s in range(SHARDS)]
    assert shard_process == [read_by[f"{topic}/{s}"] for s in range(SHARDS)]  # co-located
    assert sorted(set(shard_process)) == [0, 1]  # and both processes hold shards

    expected_applied = {0: 0, 1: 0}
    expected_crossed = {0: 0, 1: 0}
    for (twin, _time), partition in partition_of.items():
        owner = shard_process[zlib.crc32(twin.encode()) % SHARDS]
        expected_applied[owner] += 1
        expected_crossed[owner] += read_by[f"{topic}/{partition}"] != owner
    assert applied == expected_applied
    assert crossed == expected_crossed
    assert sum(crossed.values()) > 0  # strays on a partition of the other process crossed
    strays = TICKS * TWINS // 4
    [[_, points]] = influxql_rows(influxdb.url, 'SELECT count("value") FROM "dte_readings"', db)
    assert points == len(partition_of) == TICKS * TWINS + strays
