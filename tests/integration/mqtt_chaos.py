"""MQTT chaos, the machinery: a backlog of QoS 1 readings queued in the daemon's persistent
session, drained by `dte-stream run` while the broker is restarted or the daemon is killed.

Used by tests/integration/test_chaos_mqtt.py (the assertions) and by
benchmarks/mqtt_broker_restart.py (the reproduction tool that prints the figures). Each run
gets its own client id, database and recovery directory; the readings are the same in every
run, so a run with failures can be compared with an uninterrupted one field by field.

The readings: ``twins`` twins x 2 channels x ``steps`` steps, one JSON reading per message on
``<topic>/<twin id>``, fixed event times in the past, staleness out of reach (the twin type of
test_twin_recovery.py): nothing depends on when a run happens.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import paho.mqtt.client as mqtt
import yaml
from ci import skip_or_fail
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from test_pipeline_kafka import _count
from test_twin_recovery import TWIN_TYPE, _close, _points, _same_state, _twin_state

T0_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z
CHANNELS = ("temperature", "pressure")
FLOW = "twin_recovery"  # the flow name that test_twin_recovery's state readers expect


def twin_id(i: int) -> str:
    return f"pump-{i:04d}"


@contextlib.contextmanager
def private_service(devservices_api: Any, name: str, folder: Path) -> Iterator[Any]:
    """A service (``mosquitto``, ``influxdb``, ``alertmanager``...) of one test or module only:
    its tests stop and restart it, which the session's shared one must never see."""
    try:
        devservices_api.check_installed(name)
    except devservices_api.ServiceUnavailable as exc:
        skip_or_fail(str(exc))
    svc = devservices_api.start(name, folder)
    try:
        yield svc
    finally:
        devservices_api.stop(svc)


def private_mosquitto(devservices_api: Any, folder: Path) -> contextlib.AbstractContextManager[Any]:
    """A Mosquitto of one test module only (its tests restart or stop it), in ``folder``."""
    return private_service(devservices_api, "mosquitto", folder)


def readings(twins: int, steps: int, seed: int = 20261206) -> Iterator[tuple[str, bytes]]:
    """``(twin id, JSON payload)`` of every reading in time order: noisy levels and a few jumps."""
    rng = np.random.default_rng(seed)
    temp = 20.0 + 0.01 * np.arange(twins)[:, None] + rng.normal(0.0, 0.5, (twins, steps))
    pres = 2.0 + 0.001 * np.arange(twins)[:, None] + rng.normal(0.0, 0.05, (twins, steps))
    temp[::97, steps // 2 :] += 12.0  # level shifts: the gate, then resets
    for k in range(steps):
        for i in range(twins):
            for channel, values in (("temperature", temp), ("pressure", pres)):
                record = {"twin_id": twin_id(i), "channel": channel, "time_ns": T0_NS + k * 10**9}
                yield twin_id(i), orjson.dumps(record | {"value": float(values[i, k])})


def write_spec(
    path: Path,
    url: str,
    topic: str,
    client_id: str,
    influx_url: str,
    db: str,
    tweak: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """The daemon's spec: one MQTT client (QoS 1, persistent session) -> twin bank -> InfluxDB.

    ``tweak`` may change the spec (a dict, as in YAML) before it is written.
    """
    spec: dict[str, Any] = {
        "name": FLOW,
        "sources": [
            {
                "kind": "mqtt",
                "name": "plant",
                "url": url,
                "client_id": client_id,
                "twin_type": "pump",
                "reconnect_min_delay": 0.2,
                "reconnect_max_delay": 1.0,
                "subscriptions": [{"topic": f"{topic}/+", "template": f"{topic}/{{twin}}", "codec": "json"}],
            }
        ],
        "twin_types": [TWIN_TYPE],
        "sinks": [{"kind": "influxdb", "url": influx_url, "database": db, "create_database": True}],
        "dead_letters": {"path": str(path.parent / "dead_letters.jsonl")},
        "engine": {"shards": 4, "workers": 1, "epoch_seconds": 0.5},
    }
    if tweak is not None:
        tweak(spec)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _client(client_id: str) -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)


def _close_client(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()
    client._reset_sockets()  # paho closes its wake-up sockets only in __del__


def make_session(host: str, port: int, client_id: str, topic_filter: str) -> None:
    """Create the daemon's persistent session (QoS 1 subscription) before anything is published."""
    client = _client(client_id)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 86400
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect(host, port, clean_start=False, properties=props)
    client.loop_start()
    try:
        client.subscribe([(topic_filter, SubscribeOptions(qos=1))])
        if not subscribed.wait(10):
            raise AssertionError(f"no SUBACK for {topic_filter!r} within 10 s")
    finally:
        _close_client(client)


def publish(
    host: str, port: int, topic: str, messages: list[tuple[str, bytes]], rate: float | None = None
) -> None:
    """Publish every message with QoS 1 (``rate`` messages/s at most) and wait until the broker
    acknowledged each one."""
    client = _client(f"pub-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(host, port)
    client.loop_start()
    try:
        infos = []
        started = time.monotonic()
        for i, (twin, payload) in enumerate(messages):
            infos.append(client.publish(f"{topic}/{twin}", payload, 1))
            if i >= 20_000:  # paho's message ids wrap at 65,535: keep fewer than that outstanding
                infos[i - 20_000].wait_for_publish(60)
            if rate is not None and i % 50 == 49:
                time.sleep(max(0.0, started + (i + 1) / rate - time.monotonic()))
        for info in infos:
            info.wait_for_publish(60)
            if not info.is_published():
                raise AssertionError("a QoS 1 publish was not acknowledged within 60 s")
    finally:
        _close_client(client)


def left_in_session(host: str, port: int, client_id: str, wait: float = 1.5) -> int:
    """Messages the broker still holds for ``client_id`` (received here and not acknowledged)."""
    got = []
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
    )
    client.on_message = lambda _c, _u, m: got.append(m.mid)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 86400
    client.connect(host, port, clean_start=False, properties=props)
    client.loop_start()
    try:
        time.sleep(wait)
    finally:
        _close_client(client)
    return len(got)


_PROCESSED = re.compile(r"after [0-9.]+ s: ([0-9,]+) readings processed")


class Daemon:
    """`dte-stream run SPEC --recovery-dir DIR` as a child process, its output in a log file."""

    def __init__(self, spec: Path, recovery_dir: Path, log: Path, *extra: str) -> None:
        self.log = log
        self._start = log.stat().st_size if log.exists() else 0
        command = [sys.executable, "-m", "dte_stream", "run", str(spec), "--recovery-dir", str(recovery_dir)]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*command, *extra],
                stdout=out,
                stderr=out,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"dte-stream exited with {self.proc.returncode}:\n{self.output()}")

    def output(self) -> str:
        with self.log.open("rb") as fh:
            fh.seek(self._start)
            return fh.read().decode(errors="replace")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        """SIGTERM; the readings this run processed (its summary line)."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(90)
        if code != 0:
            raise AssertionError(f"dte-stream exited with {code} on SIGTERM:\n{self.output()}")
        found = _PROCESSED.findall(self.output())
        if not found:
            raise AssertionError(f"no summary line:\n{self.output()}")
        return int(found[-1].replace(",", ""))

    def ensure_dead(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def wait(daemon: Daemon | None, predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait for ``predicate``; the seconds it took. Fails if the daemon exits meanwhile."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if daemon is not None:
            daemon.check_alive()
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class Run:
    """One drain of the backlog: where its results are, and what happened."""

    name: str
    dir: Path
    db: str
    client_id: str
    processed: list[int] = field(default_factory=list)  # readings processed per daemon run
    drain_seconds: float = 0.0
    events: list[str] = field(default_factory=list)
    publisher: threading.Thread | None = None  # publishing while the daemon runs (``rate``)

    @property
    def recovery_dir(self) -> Path:
        return self.dir / "recovery"

    @property
    def session_id(self) -> str:
        """The MQTT client id of the source's one client (``{client_id}-0``)."""
        return f"{self.client_id}-0"


Chaos = Callable[["Daemon", "Run", Callable[[], int]], "Daemon"]


def drain(
    mosquitto: Any,
    influx_url: str,
    workdir: Path,
    name: str,
    messages: list[tuple[str, bytes]],
    *,
    chaos: Chaos | None = None,
    chaos_at_start: bool = False,
    rate: float | None = None,
    timeout: float = 180.0,
    tweak: Callable[[dict[str, Any]], None] | None = None,
    daemon_args: tuple[str, ...] = (),
) -> Run:
    """Queue ``messages`` in a fresh persistent session, then drain them with the daemon.

    ``chaos(daemon, run, count)`` runs once the daemon has started draining (the first points
    are in InfluxDB), or right after the daemon started with ``chaos_at_start`` (``count()`` is
    the number of points in InfluxDB) and returns the daemon that runs afterwards (the same,
    or a new one after a kill). With ``rate`` the messages are published while the daemon
    runs (``rate`` per second, from a thread), not queued before it starts. The run ends with
    a graceful stop once InfluxDB holds a point per reading. ``daemon_args`` go to the first
    daemon's command line (``--http HOST:PORT``).
    """
    run_dir = workdir / name
    run_dir.mkdir(parents=True)
    topic = f"chaos{uuid.uuid4().hex[:8]}"
    run = Run(name, run_dir, f"dte_{name}_{uuid.uuid4().hex[:6]}", f"dte-chaos-{uuid.uuid4().hex[:8]}")
    url = f"mqtt://{mosquitto.host}:{mosquitto.port}"
    spec = write_spec(run_dir / "flow.yaml", url, topic, run.client_id, influx_url, run.db, tweak)
    make_session(mosquitto.host, mosquitto.port, run.session_id, f"{topic}/+")
    publisher = None
    if rate is None:
        publish(mosquitto.host, mosquitto.port, topic, messages)
    else:
        publisher = threading.Thread(
            target=publish, args=(mosquitto.host, mosquitto.port, topic, messages, rate), daemon=True
        )
        publisher.start()
    run.publisher = publisher
    total = len(messages)

    def count() -> int:
        return _count(influx_url, run.db)

    log = run_dir / "daemon.log"
    started = time.monotonic()
    daemon = Daemon(spec, run.recovery_dir, log, *daemon_args)
    try:
        if chaos is not None:
            if not chaos_at_start:
                wait(daemon, lambda: count() > 0, 180, "the first points in InfluxDB")
            daemon = chaos(daemon, run, count)
            # running (its first progress line comes 5 s in, after the signal handlers), so
            # the SIGTERM below finds it draining, not starting
            wait(daemon, lambda: "\n[" in daemon.output(), 180, "the daemon's first progress line")
        wait(daemon, lambda: count() >= total, timeout, f"{total} points in InfluxDB")
        run.drain_seconds = time.monotonic() - started
        time.sleep(1.5)  # anything that still arrives (a repeat) arrives now
        if publisher is not None:
            publisher.join(60)
        run.processed.append(daemon.stop())
    except AssertionError as exc:
        run.events.append(f"{exc}"[:300])
        run.drain_seconds = time.monotonic() - started
        daemon.ensure_dead()
        raise
    finally:
        daemon.ensure_dead()
    return run


@dataclass
class Comparison:
    """Run B against the uninterrupted run A: every point, every field, every twin's state."""

    points_a: int
    points_b: int
    missing: int
    extra: int
    differing_points: int
    differing_twins: int
    examples: list[str]

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.differing_points or self.differing_twins)


def compare(influx_url: str, a: Run, b: Run, influx_url_b: str | None = None) -> Comparison:
    """B against A; B's points are read from ``influx_url_b`` when it has its own InfluxDB."""
    points_a, points_b = _points(influx_url, a.db), _points(influx_url_b or influx_url, b.db)
    examples: list[str] = []
    differing = 0
    for key in points_a.keys() & points_b.keys():
        pa, pb = points_a[key], points_b[key]
        diff = {f: (pb.get(f), v) for f, v in pa.items() if f not in pb or not _close(v, pb[f])}
        diff |= {f: (v, None) for f, v in pb.items() if f not in pa}
        if diff:
            differing += 1
            if len(examples) < 5:
                examples.append(f"point {key}: (B, A) {diff}")
    state_a, state_b = _twin_state(a.recovery_dir), _twin_state(b.recovery_dir)
    twins_differing = 0
    for twin in state_a.keys() | state_b.keys():
        fa, fb = state_a.get(twin), state_b.get(twin)
        if fa is None or fb is None:
            twins_differing += 1
            examples.append(f"{twin}: only in {'A' if fb is None else 'B'}")
            continue
        bad = [n for n, v in fa.items() if n not in fb or not _same_state(v, fb[n])]
        if bad:
            twins_differing += 1
            if len(examples) < 10:
                examples.append(f"{twin}: {bad[:4]} differ, e.g. {bad[0]}: A {fa[bad[0]]} B {fb[bad[0]]}")
    return Comparison(
        len(points_a),
        len(points_b),
        len(points_a.keys() - points_b.keys()),
        len(points_b.keys() - points_a.keys()),
        differing,
        twins_differing,
        examples,
    )


def assert_same(influx_url: str, a: Run, b: Run, total: int, influx_url_b: str | None = None) -> None:
    """Run B equals the uninterrupted run A: every field of every point, every twin's state."""
    cmp = compare(influx_url, a, b, influx_url_b)
    assert cmp.points_a == total
    assert cmp.equal, (
        f"{b.name} ({'; '.join(b.events)}) against the uninterrupted run: {cmp.missing} points "
        f"missing, {cmp.extra} extra, {cmp.differing_points} differ, {cmp.differing_twins} twins' "
        "state differs\n" + "\n".join(cmp.examples)
    )
