"""Publish simulated readings to an MQTT broker or a Kafka topic: ``dte-stream simulate``.

Readings come from the same signal generator as the simulator source (same seed, same
values and faults) and are encoded with a codec: ``json`` sends one reading per message,
``senml`` one pack per twin and tick (all its channels). Exactly ``count`` readings are sent;
QoS 1 acknowledgements (MQTT) or delivery reports (Kafka) are awaited before returning, so
"sent" means "accepted by the broker".

Destinations are URLs: ``mqtt://HOST:PORT/TOPIC`` publishes JSON to ``TOPIC/<twin id>`` and
SenML to ``TOPIC/<twin id>/senml`` (the subscriptions of ``dataflows/mqtt_to_influxdb.yaml``);
``kafka://HOST:PORT/TOPIC`` produces to ``TOPIC`` with the twin id as record key.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote, urlsplit

import numpy as np
import orjson

from dte_stream.batches import ReadingBatch
from dte_stream.codecs import get_codec
from dte_stream.connectors.simulator.signals import ChunkSignals, profile_for
from dte_stream.connectors.simulator.source import CHUNK_TWINS, twin_ids
from dte_stream.errors import ConfigError, ConnectorError
from dte_stream.spec.model import SimulatedChannelSpec
from dte_stream.times import NS_PER_S, now_ns

__all__ = [
    "Destination",
    "SimulationPlan",
    "default_start_ns",
    "parse_destination",
    "publish",
    "simulated_messages",
]

DEFAULT_CHANNELS = ("temperature", "pressure", "flow")


@dataclass(frozen=True, slots=True)
class Destination:
    """Where ``simulate`` sends: ``kind`` mqtt or kafka, host, port, topic."""

    kind: str
    host: str
    port: int
    topic: str

    def __str__(self) -> str:
        return f"{self.kind}://{self.host}:{self.port}/{self.topic}"


def parse_destination(url: str) -> Destination:
    """Parse ``mqtt://HOST:PORT/TOPIC`` or ``kafka://HOST:PORT/TOPIC`` (errors say what is wrong)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "kafka"):
        raise ConfigError(f"--to {url!r}: use mqtt://HOST:PORT/TOPIC or kafka://HOST:PORT/TOPIC")
    topic = unquote(parts.path.lstrip("/"))
    if not topic:
        raise ConfigError(
            f"--to {url!r}: no topic; add it after the port, e.g. {parts.scheme}://HOST:PORT/sensors"
        )
    if any(c in topic for c in "+#\x00"):
        raise ConfigError(f"--to {url!r}: topic {topic!r} may not contain '+', '#' or NUL")
    try:
        port = parts.port or (1883 if parts.scheme == "mqtt" else 9092)
    except ValueError:
        raise ConfigError(f"--to {url!r}: the port is not a number in 1..65535") from None
    return Destination(parts.scheme, parts.hostname or "127.0.0.1", port, topic)


@dataclass(frozen=True, slots=True)
class SimulationPlan:
    """What to simulate: twins of a type, their channels, how many readings, how fast."""

    twins: int
    count: int
    twin_type: str = "pump"
    channels: tuple[str, ...] = DEFAULT_CHANNELS
    seed: int = 42
    interval_s: float = 1.0
    start_ns: int | None = None
    codec: str = "json"


def default_start_ns(plan: SimulationPlan, rate: float | None = None) -> int:
    """The event time of the first reading when none is given: never in the future.

    Each twin's readings are ``interval_s`` apart. When they can be sent at least that slowly
    (``rate`` readings per second at most one tick of every twin per ``interval_s``), they are
    stamped from now on, as live sensors would be. Sent faster (or with no rate, as fast as
    the broker takes), the ticks would run ahead of the wall clock, so they are moved back to
    end when the sending ends: a backfill of the recent past, never readings stamped minutes
    ahead that a twin's clock-skew check would flag.

    >>> plan = SimulationPlan(twins=10, count=300)  # 10 ticks of 10 twins x 3 channels
    >>> 9 <= (now_ns() - default_start_ns(plan)) / NS_PER_S <= 11  # as fast as possible: 10 s back
    True
    >>> 0 <= (now_ns() - default_start_ns(plan, rate=30.0)) / NS_PER_S <= 1  # real time: from now
    True
    """
    now = now_ns() // NS_PER_S * NS_PER_S
    ticks = math.ceil(plan.count / (plan.twins * len(plan.channels)))
    span_ns = ticks * round(plan.interval_s * NS_PER_S)
    sending_ns = round(plan.count / rate * NS_PER_S) if rate else 0
    return now - max(0, span_ns - sending_ns)


def simulated_messages(plan: SimulationPlan) -> Iterator[tuple[str, bytes, int]]:
    """Yield (twin id, payload, readings in it) until exactly ``plan.count`` readings are out."""
    codec = get_codec(plan.codec)
    ids = twin_ids(plan.twin_type, plan.twins)
    start = plan.start_ns if plan.start_ns is not None else default_start_ns(plan)
    profiles: list[SimulatedChannelSpec] = [profile_for(c, {}) for c in plan.channels]
    chunks = [
        ChunkSignals(
            seed=plan.seed,
            chunk=c,
            twin_ids=ids[c * CHUNK_TWINS : (c + 1) * CHUNK_TWINS],
            channels=list(plan.channels),
            profiles=profiles,
            start_ns=start,
            interval_ns=round(plan.interval_s * NS_PER_S),
            faults_per_twin_hour=0.5,
        )
        for c in range(math.ceil(plan.twins / CHUNK_TWINS))
    ]
    channels = np.asarray(plan.channels, dtype=np.str_)
    names = list(plan.channels)
    remaining = plan.count
    tick = 0
    while remaining > 0:
        for sig in chunks:
            t, values = sig.values(tick)
            if plan.codec == "json" and np.isfinite(values).all():
                # One reading per message, written by orjson directly: the bytes the json
                # codec's encode gives for a one-reading batch (no batch per reading).
                time_ns = int(t)
                for twin, row in zip(sig.twin_ids.tolist(), values.tolist(), strict=True):
                    for channel, value in zip(names, row, strict=True):
                        if remaining <= 0:
                            return
                        remaining -= 1
                        record = {"twin_id": twin, "channel": channel, "time_ns": time_ns, "value": value}
                        yield twin, orjson.dumps([record]), 1
                continue
            for i, twin in enumerate(sig.twin_ids.tolist()):
                if remaining <= 0:
                    return
                if plan.codec == "senml":
                    k = min(len(channels), remaining)
                    batch = ReadingBatch.from_columns([twin] * k, channels[:k], [t] * k, values[i, :k])
                    remaining -= k
                    yield twin, codec.encode(batch), k
                else:
                    for j in range(len(channels)):
                        if remaining <= 0:
                            return
                        one = ReadingBatch.from_columns(
                            [twin], channels[j : j + 1], [t], values[i, j : j + 1]
                        )
                        remaining -= 1
                        yield twin, codec.encode(one), 1
        tick += 1


class _Sender(Protocol):
    def send(self, twin_id: str, payload: bytes) -> None: ...

    def finish(self, timeout: float) -> int: ...


class _MqttSender:
    """QoS 1 publisher that waits for every PUBACK at the end."""

    def __init__(self, dest: Destination, username: str | None, password: str | None, suffix: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.topic = dest.topic
        self.suffix = suffix
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"dte-simulate-{now_ns() % 10**9}",
            protocol=mqtt.MQTTv5,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self._acked = 0
        self._lock = threading.Lock()
        self.client.on_publish = self._on_publish
        try:
            rc = self.client.connect(dest.host, dest.port, keepalive=30)
        except OSError as exc:
            raise ConnectorError(f"cannot reach the MQTT broker at {dest.host}:{dest.port}: {exc}") from None
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectorError(
                f"MQTT broker {dest.host}:{dest.port} refused the connection: {mqtt.error_string(rc)}"
            )
        self.client.loop_start()
        self.sent = 0

    def _on_publish(self, client: object, userdata: object, mid: int, reason: object, props: object) -> None:
        with self._lock:
            self._acked += 1

    def send(self, twin_id: str, payload: bytes) -> None:
        info = self.client.publish(f"{self.topic}/{twin_id}{self.suffix}", payload, qos=1)
        if info.rc != 0:
            raise ConnectorError(f"MQTT publish failed: rc={info.rc}")
        self.sent += 1

    def finish(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._acked >= self.sent:
                    break
            time.sleep(0.01)
        self.client.disconnect()
        self.client.loop_stop()
        with self._lock:
            return self._acked


class _KafkaSender:
    """Batched producer that waits for every delivery report at the end."""

    def __init__(self, dest: Destination) -> None:
        from confluent_kafka import KafkaException, Producer

        self.topic = dest.topic
        self.failed = 0
        self.delivered = 0
        self.sent = 0
        try:
            self.producer = Producer(
                {
                    "bootstrap.servers": f"{dest.host}:{dest.port}",
                    "linger.ms": 20,
                    "compression.type": "lz4",
                    "enable.idempotence": True,
                    "queue.buffering.max.messages": 1_000_000,
                }
            )
            self.producer.list_topics(timeout=10)
        except KafkaException as exc:
            raise ConnectorError(f"cannot reach Kafka at {dest.host}:{dest.port}: {exc}") from None

    def _report(self, err: object, msg: object) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed += 1

    def send(self, twin_id: str, payload: bytes) -> None:
        while True:
            try:
                self.producer.produce(self.topic, payload, key=twin_id.encode(), on_delivery=self._report)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.sent += 1
        if self.sent % 1000 == 0:  # serve delivery reports now and then, not per record
            self.producer.poll(0)

    def finish(self, timeout: float) -> int:
        self.producer.flush(timeout)
        return self.delivered


def publish(
    plan: SimulationPlan,
    dest: Destination,
    *,
    rate: float | None = None,
    username: str | None = None,
    password: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Send exactly ``plan.count`` readings to ``dest``; returns the readings acknowledged.

    ``rate`` is readings per second (None or 0: as fast as possible).
    """
    if plan.start_ns is None:
        plan = dataclasses.replace(plan, start_ns=default_start_ns(plan, rate))
    sender: _Sender
    if dest.kind == "kafka":
        sender = _KafkaSender(dest)
    else:
        sender = _MqttSender(dest, username, password, "/senml" if plan.codec == "senml" else "")
    sent_readings = 0
    acked_messages = 0
    started = time.monotonic()
    last_report = started
    per_message: list[int] = []
    try:
        for twin, payload, readings in simulated_messages(plan):
            sender.send(twin, payload)
            per_message.append(readings)
            sent_readings += readings
            if rate:
                ahead = sent_readings / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            if progress is not None and time.monotonic() - last_report >= 1.0:
                last_report = time.monotonic()
                progress(sent_readings, plan.count)
    finally:
        acked_messages = sender.finish(timeout=60)
    if acked_messages < len(per_message):
        raise ConnectorError(
            f"{dest}: only {acked_messages} of {len(per_message)} messages were acknowledged by the broker"
        )
    return sum(per_message)
