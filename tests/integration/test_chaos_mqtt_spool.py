"""MQTT chaos with the disk spool, against real Mosquitto and InfluxDB: InfluxDB down during a
stream larger than the source's memory and than its spool, the daemon killed while it waits.

Run A drains the readings without trouble. Run B: the daemon runs; InfluxDB is stopped; the
whole stream is published meanwhile (every PUBACK received by the publisher). The sink holds
the dataflow, the source keeps receiving into its spool (``max_buffered_messages`` and
``receive_maximum`` 500: memory holds few messages) until the spool is full (1 MiB, about a
third of the stream), then stops acknowledging, so the broker keeps the rest of the session.
The daemon is killed with SIGKILL while it holds all that; InfluxDB starts again; the daemon
restarts from its recovery directory, drains its spool first, then the broker's queue. Every
field of every stored point and every array of every twin's final state must equal run A's,
nothing may be dead-lettered, and the broker must hold nothing for the session at the end.

A second case stops the daemon with SIGTERM while InfluxDB is down, with the spool of the
default (a recovery directory, ``spool`` unset): the daemon must end within the sink's
``close_timeout`` (plus start-up slack; a hang detector, not a speed test) with exit code 130,
one line and no traceback, the readings it could not store in its spool and none left at the
broker; the restart, once InfluxDB is back, must store every point with every field and leave
every twin's state as run A's.

Short mode (CI): 18,000 readings for 300 twins. ``DTE_CHAOS_LONG=1``: 60,000 for 1,000 twins,
and InfluxDB stays down at least 120 s.
"""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mqtt_chaos
import pytest
from test_pipeline_kafka import _count

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LONG = os.environ.get("DTE_CHAOS_LONG", "").strip().lower() not in ("", "0", "false", "no")
TWINS, STEPS = (1000, 30) if LONG else (300, 30)
OUTAGE = 120.0 if LONG else 0.0  # at least this long down (s); short mode: as long as it takes
SPOOL_BYTES = 2**20
MEMORY = 500  # max_buffered_messages and receive_maximum
CLOSE_TIMEOUT = 5.0  # the InfluxDB sink's close_timeout in the SIGTERM case (s)
WARMUP = 600  # readings stored before InfluxDB is stopped: the daemon runs


def _small_memory(spec: dict[str, Any]) -> None:
    """Few messages in memory, a small sink buffer: an outage reaches the spool at once."""
    spec["sources"][0].update(max_buffered_messages=MEMORY, receive_maximum=MEMORY, batch_size=500)
    spec["sinks"][0].update(
        batch_size=500,
        max_buffer_lines=2000,
        close_timeout=f"{CLOSE_TIMEOUT:g}s",
        retries={"initial_backoff": "100ms", "max_backoff": "1s"},
    )


def _spool_spec(spec: dict[str, Any]) -> None:
    _small_memory(spec)
    spec["sources"][0]["spool"] = {"max_bytes": SPOOL_BYTES}


@pytest.fixture(scope="module")
def messages() -> list[tuple[str, bytes]]:
    return list(mqtt_chaos.readings(TWINS, STEPS))


@pytest.fixture(scope="module")
def uninterrupted(
    broker: Any, influxdb: Any, messages: list[tuple[str, bytes]], tmp_path_factory: pytest.TempPathFactory
) -> mqtt_chaos.Run:
    """Run A: every reading drained without trouble (the spool of the default)."""
    a = mqtt_chaos.drain(
        broker, influxdb.url, tmp_path_factory.mktemp("spool-a"), "a", messages, tweak=_small_memory
    )
    assert a.processed == [len(messages)]
    return a


def _new_run(broker: Any, influx_url: str, tmp_path: Path, tweak: Any) -> tuple[mqtt_chaos.Run, Path, str]:
    """Run B's folder, spec and topic, with the daemon's persistent session made."""
    topic = f"spool{uuid.uuid4().hex[:8]}"
    b = mqtt_chaos.Run(
        "b", tmp_path / "b", f"dte_b_{uuid.uuid4().hex[:6]}", f"dte-spool-{uuid.uuid4().hex[:8]}"
    )
    b.dir.mkdir()
    url = f"mqtt://{broker.host}:{broker.port}"
    spec = mqtt_chaos.write_spec(b.dir / "flow.yaml", url, topic, b.client_id, influx_url, b.db, tweak)
    mqtt_chaos.make_session(broker.host, broker.port, b.session_id, f"{topic}/+")
    return b, spec, topic


def _assert_equal_to(
    influxdb: Any, private_influxdb: Any, a: mqtt_chaos.Run, b: mqtt_chaos.Run, total: int
) -> None:
    """Every field of every point and every twin's state as run A's; nothing dead-lettered."""
    mqtt_chaos.assert_same(influxdb.url, a, b, total, private_influxdb.url)
    letters = b.dir / "dead_letters.jsonl"
    assert not letters.exists() or letters.read_bytes() == b"", letters.read_text()[:2000]


@pytest.fixture(scope="module")
def broker(devservices_api: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Mosquitto of this module only: it is restarted."""
    with mqtt_chaos.private_mosquitto(devservices_api, tmp_path_factory.mktemp("spool-mosquitto")) as svc:
        yield svc


@pytest.fixture
def private_influxdb(devservices_api: Any, tmp_path: Path) -> Iterator[Any]:
    """An InfluxDB of this test alone: it is stopped and started again."""
    with mqtt_chaos.private_service(devservices_api, "influxdb", tmp_path / "influxdb") as svc:
        yield svc


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_influxdb_down_during_a_stream_larger_than_the_spool_loses_and_repeats_nothing(
    broker: Any,
    influxdb: Any,
    private_influxdb: Any,
    devservices_api: Any,
    messages: list[tuple[str, bytes]],
    uninterrupted: mqtt_chaos.Run,
    tmp_path: Path,
) -> None:
    total = len(messages)
    b, spec, topic = _new_run(broker, private_influxdb.url, tmp_path, _spool_spec)
    log = b.dir / "daemon.log"
    port = devservices_api.free_ports(1)[0]

    def count() -> int:
        return _count(private_influxdb.url, b.db)

    daemon = mqtt_chaos.Daemon(spec, b.recovery_dir, log, "--http", f"127.0.0.1:{port}")
    try:
        mqtt_chaos.publish(broker.host, broker.port, topic, messages[:WARMUP])
        mqtt_chaos.wait(daemon, lambda: count() >= WARMUP, 180, "the first points in InfluxDB")
        devservices_api.stop(private_influxdb)
        down_since = time.monotonic()
        mqtt_chaos.publish(broker.host, broker.port, topic, messages[WARMUP:])
        mqtt_chaos.wait(daemon, lambda: _metric(port, "dte_mqtt_spool_full_total") >= 1, 120, "a full spool")
        spooled = _metric(port, "dte_mqtt_spooled_total")
        spool_bytes = _metric(port, "dte_mqtt_spool_bytes")
        assert spool_bytes <= SPOOL_BYTES
        assert "holds its max_bytes" in daemon.output()
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - down_since)))
        daemon.kill()  # with the spool full and the broker holding the rest
        b.events.append(f"killed with {spooled:,.0f} messages spooled ({spool_bytes:,.0f} bytes)")
        devservices_api.restart(private_influxdb)
        b.events.append(f"InfluxDB down {time.monotonic() - down_since:.0f} s")
        daemon = mqtt_chaos.Daemon(spec, b.recovery_dir, log)
        mqtt_chaos.wait(daemon, lambda: count() >= total, 180, f"{total} points in InfluxDB")
        time.sleep(1.5)  # anything that still arrives (a repeat) arrives now
        b.processed.append(daemon.stop())
    finally:
        daemon.ensure_dead()
    print(f"spool chaos: {'; '.join(b.events)}; the restart processed {b.processed[-1]:,} readings")
    assert WARMUP < spooled < total, "the spool held everything: publish more than it holds"
    assert mqtt_chaos.left_in_session(broker.host, broker.port, b.session_id) == 0
    _assert_equal_to(influxdb, private_influxdb, uninterrupted, b, total)
    assert "0 dead letters" in log.read_text()


_READ_FIRST = re.compile(r"([0-9]+) spooled messages are read first")


def test_sigterm_while_influxdb_is_down_spools_the_rest_and_the_restart_stores_everything(
    broker: Any,
    influxdb: Any,
    private_influxdb: Any,
    devservices_api: Any,
    messages: list[tuple[str, bytes]],
    uninterrupted: mqtt_chaos.Run,
    tmp_path: Path,
) -> None:
    """The spool of the default: a recovery directory, ``spool`` unset in the spec."""
    total = len(messages)
    b, spec, topic = _new_run(broker, private_influxdb.url, tmp_path, _small_memory)
    log = b.dir / "daemon.log"
    port = devservices_api.free_ports(1)[0]

    def count() -> int:
        return _count(private_influxdb.url, b.db)

    daemon = mqtt_chaos.Daemon(spec, b.recovery_dir, log, "--http", f"127.0.0.1:{port}")
    try:
        mqtt_chaos.publish(broker.host, broker.port, topic, messages[:WARMUP])
        mqtt_chaos.wait(daemon, lambda: count() >= WARMUP, 180, "the first points in InfluxDB")
        stored_before = count()
        devservices_api.stop(private_influxdb)
        mqtt_chaos.publish(broker.host, broker.port, topic, messages[WARMUP:])
        # every message received and on disk (the publisher had every PUBACK)
        mqtt_chaos.wait(daemon, lambda: _metric(port, "dte_mqtt_spooled_total") >= total, 120, "all spooled")
        handed = _metric(port, "dte_mqtt_messages_in_total")
        b.events.append(f"{handed:,.0f} of {total:,} handed to the dataflow at the SIGTERM")
        started = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        code = daemon.proc.wait(CLOSE_TIMEOUT + 60)  # a hang detector; the time is printed
        b.events.append(f"exit {code} {time.monotonic() - started:.1f} s after the SIGTERM")
        output = daemon.output()
        assert code == 130, output[-3000:]
        assert "points not written" in output, output[-3000:]
        assert "restart with the same recovery directory" in output
        assert "Traceback" not in output, output[-5000:]
        assert "panicked" not in output, output[-5000:]
        # nothing waits at the broker: what was not stored is in the spool (acknowledged once durable)
        assert mqtt_chaos.left_in_session(broker.host, broker.port, b.session_id, wait=3.0) == 0
        devservices_api.restart(private_influxdb)
        daemon = mqtt_chaos.Daemon(spec, b.recovery_dir, log)
        mqtt_chaos.wait(daemon, lambda: count() >= total, 180, f"{total} points in InfluxDB")
        time.sleep(1.5)  # anything that still arrives (a repeat) arrives now
        b.processed.append(daemon.stop())
        read_first = _READ_FIRST.findall(daemon.output())
    finally:
        daemon.ensure_dead()
    print(
        f"SIGTERM, InfluxDB down, default spool: {'; '.join(b.events)}; {stored_before:,} points stored "
        f"before the outage; the restart read {read_first} spooled messages first and processed "
        f"{b.processed[-1]:,} readings"
    )
    assert handed < total, "the dataflow had every message before the stop: publish more"
    assert read_first, "the restart read nothing from the spool"
    assert int(read_first[0]) >= total - stored_before  # every reading not stored was spooled
    assert "disk spool in" in log.read_text()
    _assert_equal_to(influxdb, private_influxdb, uninterrupted, b, total)
