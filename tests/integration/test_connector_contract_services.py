"""The connector contract (tests/unit/connectors/connector_contract.py) on connectors that need
a real service: the Kafka source against a real broker, the InfluxDB sink against InfluxDB 1.x.

The same checks as the service-free connectors; only the cases are written here.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "connectors"))
from connector_contract import SinkCase, SourceCase, sink_checks, source_checks

from dte_stream.batches import EstimateBatch
from dte_stream.connectors.influxdb import InfluxDBSink
from dte_stream.connectors.kafka import KafkaSource
from dte_stream.spec.influxdb import InfluxDBSinkSpec
from dte_stream.spec.kafka import KafkaSourceSpec
from dte_stream.store.dead_letters import DeadLetterLog

pytestmark = pytest.mark.integration

T0 = 1_767_323_045_000_000_000
BAD = b'[{"twin_id": "pump-1", "channel": "temp", "value": '


def _kafka_source(kafka: Any) -> SourceCase:
    bootstrap = kafka.bootstrap_servers
    topic = f"contract-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(12):
        value = b'[{"twin_id":"pump-%d","channel":"temp","time_ns":%d,"value":%d.5}]' % (i % 3, T0 + i, i)
        producer.produce(topic, value, b"pump-%d" % (i % 3), partition=i % 2)
        if i == 5:
            producer.produce(topic, BAD, b"pump-1", partition=1)
    assert producer.flush(30) == 0
    spec = KafkaSourceSpec(
        kind="kafka", bootstrap_servers=bootstrap, topics=[topic], batch_size=2, stop_at_end=True
    )
    return SourceCase("kafka", lambda: KafkaSource(spec), expected=12, bad=BAD, wait=lambda: time.sleep(0.01))


SOURCES: dict[str, Callable[[Any], SourceCase]] = {"kafka": _kafka_source}


def _influx_query(url: str, db: str, q: str) -> Any:
    query = urllib.parse.urlencode({"db": db, "q": q, "epoch": "ns"})
    with urllib.request.urlopen(f"{url}/query?{query}", timeout=15) as response:
        return json.loads(response.read())


def _estimates(ids: list[str]) -> EstimateBatch:
    n = len(ids)
    f = np.arange(n, dtype=np.float64) + 0.5
    return EstimateBatch(
        "pump",
        np.array(ids),
        np.full(n, "temp"),
        T0 + np.arange(n, dtype=np.int64),
        f,
        np.full(n, ""),
        f,
        f,
        f,
        f,
    )


def _influxdb_sink(influxdb: Any, tmp: Path) -> SinkCase:
    db = f"contract_{uuid.uuid4().hex[:8]}"
    spec = InfluxDBSinkSpec(
        kind="influxdb", url=influxdb.url, database=db, create_database=True, flush_interval=0.1
    )
    dead = tmp / "dead.jsonl"
    good = [_estimates(["pump-0", "pump-1"]), _estimates(["pump-2", "pump-0", "pump-1"])]

    def read_back() -> list[Any]:
        result = _influx_query(influxdb.url, db, "SELECT value, twin_id FROM dte_readings")["results"][0]
        return sorted((twin, t) for s in result.get("series", []) for t, _, twin in s["values"])

    def expected() -> list[Any]:
        rows = {(t, ts) for b in good for t, ts in zip(b.twin_id.tolist(), b.time_ns.tolist(), strict=True)}
        return sorted(rows)  # a point per series and time: a row written twice is one point

    return SinkCase(
        "influxdb",
        lambda: InfluxDBSink(spec, dead),
        good,
        expected,
        read_back,
        bad=_estimates(["line\nbreak"]),
        dead_letters=lambda: DeadLetterLog(dead).read() if dead.exists() else [],
    )


@pytest.mark.parametrize("check", list(source_checks()), ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", SOURCES)
def test_source_contract(name: str, check: Callable[[Any, SourceCase], None], kafka: Any) -> None:
    case = SOURCES[name](kafka)
    check(case.build(), case)


@pytest.mark.parametrize("check", list(sink_checks()), ids=lambda c: c.__name__)
def test_influxdb_sink_contract(
    check: Callable[[Any, SinkCase], None], influxdb: Any, tmp_path: Path
) -> None:
    case = _influxdb_sink(influxdb, tmp_path)
    check(case.build(), case)
