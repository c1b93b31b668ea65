"""librdkafka's own log lines: once per kind and outage, then counted (no Kafka needed).

A consumer pointed at a port where nothing listens makes librdkafka log a failed connection
attempt many times a second; :class:`DriverLog` must pass the first and count the rest.
"""

from __future__ import annotations

import logging
import socket
import time

import pytest
from confluent_kafka import Consumer

from dte_stream.connectors.kafka.client import DRIVER_LOG, DriverLog, ErrorLog, make_client
from dte_stream.spec.kafka import KafkaSourceSpec


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_broker_that_is_down_is_logged_once_then_counted(caplog: pytest.LogCaptureFixture) -> None:
    spec = KafkaSourceSpec(kind="kafka", bootstrap_servers=f"127.0.0.1:{_closed_port()}", topics=["t"])
    errors = ErrorLog("source plant")
    consumer = make_client(
        Consumer,
        spec,
        {
            **spec.client_config(),
            "group.id": "g",
            "reconnect.backoff.ms": "10",
            "reconnect.backoff.max.ms": "50",
        },
        errors,
    )
    with caplog.at_level(logging.INFO, logger=DRIVER_LOG.name):
        try:
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                consumer.poll(0.05)
        finally:
            # closed first: close() still delivers queued callbacks, which would start a new
            # outage if the client were already declared working (seen under load)
            consumer.close()
        errors.clear()  # the client works again
    driver = [r for r in caplog.records if r.name == DRIVER_LOG.name]
    warnings = [r.getMessage() for r in driver if r.levelno >= logging.WARNING]
    assert 1 <= len(warnings) <= 3, warnings  # one per kind (FAIL, perhaps another), not per attempt
    assert all(m.startswith("source plant: librdkafka ") for m in warnings)
    (summary,) = [r.getMessage() for r in driver if "during the outage" in r.getMessage()]
    hidden = int(summary.split(" wrote ")[1].split()[0])
    assert hidden >= 5, summary  # librdkafka did repeat itself; those lines were counted, not shown
    assert len(caplog.records) <= 6  # with ErrorLog's once-per-kind lines, the whole outage


def test_repeats_are_summarised_once_a_minute_while_the_outage_lasts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = DriverLog("sink out", clock=lambda: now[0])
    with caplog.at_level(logging.DEBUG, logger=DRIVER_LOG.name):
        for second in range(150):
            now[0] = float(second)
            log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", f"connect failed {second}")
        log.log(logging.DEBUG, "%s [%s] %s", "BROKER", "rdkafka#producer-1", "debug line")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "sink out: librdkafka FAIL: connect failed 0 (repeats are counted, not shown)"
    assert [m for m in messages if "still failing" in m] == [
        "sink out: librdkafka still failing: 60 FAIL lines not shown",
        "sink out: librdkafka still failing: 120 FAIL lines not shown",
    ]
    assert messages[-1] == "sink out: librdkafka BROKER: debug line"
