"""Kafka ingest: KafkaSource (and decoding) through Bytewax against a bare confluent-kafka loop.

Produces ``--records`` JSON readings (one per record, the twin id as key) once into a fresh
topic, then reads them all back several ways and prints a Markdown table of records/s:

* bare loops: confluent-kafka alone, ``consume(num_messages=5000)``, counting records, once
  with one consumer for all partitions and once with one consumer per partition polled in turn
  (as KafkaSource reads); the faster of the two is "bare", the ceiling of the client library on
  this machine; and the per-partition loop parsing each value with ``orjson.loads`` (the least
  a decoder does);
* ``KafkaSource``: the source in a Bytewax dataflow (``run_main``, ``stop_at_end``), counting
  payloads -- what the connector costs;
* ``KafkaSource + json codec``: the source and the json codec into ``ReadingBatch`` items, as
  the dataflow's decode step does it (through the codec's batch call when it has one).

Ratios are to the bare loop the row should be compared with. Kafka comes from
``DTE_KAFKA_BOOTSTRAP`` (or ``--bootstrap``); without it the script starts a private broker
through deploy/services/devservices.py and stops it at the end.

    .venv/bin/python benchmarks/bench_kafka_ingest.py --records 500000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from private_service import private_service

from dte_stream.batches import RawBatch
from dte_stream.codecs.base import DecodeResult
from dte_stream.connectors.kafka import KafkaSource
from dte_stream.readings import DeadLetter, ReadingBatch
from dte_stream.spec.kafka import KafkaSourceSpec

REPO = Path(__file__).resolve().parents[1]
T0_NS = 1_767_323_045_000_000_000


@contextmanager
def kafka_bootstrap(given: str | None) -> Iterator[str]:
    """The brokers to use: ``given``, else a private broker started and stopped here."""
    if given:
        yield given
        return
    print("starting a private Kafka broker ...", file=sys.stderr)
    with private_service("kafka") as svc:
        print(f"Kafka {svc.version} ready in {svc.startup_seconds} s at {svc.url}", file=sys.stderr)
        yield str(svc.bootstrap_servers)


def produce(bootstrap: str, records: int, partitions: int, twins: int) -> str:
    """Create a topic and fill it with ``records`` JSON readings; return its name."""
    topic = f"dte-bench-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(60)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 50,
            "batch.num.messages": 10000,
            "compression.type": "lz4",
        }
    )
    keys = [f"pump-{i:05d}".encode() for i in range(twins)]
    channels = ("temp", "flow", "pressure")
    for i in range(records):
        value = b'{"channel":"%s","time_ns":%d,"value":%.3f}' % (
            channels[i % 3].encode(),
            T0_NS + i * 1_000_000,
            20.0 + (i % 1000) / 100,
        )
        while True:
            try:
                producer.produce(topic, value, keys[i % twins], partition=i % partitions)
                break
            except BufferError:
                producer.poll(0.1)
        if i % 20000 == 0:
            producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("could not produce the benchmark records")
    return topic


def bare_loop(bootstrap: str, topic: str, records: int, partitions: int, parse: bool, split: bool) -> float:
    """Seconds a bare loop takes to read (and maybe parse) every record.

    ``split``: one consumer per partition polled in turn (``timeout=0``), as KafkaSource reads;
    otherwise one consumer with every partition assigned.
    """
    config = {"bootstrap.servers": bootstrap, "group.id": "dte-bench", "enable.auto.commit": False}
    started = time.perf_counter()
    if split:
        consumers = [Consumer(config) for _ in range(partitions)]
        for p, consumer in enumerate(consumers):
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)])
    else:
        consumers = [Consumer(config)]
        consumers[0].assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    timeout = 0.0 if split else 0.5
    count = 0
    while count < records:
        got = 0
        for consumer in consumers:
            for msg in consumer.consume(num_messages=5000, timeout=timeout):
                if msg.error() is None:
                    if parse:
                        orjson.loads(msg.value() or b"null")
                    got += 1
        count += got
        if split and not got:
            time.sleep(0.001)
    elapsed = time.perf_counter() - started
    for consumer in consumers:
        consumer.close()
    return elapsed


class _CountSink(DynamicSink[Any]):
    """Counts what arrives with ``measure`` (payloads, or readings)."""

    def __init__(self, measure: Callable[[Any], int]) -> None:
        self.measure = measure
        self.count = 0

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[Any]:
        owner = self

        class _Part(StatelessSinkPartition[Any]):
            def write_batch(self, items: list[Any]) -> None:
                owner.count += sum(owner.measure(item) for item in items)

        return _Part()


def _decoder() -> Callable[[RawBatch], tuple[ReadingBatch, list[DeadLetter]]]:
    """Decode a RawBatch the way the dataflow's decode step does (a batch call if the codec has one)."""
    try:
        from dte_stream.codecs import get_codec

        codec = get_codec("json")
    except ImportError:  # the codec registry is not there yet: the json codec itself
        from dte_stream.codecs.json import JsonCodec

        codec = JsonCodec()
    decode_many = getattr(codec, "decode_many", None)

    def decode(raw: RawBatch) -> tuple[ReadingBatch, list[DeadLetter]]:
        if decode_many is not None:
            result: DecodeResult = decode_many(raw.payloads)
            return result.readings, [*raw.errors, *result.errors]
        batches: list[ReadingBatch] = []
        errors = list(raw.errors)
        for payload, context in raw.payloads:
            one = codec.decode(payload, context)
            if len(one.readings):
                batches.append(one.readings)
            errors.extend(one.errors)
        return ReadingBatch.concat(batches), errors

    return decode


def source_flow(bootstrap: str, topic: str, batch_size: int, decode: bool, expected: int) -> float:
    """Seconds a KafkaSource dataflow takes to read (and maybe decode) every record."""
    spec = KafkaSourceSpec(
        kind="kafka",
        name="bench",
        bootstrap_servers=bootstrap,
        topics=[topic],
        batch_size=batch_size,
        stop_at_end=True,
    )
    flow = Dataflow("bench_kafka_ingest")
    raw = op.input("source_bench", flow, KafkaSource(spec))
    if decode:
        decoder = _decoder()
        decoded = op.map("decode_bench", raw, decoder)
        sink = _CountSink(lambda item: len(item[0]))
        op.output("count", decoded, sink)
    else:
        sink = _CountSink(lambda item: len(item.payloads))
        op.output("count", raw, sink)
    started = time.perf_counter()
    run_main(flow)
    elapsed = time.perf_counter() - started
    if sink.count != expected:
        raise RuntimeError(f"{sink.count} items arrived, expected {expected}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--twins", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=5000, help="KafkaSource batch_size")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant; the best is reported")
    parser.add_argument("--bootstrap", default=os.environ.get("DTE_KAFKA_BOOTSTRAP"))
    args = parser.parse_args(argv)

    with kafka_bootstrap(args.bootstrap) as bootstrap:
        started = time.perf_counter()
        topic = produce(bootstrap, args.records, args.partitions, args.twins)
        print(f"produced {args.records:,} records in {time.perf_counter() - started:.1f} s", file=sys.stderr)

        # Warm the broker (JIT, page cache) so that the first variant is not penalised.
        bare_loop(bootstrap, topic, args.records, args.partitions, parse=False, split=True)
        n, parts = args.records, args.partitions
        variants: dict[str, Callable[[], float]] = {
            "bare one consumer": lambda: bare_loop(bootstrap, topic, n, parts, parse=False, split=False),
            "bare per partition": lambda: bare_loop(bootstrap, topic, n, parts, parse=False, split=True),
            "bare per partition + orjson": lambda: bare_loop(
                bootstrap, topic, n, parts, parse=True, split=True
            ),
            "source": lambda: source_flow(bootstrap, topic, args.batch_size, False, n),
            "source + decode": lambda: source_flow(bootstrap, topic, args.batch_size, True, n),
        }
        runs: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeat):  # interleaved, so drifts of a shared machine hit all alike
            for name, run in variants.items():
                runs[name].append(run())
        best = {name: min(times) for name, times in runs.items()}

    bare = min(best["bare one consumer"], best["bare per partition"])  # the faster bare loop
    bare_json = best["bare per partition + orjson"]
    rows = [
        ("bare loop: one consumer, all partitions, consume(5000)", "bare one consumer", bare, "bare"),
        ("bare loop: one consumer per partition, consume(5000, 0)", "bare per partition", bare, "bare"),
        ("bare loop per partition + orjson.loads per record", "bare per partition + orjson", bare, "bare"),
        ("KafkaSource in Bytewax (run_main), payloads counted", "source", bare, "bare"),
        ("KafkaSource + json codec to ReadingBatch", "source + decode", bare_json, "bare + orjson"),
    ]
    print(
        f"\nKafka ingest, {args.records:,} JSON records (one reading each) in {args.partitions} partitions, "
        f"KafkaSource batch_size={args.batch_size}, best of {args.repeat}; 'bare' is the faster bare loop:\n"
    )
    print("| variant | records/s | ratio |")
    print("|---|---:|---:|")
    for label, name, reference, reference_name in rows:
        seconds = best[name]
        print(f"| {label} | {args.records / seconds:,.0f} | {reference / seconds:.2f} of {reference_name} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
