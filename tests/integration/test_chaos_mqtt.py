"""MQTT chaos against real Mosquitto and InfluxDB: the daemon killed with SIGKILL while it drains
a backlog, and Mosquitto restarted while it drains; each run against an uninterrupted one.

Every case queues the same QoS 1 readings in a fresh persistent session (every PUBACK received
by the publisher), drains them with `dte-stream run --recovery-dir`, and compares every field of
every stored point and every array of every twin's final state with run A, which drained the
same readings without interruption: 0 lost, 0 duplicated, 0 applied twice (a reading applied
twice changes the filter's estimate and std, so equal states and points prove it). The
daemon's own count of processed readings must equal the readings published when it ran once.

Short mode (CI): 18,000 readings for 300 twins, 3 kills, 1 broker restart. ``DTE_CHAOS_LONG=1``
(``make chaos``): 60,000 readings for 1,000 twins, 10 kills, 3 broker restarts. The machinery is in
mqtt_chaos.py; benchmarks/mqtt_broker_restart.py prints the same comparison as figures.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mqtt_chaos
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LONG = os.environ.get("DTE_CHAOS_LONG", "").strip().lower() not in ("", "0", "false", "no")
TWINS, STEPS = (1000, 30) if LONG else (300, 30)
KILLS = 10 if LONG else 3
RESTARTS = 3 if LONG else 1
PUBLISH_SECONDS = 150 if LONG else 30  # the kill test publishes while the daemon runs
SEED = 20261207


@pytest.fixture(scope="module")
def broker(devservices_api: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Mosquitto of this module only: it is restarted."""
    with mqtt_chaos.private_mosquitto(devservices_api, tmp_path_factory.mktemp("chaos-mosquitto")) as svc:
        yield svc


@pytest.fixture(scope="module")
def messages() -> list[tuple[str, bytes]]:
    return list(mqtt_chaos.readings(TWINS, STEPS))


@pytest.fixture(scope="module")
def uninterrupted(
    broker: Any, influxdb: Any, messages: list[tuple[str, bytes]], tmp_path_factory: pytest.TempPathFactory
) -> mqtt_chaos.Run:
    """Run A: the same readings drained without interruption."""
    run = mqtt_chaos.drain(broker, influxdb.url, tmp_path_factory.mktemp("chaos"), "a", messages)
    assert run.processed == [len(messages)]
    assert mqtt_chaos.left_in_session(broker.host, broker.port, run.session_id) == 0
    return run


def test_mosquitto_restarted_mid_stream_applies_every_reading_once(
    broker: Any,
    influxdb: Any,
    devservices_api: Any,
    messages: list[tuple[str, bytes]],
    uninterrupted: mqtt_chaos.Run,
    tmp_path: Path,
) -> None:
    total = len(messages)
    rng = random.Random(SEED)

    def restarts(daemon: mqtt_chaos.Daemon, run: mqtt_chaos.Run, count: Any) -> mqtt_chaos.Daemon:
        for k in range(RESTARTS):
            # at a seeded point of the drain, measured in stored points rather than seconds, so
            # that a fast machine restarts mid-stream too (a whole short drain takes ~2 s there)
            target = total * rng.uniform(0.05 + 0.8 * k / RESTARTS, 0.05 + 0.8 * (k + 0.5) / RESTARTS)
            mqtt_chaos.wait(daemon, lambda target=target: count() >= target, 120, "the drain's progress")
            before = count()
            if before >= total * 0.9:
                break
            run.events.append(f"broker restarted at {before:,} points")
            reconnects = daemon.output().count("reconnected to")
            devservices_api.restart(broker, rng.uniform(1.0, 3.0))
            # back in the session (the broker resends what it holds, the daemon acknowledges it),
            # and draining again, before the next restart or the final stop: a stop while the
            # daemon is still reconnecting leaves those messages to the next start (the kill
            # test covers that path)
            mqtt_chaos.wait(
                daemon,
                lambda n=reconnects: daemon.output().count("reconnected to") > n,
                60,
                "the daemon back in its session after the restart",
            )
            mqtt_chaos.wait(daemon, lambda before=before: count() > before, 60, "progress after the restart")
        return daemon

    run = mqtt_chaos.drain(broker, influxdb.url, tmp_path, "restarts", messages, chaos=restarts)
    assert len(run.events) >= 1, "the broker was never restarted mid-stream: queue more readings"
    assert run.processed == [total], f"{run.processed} readings processed for {total} published"
    left = mqtt_chaos.left_in_session(broker.host, broker.port, run.session_id)
    if left:
        # The broker still resends some messages whose acknowledgement it has not confirmed
        # (the stop came while they were on their way back). The next start must recognise
        # every one of them from its recovery state: acknowledge it, apply none.
        print(f"{left} messages still at the broker after the stop; starting once more")
        again = mqtt_chaos.Daemon(run.dir / "flow.yaml", run.recovery_dir, run.dir / "daemon.log")
        try:
            mqtt_chaos.wait(
                again, lambda: "\n[" in again.output(), 120, "the second run's first progress line"
            )
            run.processed.append(again.stop())
        finally:
            again.ensure_dead()
        assert run.processed == [total, 0], f"{run.processed}: a resent message was applied again"
        assert mqtt_chaos.left_in_session(broker.host, broker.port, run.session_id) == 0
    mqtt_chaos.assert_same(influxdb.url, uninterrupted, run, total)


def test_daemon_killed_mid_stream_applies_every_reading_once(
    broker: Any,
    influxdb: Any,
    messages: list[tuple[str, bytes]],
    uninterrupted: mqtt_chaos.Run,
    tmp_path: Path,
) -> None:
    """Readings published while the daemon runs (so that every kill lands mid-stream), the
    daemon killed with SIGKILL and started again from its recovery directory each time."""
    total = len(messages)
    rng = random.Random(SEED + 1)

    def kills(daemon: mqtt_chaos.Daemon, run: mqtt_chaos.Run, count: Any) -> mqtt_chaos.Daemon:
        spec, log = run.dir / "flow.yaml", run.dir / "daemon.log"
        for _ in range(KILLS):
            before = count()
            mqtt_chaos.wait(daemon, lambda before=before: count() > before, 120, "progress before the kill")
            time.sleep(rng.uniform(0.0, 0.8))  # anywhere in an epoch
            run.events.append(f"SIGKILL at {count():,} points")
            daemon.kill()
            daemon = mqtt_chaos.Daemon(spec, run.recovery_dir, log)
        return daemon

    run = mqtt_chaos.drain(
        broker, influxdb.url, tmp_path, "kills", messages, chaos=kills, rate=total / PUBLISH_SECONDS
    )
    print(f"kills: {'; '.join(run.events)}")
    stored = [int(e.rpartition(" at ")[2].split()[0].replace(",", "")) for e in run.events]
    assert len(stored) == KILLS
    assert all(0 < n < total for n in stored), f"a kill landed outside the stream: {run.events}"
    assert mqtt_chaos.left_in_session(broker.host, broker.port, run.session_id) == 0
    mqtt_chaos.assert_same(influxdb.url, uninterrupted, run, total)
