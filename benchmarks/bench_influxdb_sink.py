"""InfluxDB sink throughput against a bare bulk ``/write`` loop, in one run on one server.

The same readings (``--twins`` twins x 3 channels, estimate batches of 2,000 rows as the twin
bank emits them) are written to InfluxDB 1.x several ways, each into a fresh database so that
every run pays the same series creation:

* bare loop: the lines pre-built (not timed), POSTed in 5,000-line batches to ``/write`` over
  one keep-alive ``http.client`` connection, one request after the other: the ceiling of the
  server on this machine;
* InfluxDBSink: the sink in a Bytewax dataflow (``run_main``) fed with the estimate batches,
  serialisation, buffering and the writer thread included, until ``close`` has flushed.

Every run is checked by counting the points back. Then, without a server, the cost of making
the lines: the bulk serialiser alone, one f-string per line, and influxdb-client ``Point``
objects (``Point(...).tag(...).field(...).to_line_protocol()``) per reading.

InfluxDB comes from ``DTE_INFLUXDB_URL`` (or ``--url``); without it the script starts a private
InfluxDB through deploy/services/devservices.py and stops it at the end.

    .venv/bin/python benchmarks/bench_influxdb_sink.py --readings 300000 --repeat 3

Prints a Markdown table for docs/benchmarks.md; each figure is the median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from private_service import private_service

from dte_stream.batches import EstimateBatch
from dte_stream.connectors.influxdb import EstimateSerialiser, InfluxDBSink
from dte_stream.metrics import METRICS
from dte_stream.spec.influxdb import InfluxDBSinkSpec

REPO = Path(__file__).resolve().parents[1]
T0_NS = 1_767_323_045_000_000_000
ITEM_ROWS = 2000
BARE_BATCH = 5000


@contextmanager
def influxdb_url(given: str | None) -> Iterator[str]:
    """The server to use: ``given``, else a private InfluxDB started and stopped here."""
    if given:
        yield given.rstrip("/")
        return
    print("starting a private InfluxDB ...", file=sys.stderr)
    with private_service("influxdb") as svc:
        print(f"InfluxDB ready in {svc.startup_seconds} s at {svc.url}", file=sys.stderr)
        yield str(svc.url)


class Server:
    """Just enough of the InfluxDB 1.x HTTP API: queries and bare writes, keep-alive."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.url = url
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 8086, timeout=120)

    def query(self, q: str, db: str | None = None) -> dict[str, object]:
        params = {"q": q, **({"db": db} if db else {})}
        self.conn.request("POST", "/query?" + urllib.parse.urlencode(params))
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"query {q!r} answered {response.status}: {body[:200]!r}")
        result: dict[str, object] = json.loads(body)
        return result

    def count(self, db: str) -> int:
        result = self.query("SELECT count(value) FROM dte_readings", db)
        series = result["results"][0].get("series")  # type: ignore[index]
        return int(series[0]["values"][0][1]) if series else 0

    def fresh_database(self, name: str) -> str:
        self.query(f'DROP DATABASE "{name}"')
        self.query(f'CREATE DATABASE "{name}"')
        return name

    def write(self, db: str, body: bytes) -> None:
        self.conn.request(
            "POST", f"/write?db={db}&precision=ns", body=body, headers={"Content-Type": "text/plain"}
        )
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 204:
            raise RuntimeError(f"/write answered {response.status}: {data[:200]!r}")

    def close(self) -> None:
        self.conn.close()


def make_batches(twins: int, readings: int, seed: int = 7) -> list[EstimateBatch]:
    """Estimate batches in arrival order: every twin reports 3 channels once per second."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"pump-{i:06d}" for i in range(twins)])
    channels = np.array(["temperature", "pressure", "flow"])
    units = np.array(["Cel", "bar", "m3/h"])
    k = np.arange(readings)
    twin = (k // 3) % twins
    channel = k % 3
    time_ns = T0_NS + (k // (3 * twins)).astype(np.int64) * 10**9
    value = rng.normal(50, 5, readings)
    estimate = value + rng.normal(0, 0.5, readings)
    std = np.abs(rng.normal(0.3, 0.05, readings))
    innovation = value - estimate
    nis = innovation**2 / std**2
    out = []
    for s in range(0, readings, ITEM_ROWS):
        sl = slice(s, s + ITEM_ROWS)
        out.append(
            EstimateBatch(
                "pump",
                ids[twin[sl]],
                channels[channel[sl]],
                time_ns[sl],
                value[sl],
                units[channel[sl]],
                estimate[sl],
                std[sl],
                innovation[sl],
                nis[sl],
            )
        )
    return out


def bare_bodies(batches: list[EstimateBatch]) -> list[bytes]:
    """The same lines the sink writes, pre-built in 5,000-line request bodies."""
    lines: list[str] = []
    serialiser = EstimateSerialiser()
    for batch in batches:
        lines.extend(serialiser.serialise(batch).lines.to_list())
    return ["\n".join(lines[i : i + BARE_BATCH]).encode("utf-8") for i in range(0, len(lines), BARE_BATCH)]


def run_bare(server: Server, bodies: list[bytes], db: str) -> float:
    start = time.perf_counter()
    for body in bodies:
        server.write(db, body)
    return time.perf_counter() - start


def run_sink(url: str, batches: list[EstimateBatch], db: str) -> float:
    spec = InfluxDBSinkSpec(kind="influxdb", url=url, database=db, batch_size=BARE_BATCH)
    flow = Dataflow("bench_influxdb_sink")
    op.output("influxdb", op.input("estimates", flow, TestingSource(batches)), InfluxDBSink(spec))
    start = time.perf_counter()
    run_main(flow)
    return time.perf_counter() - start


def _rows(b: EstimateBatch) -> Iterator[tuple[Any, ...]]:
    """A batch's rows as Python values: twin, channel, time, value, unit, estimate, std, innovation, nis."""
    columns = (b.twin_id, b.channel, b.time_ns, b.value, b.unit, b.estimate, b.std, b.innovation, b.nis)
    return zip(*(c.tolist() for c in columns), strict=True)


def serialiser_rates(batches: list[EstimateBatch], sample: int) -> dict[str, float]:
    """Lines per second of three ways of making line protocol (no server involved)."""
    from influxdb_client.client.write.point import Point
    from influxdb_client.domain.write_precision import WritePrecision

    rates: dict[str, float] = {}
    serialiser = EstimateSerialiser()
    serialiser.serialise(batches[0])  # warm the escape cache, as a running sink has it
    n = sum(len(b) for b in batches)
    start = time.perf_counter()
    for batch in batches:
        serialiser.serialise(batch).text()
    rates["bulk serialiser (EstimateSerialiser)"] = n / (time.perf_counter() - start)

    rows = [b for b in batches if b][: max(1, sample // ITEM_ROWS)]
    m = sum(len(b) for b in rows)

    def per_row(make: Callable[[EstimateBatch], list[str]]) -> float:
        start = time.perf_counter()
        for batch in rows:
            "\n".join(make(batch))
        return m / (time.perf_counter() - start)

    def f_strings(b: EstimateBatch) -> list[str]:
        return [
            f"dte_readings,channel={c},twin_id={t},twin_type={b.twin_type},unit={u} "
            f"value={v!r},estimate={e!r},std={s!r},innovation={i!r},nis={x!r} {ts}"
            for t, c, ts, v, u, e, s, i, x in _rows(b)
        ]

    def points(b: EstimateBatch) -> list[str]:
        out = []
        for t, c, ts, v, u, e, s, i, x in _rows(b):
            point = (
                Point("dte_readings")
                .tag("channel", c)
                .tag("twin_id", t)
                .tag("twin_type", b.twin_type)
                .tag("unit", u)
                .field("value", v)
                .field("estimate", e)
                .field("std", s)
                .field("innovation", i)
                .field("nis", x)
                .time(ts, WritePrecision.NS)
            )
            out.append(point.to_line_protocol())
        return out

    rates["one f-string per line (no escaping)"] = per_row(f_strings)
    rates["influxdb-client Point objects"] = per_row(points)
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=os.environ.get("DTE_INFLUXDB_URL"), help="InfluxDB 1.x URL")
    parser.add_argument("--readings", type=int, default=300_000)
    parser.add_argument("--twins", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sample", type=int, default=40_000, help="readings for the per-line ways")
    args = parser.parse_args()

    batches = make_batches(args.twins, args.readings)
    n = sum(len(b) for b in batches)
    bodies = bare_bodies(batches)
    bare_times: list[float] = []
    sink_times: list[float] = []
    with influxdb_url(args.url) as url:
        server = Server(url)
        try:
            for r in range(args.repeat):
                # alternate, so that neither always meets a warmer (or fuller) server
                db = server.fresh_database(f"dte_bench_bare_{r}")
                bare_times.append(run_bare(server, bodies, db))
                if server.count(db) != n:
                    raise RuntimeError(f"bare loop: {server.count(db)} points of {n}")
                db = server.fresh_database(f"dte_bench_sink_{r}")
                METRICS.reset()
                sink_times.append(run_sink(url, batches, db))
                if server.count(db) != n or METRICS.get("influxdb_points_written") != n:
                    raise RuntimeError(f"sink: {server.count(db)} points of {n}")
                print(
                    f"round {r + 1}: bare {n / bare_times[-1]:,.0f}/s, sink {n / sink_times[-1]:,.0f}/s",
                    file=sys.stderr,
                )
            for r in range(args.repeat):
                server.query(f'DROP DATABASE "dte_bench_bare_{r}"')
                server.query(f'DROP DATABASE "dte_bench_sink_{r}"')
        finally:
            server.close()
    rates = serialiser_rates(batches, args.sample)

    bare = n / statistics.median(bare_times)
    sink = n / statistics.median(sink_times)
    print(
        f"\nInfluxDB sink, {n:,} readings ({args.twins:,} twins x 3 channels, 5 fields and 4 tags a point), "
        f"median of {args.repeat}; {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{datetime.now(UTC):%Y-%m-%d}\n"
    )
    print("| path | points/s | vs bare loop |")
    print("|---|---:|---:|")
    print(f"| bare loop: pre-built 5,000-line batches, POST /write | {bare:,.0f} | 100 % |")
    print(f"| InfluxDBSink in a Bytewax flow (serialisation included) | {sink:,.0f} | {sink / bare:.0%} |")
    print("\n| making line protocol (no server) | lines/s | vs Point objects |")
    print("|---|---:|---:|")
    points_rate = rates["influxdb-client Point objects"]
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} | {rate / points_rate:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
