"""dte-stream's data path in one process, without Kafka or InfluxDB: CPU seconds per million readings.

The records of ``bench_e2e.py`` (1,000 twins, one reading a JSON record), split into 4
partitions by twin as the benchmark topic holds them, go in consumed batches of 5,000 through
what ``dte-stream run dataflows/kafka_to_influxdb.yaml`` does to them in its own process: the
json codec's batch decode, routing to the spec's 4 shards, each shard's ``TwinShard.on_batch``
(filters, quality checks, anomaly scorer), line-protocol serialisation of the benchmark's
limited output, the sink's join of a write's lines and its stored-lag measure. No broker, no
database, no Bytewax: the CPU time is steadier than end-to-end wall time on a shared machine,
so two trees can be compared (run it from each tree's folder, alternately). The digest (sums of
the estimates and anomaly scores) must be equal between trees.

``--gc`` shows the time the cyclic garbage collector takes during the run: ``default``, or
``frozen`` as ``dte-stream run`` leaves it (the start-up heap frozen, see ``cli/run.py``).

    .venv/bin/python benchmarks/bench_datapath.py --records 200000
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_e2e import REPO, dte_spec
from e2e_common import NS_PER_S, record

sys.path.insert(0, str(REPO))

from dte_stream.codecs import get_codec
from dte_stream.codecs.base import PayloadBatch
from dte_stream.connectors.influxdb.serialise import EstimateSerialiser, join_lines
from dte_stream.connectors.influxdb.sink import concat_by_type
from dte_stream.connectors.influxdb.writer import stored_lag
from dte_stream.spec.influxdb import InfluxDBSinkSpec
from dte_stream.spec.loader import load_spec
from dte_stream.twins.routing import Router
from dte_stream.twins.shard import TwinShard


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--twins", type=int, default=1000)
    parser.add_argument("--gc", choices=["frozen", "default"], default="frozen")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dte-datapath-"))
    spec = load_spec(
        dte_spec(work / "spec.yaml", full=False), env={"DTE_DEAD_LETTERS": str(work / "dead.jsonl")}
    )
    sink = spec.sinks[0]
    assert isinstance(sink, InfluxDBSinkSpec)
    start_ns = (time.time_ns() // NS_PER_S - args.records // (3 * args.twins) - 600) * NS_PER_S
    partitions: list[list[bytes]] = [[], [], [], []]
    for i in range(args.records):
        key, value = record(i, args.twins, start_ns)
        partitions[int(key.rsplit(b"-", 1)[-1]) % 4].append(value)
    batches = [part[j : j + 5000] for part in partitions for j in range(0, len(part), 5000)]

    codec = get_codec("json")
    router = Router(spec)
    shards: dict[str, TwinShard] = {}
    serialiser = EstimateSerialiser(
        sink.measurement,
        unit=sink.unit,
        escaping=sink.escaping,
        source=sink.name,
        fields=sink.fields,
        tags=sink.tags,
    )
    lines = 0
    digest = 0.0
    collected = [0.0, 0.0]  # CPU seconds in the collector, start of the current collection

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collected[1] = time.process_time()
        else:
            collected[0] += time.process_time() - collected[1]

    gc.collect()
    if args.gc == "frozen":
        gc.freeze()
    gc.callbacks.append(on_gc)
    cpu, wall = time.process_time(), time.perf_counter()
    for values in batches:
        decoded = codec.decode_many(PayloadBatch(values, 1 << 20))
        estimates = []
        for key, typed in router.route(decoded.readings, "bench", None).routed:
            shard = shards.get(key)
            if shard is None:
                shard = shards[key] = TwinShard(spec, key)
            estimates += shard.on_batch([typed]).estimates
        chunks = []
        for batch in concat_by_type(estimates):
            chunks.append(serialiser.serialise(batch).lines)
            digest += math.fsum(x for x in batch.estimate.tolist() if x == x)
            digest += math.fsum(x for x in batch.score_column().tolist() if x == x)
        text = join_lines(chunks)
        stored_lag(chunks, time.time_ns())
        lines += text.count("\n") + 1
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    gc.callbacks.remove(on_gc)
    print(
        f"{REPO.name}: {args.records:,} readings in {len(batches)} batches, {lines:,} lines: "
        f"CPU {cpu:.2f} s ({cpu / args.records * 1e6:.2f} s per million; the collector "
        f"{collected[0]:.2f} s, gc {args.gc}), wall {wall:.2f} s, digest {digest!r}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
