"""The baselines of benchmarks/bench_e2e.py that need no dte-stream: run one as a process.

    python benchmarks/e2e_pipes.py bare  --bootstrap B --topic T --influx URL --database D [--partitions 0,1]
    python benchmarks/e2e_pipes.py naive --bootstrap B --topic T --influx URL --database D

* ``bare``: the least a program can do: confluent-kafka ``consume(5000)``, ``orjson.loads`` per
  record, one f-string line per reading (``estimate`` = the value, ``std`` = the measurement
  std: the output shape of the others, with no filter), ``POST /write`` per 5,000 lines.
* ``naive``: a per-event Bytewax dataflow as one would first write it: Bytewax's own
  ``KafkaSource`` -> ``json.loads`` -> key by twin -> ``stateful_map`` holding a numpy scalar
  Kalman state per channel -> lines gathered into 5,000-line ``/write`` requests.

Both run until stopped (SIGTERM); the benchmark watches InfluxDB to know when they are done.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from typing import Any

import numpy as np
import orjson
from e2e_common import NOISE, NS_PER_S, PRIOR_VARIANCE, InfluxWriter, line

BATCH = 5000
FLUSH_SECONDS = 0.5


def bare(args: argparse.Namespace) -> None:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": args.bootstrap, "group.id": "bench-bare", "enable.auto.commit": False}
    )
    parts = [int(p) for p in args.partitions.split(",")] if args.partitions else None
    if parts is None:
        meta = consumer.list_topics(args.topic, timeout=30)
        parts = sorted(meta.topics[args.topic].partitions)
    consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in parts])
    writer = InfluxWriter(args.influx, args.database)
    std = {name: math.sqrt(r) for name, (_, r) in NOISE.items()}
    lines: list[str] = []
    last_flush = time.monotonic()
    loads = orjson.loads
    while True:
        messages = consumer.consume(num_messages=BATCH, timeout=0.1)
        for msg in messages:
            if msg.error() is not None:
                continue
            for rec in loads(msg.value()):
                v = rec["value"]
                lines.append(
                    f"dte_readings,channel={rec['channel']},twin_id={rec['twin_id']} "
                    f"value={v!r},estimate={v!r},std={std[rec['channel']]!r} {rec['time_ns']}"
                )
        now = time.monotonic()
        while len(lines) >= BATCH:
            writer.write(lines[:BATCH])
            del lines[:BATCH]
            last_flush = now
        if lines and (len(messages) < BATCH or now - last_flush >= FLUSH_SECONDS):
            writer.write(lines)
            lines.clear()
            last_flush = now


def naive(args: argparse.Namespace) -> None:
    import bytewax.operators as op
    from bytewax.connectors.kafka import KafkaSource
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.run import cli_main

    channel_index = {name: i for i, name in enumerate(NOISE)}
    q = np.array([NOISE[c][0] for c in NOISE])
    r = np.array([NOISE[c][1] for c in NOISE])

    def parse(msg: Any) -> tuple[str, dict[str, Any]]:
        rec = json.loads(msg.value)[0]
        return rec["twin_id"], rec

    def kalman(state: dict[str, Any] | None, rec: dict[str, Any]) -> tuple[dict[str, Any], str]:
        if state is None:  # per channel: level, variance, last time
            state = {"x": np.zeros(3), "p": np.full(3, PRIOR_VARIANCE), "last": [None, None, None]}
        c = channel_index[rec["channel"]]
        t = rec["time_ns"]
        z = rec["value"]
        x, p, last = state["x"], state["p"], state["last"]
        if last[c] is not None and t > last[c]:
            p[c] += q[c] * ((t - last[c]) / NS_PER_S)
        k = p[c] / (p[c] + r[c])
        x[c] += k * (z - x[c])
        p[c] = (1.0 - k) * (1.0 - k) * p[c] + k * k * r[c]
        if last[c] is None or t > last[c]:
            last[c] = t
        return state, line(rec["twin_id"], rec["channel"], t, z, float(x[c]), float(np.sqrt(p[c])))

    class _Part(StatelessSinkPartition[str]):
        def __init__(self) -> None:
            self.writer = InfluxWriter(args.influx, args.database)
            self.lines: list[str] = []
            self.last = time.monotonic()

        def write_batch(self, items: list[str]) -> None:
            self.lines.extend(items)
            now = time.monotonic()
            while len(self.lines) >= BATCH:
                self.writer.write(self.lines[:BATCH])
                del self.lines[:BATCH]
                self.last = now
            if self.lines and now - self.last >= FLUSH_SECONDS:
                self.writer.write(self.lines)
                self.lines.clear()
                self.last = now

        def close(self) -> None:
            self.writer.write(self.lines)

    class _Sink(DynamicSink[str]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> _Part:
            return _Part()

    flow = Dataflow("naive")
    source = KafkaSource([args.bootstrap], [args.topic], tail=True, batch_size=BATCH)
    msgs = op.input("kafka", flow, source)
    keyed = op.map("parse", msgs, parse)
    lines = op.stateful_map("kalman", keyed, kalman)
    op.output("influx", op.map("unkey", lines, lambda kv: kv[1]), _Sink())
    cli_main(flow, workers_per_process=1)  # type: ignore[no-untyped-call]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variant", choices=["bare", "naive"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", help="comma-separated partitions (bare; default all)")
    parser.add_argument("--influx", required=True)
    parser.add_argument("--database", required=True)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    bare(args) if args.variant == "bare" else naive(args)


if __name__ == "__main__":
    main()
