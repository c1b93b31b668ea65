"""MQTT ingest: MqttSource (and decoding) through Bytewax against a bare paho subscriber loop.

Every variant drains the same backlog: ``--messages`` QoS 1 messages that publisher
processes (``multiprocessing``, so they never share the consumer's GIL) put into the consumer's
persistent session while it is offline. The consumer then connects and the clock runs until it
has the last message: what is measured is the consumer's capacity, not the publishers'. Both
kinds of consumer use the same MQTT 5 session settings (clean start off, receive maximum
65535, QoS 1), so the broker treats them alike.

* bare loop: paho alone (``loop_start``), ``on_message`` counting messages; once more parsing
  each payload with ``orjson.loads`` (the least a decoder does);
* bare loop with deferred acks: paho with ``manual_ack``, every PUBACK sent after the clock
  stopped: what paho can receive at all (an auto-ack loop pays one PUBACK per message);
* ``MqttSource``: the source in a Bytewax dataflow (``run_main``), ``--ack`` (default
  ``after_epoch``, epochs of ``--epoch`` seconds), payloads counted;
* ``MqttSource + json``: the json codec decodes every payload into a ``ReadingBatch`` (one
  reading per message; twin id and channel from the topic template) as the dataflow's decode
  step does;
* SenML: packs of ``--pack`` readings per message, counted, parsed with orjson by the bare loop
  and decoded with the senml codec by the source; readings/s is what counts there.

Prints a Markdown table (messages/s, readings/s, ratio to the matching bare loop). A private
Mosquitto is started through deploy/services/devservices.py and stopped at the end.

    .venv/bin/python benchmarks/bench_mqtt_ingest.py --messages 60000 --packs 10000
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import orjson
import paho.mqtt.client as mqtt
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from private_service import private_service

from dte_stream.batches import RawBatch
from dte_stream.codecs import get_codec
from dte_stream.connectors.mqtt import MqttSource
from dte_stream.readings import ReadingBatch
from dte_stream.spec.mqtt import MqttSourceSpec

REPO = Path(__file__).resolve().parents[1]
T0_NS = 1_767_323_045_000_000_000
SESSION_EXPIRY = 600
RECEIVE_MAXIMUM = 65535


@dataclass(frozen=True)
class Broker:
    host: str
    port: int


@contextmanager
def private_broker() -> Iterator[Broker]:
    """A Mosquitto started (and stopped) through deploy/services/devservices.py."""
    with private_service("mosquitto") as svc:
        print(f"Mosquitto ready in {svc.startup_seconds} s at {svc.url}", file=sys.stderr)
        yield Broker(svc.host, svc.port)


# --- messages ------------------------------------------------------------------------------


def json_messages(prefix: str, count: int, twins: int, start: int, step: int) -> Iterator[tuple[str, bytes]]:
    """One reading per message: twin id and channel in the topic, time and value in the payload."""
    channels = ("temp", "flow", "pressure")
    for i in range(start, count, step):
        topic = f"{prefix}/pump-{i % twins:05d}/{channels[i % 3]}"
        yield topic, b'{"time_ns":%d,"value":%.3f}' % (T0_NS + i * 1_000_000, 20.0 + (i % 1000) / 100)


def senml_messages(prefix: str, count: int, pack: int, start: int, step: int) -> Iterator[tuple[str, bytes]]:
    """SenML packs of ``pack`` readings: one twin, three channels, successive times."""
    channels = ("temp", "flow", "pressure")
    for i in range(start, count, step):
        records: list[dict[str, Any]] = [
            {"n": channels[j % 3], "t": j * 0.001, "v": 20.0 + j / 10} for j in range(pack)
        ]
        records[0] = {"bn": f"pump-{i % 1000:05d}:", "bt": T0_NS // 1_000_000_000 + i, **records[0]}
        yield f"{prefix}/line-{i % 16}", orjson.dumps(records)


def _publish_part(
    host: str, port: int, kind: str, prefix: str, count: int, extra: int, start: int, step: int
) -> None:
    """Body of one publisher process: publish its share (QoS 1) and wait for the broker's acks."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(1000)
    client.connect(host, port)
    client.loop_start()
    if kind == "json":
        messages = json_messages(prefix, count, extra, start, step)
    else:
        messages = senml_messages(prefix, count, extra, start, step)
    infos = [client.publish(topic, payload, 1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(120)
    client.disconnect()
    client.loop_stop()


def fill_backlog(broker: Broker, kind: str, prefix: str, count: int, extra: int, publishers: int) -> float:
    """Publish ``count`` messages from ``publishers`` processes; the seconds it took."""
    ctx = multiprocessing.get_context("spawn")
    started = time.perf_counter()
    procs = [
        ctx.Process(
            target=_publish_part, args=(broker.host, broker.port, kind, prefix, count, extra, i, publishers)
        )
        for i in range(publishers)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"a publisher process failed with exit code {proc.exitcode}")
    return time.perf_counter() - started


# --- the bare loop -------------------------------------------------------------------------


def _session_client(
    client_id: str, on_message: Any, manual_ack: bool = False
) -> tuple[mqtt.Client, Properties]:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=manual_ack
    )
    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = SESSION_EXPIRY
    props.ReceiveMaximum = RECEIVE_MAXIMUM
    return client, props


def prime_bare(broker: Broker, client_id: str, topic_filter: str) -> None:
    """Create the bare loop's persistent session and its subscription, then go offline."""
    done = threading.Event()
    client, props = _session_client(client_id, None)
    client.on_subscribe = lambda *_: done.set()
    client.connect(broker.host, broker.port, clean_start=True, properties=props)
    client.loop_start()
    client.subscribe(topic_filter, qos=1)
    if not done.wait(10):
        raise RuntimeError("no SUBACK")
    client.disconnect()
    client.loop_stop()
    client._reset_sockets()


def bare_loop(
    broker: Broker, client_id: str, expected: int, measure: Callable[[bytes], int], defer_acks: bool = False
) -> tuple[float, int]:
    """Seconds until the bare loop received ``expected`` messages, and the items measured.

    paho acknowledges each message after ``on_message`` (one PUBACK per message) unless
    ``defer_acks``: then the acks are sent after the clock stopped, the receiving ceiling.
    """
    state = {"messages": 0, "items": 0}
    done = threading.Event()
    deferred: list[int] = []

    def on_message(_client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        state["items"] += measure(message.payload)  # type: ignore[arg-type]
        state["messages"] += 1
        if defer_acks:
            deferred.append(message.mid)
        if state["messages"] >= expected:
            done.set()

    client, props = _session_client(client_id, on_message, manual_ack=defer_acks)
    started = time.perf_counter()
    client.connect(broker.host, broker.port, clean_start=False, properties=props)
    client.loop_start()
    if not done.wait(300):
        raise RuntimeError(f"the bare loop got {state['messages']} of {expected} messages")
    elapsed = time.perf_counter() - started
    for mid in deferred:
        client.ack(mid, 1)
    client.disconnect()
    client.loop_stop()
    client._reset_sockets()
    return elapsed, state["items"]


# --- the source ----------------------------------------------------------------------------


class _CountSink(DynamicSink[Any]):
    """Counts what arrives with ``measure``; notes the time the expected count was reached."""

    def __init__(self, measure: Callable[[Any], tuple[int, int]], expected: int) -> None:
        self.measure = measure
        self.expected = expected
        self.messages = 0
        self.items = 0
        self.reached: float | None = None

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[Any]:
        owner = self

        class _Part(StatelessSinkPartition[Any]):
            def write_batch(self, items: list[Any]) -> None:
                for item in items:
                    messages, measured = owner.measure(item)
                    owner.messages += messages
                    owner.items += measured
                if owner.reached is None and owner.messages >= owner.expected:
                    owner.reached = time.perf_counter()

        return _Part()


def _decode(codec_name: str) -> Callable[[RawBatch], tuple[int, ReadingBatch]]:
    """Decode a RawBatch as the dataflow's decode step does (``decode_many``)."""
    codec = get_codec(codec_name)

    def decode(raw: RawBatch) -> tuple[int, ReadingBatch]:
        return len(raw.payloads) + len(raw.errors), codec.decode_many(raw.payloads).readings

    return decode


def source_spec(
    broker: Broker, client_id: str, topic_filter: str, template: str | None, codec: str, ack: str
) -> MqttSourceSpec:
    return MqttSourceSpec.model_validate(
        {
            "kind": "mqtt",
            "name": "bench",
            "url": f"mqtt://{broker.host}:{broker.port}",
            "client_id": client_id,
            "session_expiry": SESSION_EXPIRY,
            "ack": ack,
            "subscriptions": [{"topic": topic_filter, "template": template, "codec": codec}],
        }
    )


def prime_source(spec: MqttSourceSpec) -> None:
    """Create the source's persistent session and its subscription, then go offline."""
    partition = MqttSource(spec).build_part("prime", "bench-0", None)
    partition.close()


def source_flow(spec: MqttSourceSpec, expected: int, decode: str | None, epoch: float) -> tuple[float, int]:
    """Seconds until a MqttSource dataflow has ``expected`` messages at its sink, and the items."""
    spec = MqttSourceSpec.model_validate(
        {**spec.model_dump(exclude_unset=True), "stop_after_messages": expected}
    )
    flow = Dataflow("bench_mqtt_ingest")
    raw = op.input("source_bench", flow, MqttSource(spec))
    if decode is None:
        sink = _CountSink(lambda b: (len(b.payloads) + len(b.errors), len(b.payloads)), expected)
        op.output("count", raw, sink)
    else:
        decoded = op.map("decode_bench", raw, _decode(decode))
        sink = _CountSink(lambda d: (d[0], len(d[1])), expected)
        op.output("count", decoded, sink)
    started = time.perf_counter()
    run_main(flow, epoch_interval=timedelta(seconds=epoch))  # type: ignore[no-untyped-call]
    if sink.reached is None or sink.messages != expected:
        raise RuntimeError(f"{sink.messages} messages arrived, expected {expected}")
    return sink.reached - started, sink.items


# --- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=60_000, help="JSON messages (one reading each)")
    parser.add_argument("--packs", type=int, default=10_000, help="SenML messages")
    parser.add_argument("--pack", type=int, default=50, help="readings per SenML message")
    parser.add_argument("--twins", type=int, default=1000)
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--epoch", type=float, default=1.0, help="Bytewax epoch length (s)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per variant; the best is reported")
    parser.add_argument("--ack", default="after_epoch", choices=("after_epoch", "on_emit", "on_receive"))
    args = parser.parse_args(argv)
    if args.messages > 95_000 or args.packs > 95_000:
        parser.error("the test broker queues at most 100,000 messages per session (max_queued_messages)")

    def ones(_payload: bytes) -> int:
        return 1

    def parse_one(payload: bytes) -> int:
        orjson.loads(payload)
        return 1

    def parse_pack(payload: bytes) -> int:
        return len(orjson.loads(payload))

    # name -> (consumer, what it measures or decodes, deferred acks); grouped by message kind
    variants: dict[str, dict[str, tuple[str, Any, bool]]] = {
        "json": {
            "bare": ("bare", ones, False),
            "bare, acks deferred": ("bare", ones, True),
            "bare + orjson": ("bare", parse_one, False),
            "source": ("source", None, False),
            "source + json": ("source", "json", False),
        },
        "senml": {
            "bare senml": ("bare", ones, False),
            "bare senml + orjson": ("bare", parse_pack, False),
            "source senml": ("source", None, False),
            "source + senml": ("source", "senml", False),
        },
    }
    counts: dict[str, int] = {"json": args.messages, "senml": args.packs}
    best: dict[str, tuple[float, int]] = {}  # name -> (seconds, items measured)
    fills: list[float] = []
    with private_broker() as broker:
        for _ in range(args.repeat):  # interleaved, so drifts of a shared machine hit all alike
            for kind, group in variants.items():
                # One backlog per kind: every variant's session subscribes to the same topics
                # before the publishers run, so the broker queues a copy of each message for each.
                prefix = f"bench{uuid.uuid4().hex[:8]}"
                topic_filter = f"{prefix}/#"
                template = f"{prefix}/{{twin}}/{{channel}}" if kind == "json" else None
                sessions: dict[str, Any] = {}
                for name, (consumer, _setting, _defer) in group.items():
                    client_id = f"bench-{uuid.uuid4().hex[:8]}"
                    if consumer == "bare":
                        prime_bare(broker, client_id, topic_filter)
                        sessions[name] = client_id
                    else:
                        sessions[name] = source_spec(
                            broker, client_id, topic_filter, template, kind, args.ack
                        )
                        prime_source(sessions[name])
                count = counts[kind]
                extra = args.twins if kind == "json" else args.pack
                fills.append(count / fill_backlog(broker, kind, prefix, count, extra, args.publishers))
                for name, (consumer, setting, defer) in group.items():
                    if consumer == "bare":
                        seconds, items = bare_loop(broker, sessions[name], count, setting, defer)
                    else:
                        seconds, items = source_flow(sessions[name], count, setting, args.epoch)
                    if name not in best or seconds < best[name][0]:
                        best[name] = (seconds, items)
                    print(f"  {name}: {count / seconds:,.0f} messages/s", file=sys.stderr)

    def rate(name: str) -> float:
        seconds: float = best[name][0]
        return counts["senml" if "senml" in name else "json"] / seconds

    def readings(name: str) -> str:
        seconds, items = best[name]
        return (
            "-"
            if name in ("bare", "bare, acks deferred", "source", "bare senml", "source senml")
            else (f"{items / seconds:,.0f}")
        )

    pack = args.pack
    rows = [
        ("bare paho loop (auto ack), messages counted", "bare", None),
        ("bare paho loop, acks sent after the clock stopped", "bare, acks deferred", "bare"),
        ("bare paho loop + orjson.loads per message", "bare + orjson", "bare"),
        (f"MqttSource in Bytewax (ack {args.ack}), payloads counted", "source", "bare"),
        ("MqttSource + json codec to ReadingBatch (1 reading/message)", "source + json", "bare + orjson"),
        (f"bare paho loop, SenML packs of {pack}, messages counted", "bare senml", None),
        (f"bare paho loop + orjson.loads, packs of {pack}", "bare senml + orjson", "bare senml"),
        (f"MqttSource, packs of {pack}, payloads counted", "source senml", "bare senml"),
        (
            f"MqttSource + senml codec to ReadingBatch, packs of {pack}",
            "source + senml",
            "bare senml + orjson",
        ),
    ]
    print(
        f"\nMQTT ingest from a backlog in a persistent session (QoS 1, MQTT 5, Mosquitto on loopback): "
        f"{args.messages:,} JSON messages (one reading each), {args.packs:,} SenML packs of {pack}; "
        f"Bytewax epochs of {args.epoch:g} s; best of {args.repeat}.\n"
    )
    print("| variant | messages/s | readings/s | ratio (messages/s) |")
    print("|---|---:|---:|---:|")
    for label, name, reference in rows:
        ratio = "" if reference is None else f"{rate(name) / rate(reference):.2f} of {reference}"
        print(f"| {label} | {rate(name):,.0f} | {readings(name)} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
