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

Short mode (CI): 18,000 readings for 300 twins. ``DTE_CHAOS_LONG=1``: 60,000 for 1,000 twins,
and InfluxDB stays down at least 120 s.
"""

from __future__ import annotations

import os
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mqtt_chaos
import pytest
from ci import skip_or_fail
from test_pipeline_kafka import _count

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LONG = os.environ.get("DTE_CHAOS_LONG", "").strip().lower() not in ("", "0", "false", "no")
TWINS, STEPS = (1000, 30) if LONG else (300, 30)
OUTAGE = 120.0 if LONG else 0.0  # at least this long down (s); short mode: as long as it takes
SPOOL_BYTES = 2**20
MEMORY = 500  # max_buffered_messages and receive_maximum


def _spool_spec(spec: dict[str, Any]) -> None:
    source = spec["sources"][0]
    source.update(
        spool={"max_bytes": SPOOL_BYTES},
        max_buffered_messages=MEMORY,
        receive_maximum=MEMORY,
        batch_size=500,
    )
    spec["sinks"][0].update(
        batch_size=500,
        max_buffer_lines=2000,
        retries={"initial_backoff": "100ms", "max_backoff": "1s"},
    )


@pytest.fixture(scope="module")
def broker(devservices_api: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Mosquitto of this module only: it is restarted."""
    with mqtt_chaos.private_mosquitto(devservices_api, tmp_path_factory.mktemp("spool-mosquitto")) as svc:
        yield svc


@pytest.fixture
def private_influxdb(devservices_api: Any, tmp_path: Path) -> Iterator[Any]:
    """An InfluxDB of this test alone: it is stopped and started again."""
    try:
        devservices_api.check_installed("influxdb")
    except devservices_api.ServiceUnavailable as exc:
        skip_or_fail(str(exc))
    svc = devservices_api.start("influxdb", tmp_path / "influxdb")
    try:
        yield svc
    finally:
        devservices_api.stop(svc)


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_influxdb_down_during_a_stream_larger_than_the_spool_loses_and_repeats_nothing(
    broker: Any, influxdb: Any, private_influxdb: Any, devservices_api: Any, tmp_path: Path
) -> None:
    messages = list(mqtt_chaos.readings(TWINS, STEPS))
    total = len(messages)
    a = mqtt_chaos.drain(broker, influxdb.url, tmp_path, "a", messages, tweak=_spool_spec)
    assert a.processed == [total]

    topic = f"spool{uuid.uuid4().hex[:8]}"
    b = mqtt_chaos.Run(
        "b", tmp_path / "b", f"dte_b_{uuid.uuid4().hex[:6]}", f"dte-spool-{uuid.uuid4().hex[:8]}"
    )
    b.dir.mkdir()
    url = f"mqtt://{broker.host}:{broker.port}"
    spec = mqtt_chaos.write_spec(
        b.dir / "flow.yaml", url, topic, b.client_id, private_influxdb.url, b.db, _spool_spec
    )
    mqtt_chaos.make_session(broker.host, broker.port, b.session_id, f"{topic}/+")
    log = b.dir / "daemon.log"
    port = devservices_api.free_ports(1)[0]

    def count() -> int:
        return _count(private_influxdb.url, b.db)

    daemon = mqtt_chaos.Daemon(spec, b.recovery_dir, log, "--http", f"127.0.0.1:{port}")
    try:
        warmup = 600  # the first readings stored: the daemon runs
        mqtt_chaos.publish(broker.host, broker.port, topic, messages[:warmup])
        mqtt_chaos.wait(daemon, lambda: count() >= warmup, 180, "the first points in InfluxDB")
        devservices_api.stop(private_influxdb)
        down_since = time.monotonic()
        mqtt_chaos.publish(broker.host, broker.port, topic, messages[warmup:])
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
    assert warmup < spooled < total, "the spool held everything: publish more than it holds"
    assert mqtt_chaos.left_in_session(broker.host, broker.port, b.session_id) == 0
    cmp = mqtt_chaos.compare(influxdb.url, a, b, private_influxdb.url)
    assert cmp.points_a == total
    assert cmp.equal, (
        f"{cmp.missing} points missing, {cmp.extra} extra, {cmp.differing_points} differ, "
        f"{cmp.differing_twins} twins' state differs\n" + "\n".join(cmp.examples)
    )
    output = log.read_text()
    assert " 0 dead letters" in output.splitlines()[-1] or "0 dead letters" in output
    letters = b.dir / "dead_letters.jsonl"
    assert not letters.exists() or letters.read_bytes() == b"", letters.read_text()[:2000]
