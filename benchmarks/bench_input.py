"""The input side of ``dte-stream run``, stage by stage: Kafka records -> payloads -> readings -> shards.

CPU seconds per million readings of the three steps between a ``consume()`` call and the twin
shards, on the records of ``bench_e2e.py`` (1,000 twins, one reading a JSON record, 4
partitions by twin, ``--batch-size`` records a consume): the source's ``RecordMapper.map`` of
the consumed ``confluent_kafka.Message`` objects, the dataflow's ``decode`` step (the json
codec's batch decode) and ``Router.route`` to the spec's shards. No broker: each batch's
``Message`` objects are made just before it is mapped (as ``consume()`` makes them), and that
is not timed. ``bench_datapath.py`` times decode and routing together with the shards and the
sink; this one isolates the input side, so that two trees can be compared stage by stage (run
it from each tree's folder, alternately). The digest (readings and values per shard) must be
equal between trees.

    .venv/bin/python benchmarks/bench_input.py --records 200000
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time

from bench_e2e import REPO
from e2e_common import NS_PER_S, record

sys.path.insert(0, str(REPO))

from confluent_kafka import Message

from dte_stream.batches import RawBatch
from dte_stream.connectors.kafka.records import RecordMapper
from dte_stream.flow_steps import decode
from dte_stream.spec import parse_spec
from dte_stream.twins.routing import Router

_CHANNELS = {"temperature": {}, "pressure": {}, "flow": {}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--twins", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=5000, help="records a consume() call")
    parser.add_argument("--shards", type=int, default=4)
    args = parser.parse_args(argv)
    spec = parse_spec(
        {
            "name": "bench_input",
            "sources": [{"kind": "simulator", "twin_type": "pump"}],
            "twin_types": [{"name": "pump", "match": "pump-.*", "channels": _CHANNELS}],
            "sinks": [{"kind": "local_store"}],
            "engine": {"shards": args.shards},
        }
    )
    start_ns = (time.time_ns() // NS_PER_S - args.records // (3 * args.twins) - 600) * NS_PER_S
    partitions: list[list[tuple[bytes, bytes]]] = [[], [], [], []]
    for i in range(args.records):
        key, value = record(i, args.twins, start_ns)
        partitions[int(key.rsplit(b"-", 1)[-1]) % 4].append((key, value))
    size = args.batch_size
    batches = [
        (p, j, part[j : j + size]) for p, part in enumerate(partitions) for j in range(0, len(part), size)
    ]
    mappers = [
        RecordMapper("127.0.0.1:9092", "bench", p, key_is_twin_id=True, max_payload_bytes=1 << 20)
        for p in range(4)
    ]
    router = Router(spec)
    spent = {"map": 0.0, "decode": 0.0, "route": 0.0}
    readings = letters = 0
    digest = 0.0
    gc.collect()
    gc.freeze()  # as dte-stream run leaves the start-up heap
    wall = time.perf_counter()
    for p, first, pairs in batches:
        messages = [
            Message(topic="bench", partition=p, offset=first + k, key=key, value=value, timestamp=(1, ms))
            for k, (key, value) in enumerate(pairs)
            for ms in (start_ns // 1_000_000 + first + k,)
        ]
        t0 = time.process_time()
        mapped = mappers[p].map(messages, None)
        raw = RawBatch("bench", "json", mapped.payloads, None, mapped.errors)
        t1 = time.process_time()
        source_batch, dead = decode(raw)
        t2 = time.process_time()
        routed = router.route(source_batch.readings, source_batch.source, source_batch.twin_type)
        t3 = time.process_time()
        spent["map"] += t1 - t0
        spent["decode"] += t2 - t1
        spent["route"] += t3 - t2
        letters += len(dead) + len(routed.errors)
        for key, typed in routed.routed:
            readings += len(typed)
            digest += int(key.rsplit("-", 1)[-1]) * math.fsum(typed.readings.value.tolist())
        del messages
    wall = time.perf_counter() - wall
    per_million = {name: cpu / args.records * 1e6 for name, cpu in spent.items()}
    total = sum(per_million.values())
    stages = ", ".join(f"{name} {value:.3f}" for name, value in per_million.items())
    print(
        f"{REPO.name}: {args.records:,} records in {len(batches)} batches of up to {size:,}: CPU s per "
        f"million: {stages}, input side {total:.3f} (wall of the run {wall:.2f} s); "
        f"{readings:,} readings routed, {letters} dead letters, digest {digest!r}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
