"""What the Kafka sinks write, and how driver errors and settings surface (no broker needed)."""

from __future__ import annotations

import logging
import time

import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException

from dte_stream.batches import EstimateBatch
from dte_stream.connectors.kafka import KafkaSink, KafkaSource, dead_letter_record, estimate_records
from dte_stream.connectors.kafka.client import ErrorLog, error_text, make_client
from dte_stream.errors import ConfigError, ConnectorError
from dte_stream.metrics import METRICS
from dte_stream.readings import DeadLetter
from dte_stream.spec.kafka import KafkaSinkSpec, KafkaSourceSpec


def _batch(twins: list[str], times: list[int]) -> EstimateBatch:
    n = len(twins)
    return EstimateBatch(
        twin_type="pump",
        twin_id=np.array(twins),
        channel=np.array(["temp"] * n),
        time_ns=np.array(times, dtype=np.int64),
        value=np.arange(n, dtype=np.float64),
        unit=np.array(["°C"] * n),
        estimate=np.arange(n, dtype=np.float64) + 0.5,
        std=np.full(n, 0.25),
        innovation=np.full(n, -0.5),
        nis=np.array([np.nan] + [1.0] * (n - 1)),
    )


def test_one_record_per_twin_rows_in_batch_order() -> None:
    t0 = 1_767_323_045_123_456_789
    batch = _batch(["p-2", "p-1", "p-2", 'p 3,="x"'], [t0, t0 + 1, t0 + 2, t0 + 3])
    records = dict(estimate_records(batch))
    assert sorted(records) == [b'p 3,="x"', b"p-1", b"p-2"]
    p2 = orjson.loads(records[b"p-2"])
    assert p2["twin_id"] == "p-2"
    assert p2["twin_type"] == "pump"
    assert [r["time_ns"] for r in p2["estimates"]] == [t0, t0 + 2]
    first = p2["estimates"][0]
    assert first == {
        "channel": "temp",
        "time": "2026-01-02T03:04:05.123456789Z",
        "time_ns": t0,
        "value": 0.0,
        "unit": "°C",
        "estimate": 0.5,
        "std": 0.25,
        "innovation": -0.5,
        "nis": None,  # NaN is not JSON
        "flags": 0,
        "anomaly_score": None,
    }
    assert orjson.loads(records[b'p 3,="x"'])["twin_id"] == 'p 3,="x"'


def test_empty_batch_writes_nothing() -> None:
    assert list(estimate_records(_batch([], []))) == []


def test_dead_letter_record_is_keyed_by_source() -> None:
    letter = DeadLetter("kafka://b:1/t/0@5", "not JSON", b"\xff", received_ns=7)
    key, value = dead_letter_record(letter)
    assert key == b"kafka://b:1/t/0@5"
    assert orjson.loads(value) == letter.to_json_dict()


def test_error_log_logs_each_kind_once_until_cleared(caplog: pytest.LogCaptureFixture) -> None:
    errors = ErrorLog("source s: t/0")
    down = KafkaError(KafkaError._ALL_BROKERS_DOWN, "3/3 brokers are down")
    with caplog.at_level(logging.INFO, logger="dte_stream.connectors.kafka"):
        for _ in range(5):
            errors(down)
        errors.clear()
        errors(down)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "brokers are down" in warnings[0]
    assert errors.fatal is None


def test_error_text_names_the_librdkafka_error() -> None:
    exc = KafkaException(KafkaError(KafkaError._TRANSPORT, "Broker transport failure"))
    assert error_text(exc) == "Broker transport failure (_TRANSPORT)"


def test_refused_settings_are_a_config_error_without_secrets() -> None:
    spec = KafkaSourceSpec(
        kind="kafka",
        bootstrap_servers="127.0.0.1:9",
        topics=["t"],
        settings={"no.such.property": "1", "sasl.password": "hunter2"},
    )
    with pytest.raises(ConfigError) as info:
        make_client(Consumer, spec, {"group.id": "g", **spec.client_config()}, ErrorLog("source kafka"))
    message = str(info.value)
    assert "no.such.property" in message
    assert "hunter2" not in message
    assert "sasl.password=**********" in message


def test_unreachable_brokers_are_a_connector_error_naming_them() -> None:
    # Port 9 on the loopback refuses connections: no broker, no service needed.
    spec = KafkaSourceSpec(kind="kafka", bootstrap_servers="127.0.0.1:9", topics=["t"], metadata_timeout=0.5)
    with pytest.raises(ConnectorError) as info:
        KafkaSource(spec).list_parts()
    message = str(info.value)
    assert "topic 't'" in message
    assert "127.0.0.1:9" in message


def test_sink_to_unreachable_brokers_fails_loudly_within_the_delivery_timeout() -> None:
    spec = KafkaSinkSpec(kind="kafka", bootstrap_servers="127.0.0.1:9", delivery_timeout=0.5)
    part = KafkaSink(spec).build("sink_kafka", 0, 1)
    before = METRICS.get("kafka_delivery_errors")
    started = time.monotonic()
    try:
        with pytest.raises(ConnectorError) as info:
            part.write_batch([_batch(["p-1", "p-2"], [0, 1])])
    finally:
        part.close()
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert "2 records were not delivered to topic 'dte.estimates' at Kafka 127.0.0.1:9" in message
    assert "timed out" in message.lower()
    assert METRICS.get("kafka_delivery_errors") - before == 2
