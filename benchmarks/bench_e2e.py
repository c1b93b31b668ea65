"""End to end, Kafka -> twins -> InfluxDB: dte-stream against the bare pipe, naive Bytewax and Quix Streams.

Against a real Kafka broker and a real InfluxDB 1.x started by deploy/services/devservices.py
(or given with ``--bootstrap`` / ``--influx``). For each twin count, ``--records`` one-reading
JSON records in the format of ``dte-stream simulate`` are produced once into a fresh topic
of ``--partitions`` partitions (see ``e2e_common.py``), then every variant reads the whole topic
and writes one point per reading into a database of its own. A variant is timed from the start
of its process until InfluxDB holds every point (``SELECT count(value)``, polled); rounds are
interleaved so that a drift of the shared machine hits every variant alike, and their order
turns by one each round, so that no variant always runs while InfluxDB still settles the points
of the same predecessor. Variants:

* ``bare``, ``bare2``: the bare pipe (``e2e_pipes.py bare``) in 1 process, and in 2 processes
  with half the partitions each;
* ``dte``: ``dte-stream run SPEC --recovery-dir D``, where SPEC is
  ``dataflows/kafka_to_influxdb.yaml`` with the benchmark's topic and database and the sink
  limited to the common output (fields value, estimate, std; tags channel, twin_id);
  ``dte-full``: the same with dte-stream's full output; ``dte2``: ``--processes 2`` (when the
  CLI has it);
* ``naive``: the per-event Bytewax dataflow (``e2e_pipes.py naive``);
* ``quix``: Quix Streams (``e2e_quix.py``), in a virtual environment this script creates in
  ``.cache/bench-quix-venv`` (a baseline, never a dependency of dte-stream).

Each run's estimates are compared with those of the first Kalman variant on a sample of twins
(every point of those twins; they must agree to 1e-9 relative), and its peak RSS (the process
tree's VmHWM, and each process's own: the dataflow, its twin-view writer, ...) and CPU seconds
(the process tree's, not Kafka's or InfluxDB's: on a shared machine a second process can only
be faster where CPU is left over) are recorded. With
``--latency``, each variant then runs once more while a producer writes readings stamped with
the wall clock at half of dte-stream's best rate for ``--latency-seconds``, and each writer
reports, for every point, when InfluxDB acknowledged the write that held it minus its time
(dte-stream's ``dte_influxdb_stored_lag_seconds`` histogram, read from ``/metrics``; the
baselines count the same buckets). With ``--latency-poller`` a poller also counts the points
per 50 ms of event time every 50 ms, and a reading's latency is when its slot became complete
minus its event time (an upper bound that includes the query's own time, and the query takes
CPU from the pipeline it measures: off by default). The first ``--latency-warmup`` seconds
(10) are left out.

    .venv/bin/python benchmarks/bench_e2e.py --quick                       # a few minutes
    .venv/bin/python benchmarks/bench_e2e.py --twins 1000 100000 --rounds 3 --latency --plot e2e.png
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e_common import LAG_BUCKETS, MEASUREMENT, NS_PER_S, lag_quantile, record, twin_id
from private_service import devservices, private_service

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PYTHON = sys.executable
QUIX_VENV = REPO / ".cache" / "bench-quix-venv"
ALL_VARIANTS = ("bare", "bare2", "dte", "dte2", "naive", "quix", "dte-full")
KALMAN_VARIANTS = ("dte", "dte2", "naive", "quix", "dte-full")
LABELS = {
    "bare": "bare pipe, 1 process",
    "bare2": "bare pipe, 2 processes",
    "dte": "dte-stream, 1 process",
    "dte2": "dte-stream, 2 processes",
    "naive": "naive Bytewax, 1 process",
    "quix": "Quix Streams, 1 process",
    "dte-full": "dte-stream full output, 1 process",
    "dte-flush": "dte-stream, InfluxDB flush_interval 1 s (the earlier default)",
}


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# services
# ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def service(name: str, given: str | None) -> Iterator[str]:
    if given:
        yield given
        return
    say(f"starting a private {name} ...")
    with private_service(name) as svc:
        say(f"{name} ready at {svc.url}")
        yield str(svc.url)


class Influx:
    """InfluxQL over HTTP (standard library)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def query(self, q: str, db: str | None = None, method: str = "GET") -> Any:
        params = {"q": q, "epoch": "ns"}
        if db:
            params["db"] = db
        data = None
        url = f"{self.url}/query?" + urllib.parse.urlencode(params)
        if method == "POST":
            data, url = urllib.parse.urlencode(params).encode(), f"{self.url}/query"
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method), timeout=120) as r:
            return json.loads(r.read())

    def count(self, db: str, where: str = "") -> int:
        result = self.query(f"SELECT count(value) FROM {MEASUREMENT} {where}", db)["results"][0]
        series = result.get("series")
        return int(series[0]["values"][0][1]) if series else 0

    def create(self, db: str) -> None:
        self.query(f'CREATE DATABASE "{db}"', method="POST")

    def drop(self, db: str) -> None:
        self.query(f'DROP DATABASE "{db}"', method="POST")


# ------------------------------------------------------------------------------------------
# the topic
# ------------------------------------------------------------------------------------------


def create_topic(bootstrap: str, partitions: int) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"dte-e2e-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(60)
    return topic


def producer(bootstrap: str) -> Any:
    from confluent_kafka import Producer

    return Producer(
        {
            "bootstrap.servers": bootstrap,
            # a retried batch is not written twice: a duplicate would be applied twice by the
            # per-event baselines (and equal point counts in InfluxDB would hide it)
            "enable.idempotence": True,
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
        }
    )


def produce(bootstrap: str, partitions: int, records: int, twins: int, start_ns: int) -> str:
    """A fresh topic holding the benchmark's records (keyed by twin: the default partitioner)."""
    topic = create_topic(bootstrap, partitions)
    p = producer(bootstrap)
    for i in range(records):
        key, value = record(i, twins, start_ns)
        while True:
            try:
                p.produce(topic, value, key)
                break
            except BufferError:
                p.poll(0.05)
        if i % 50_000 == 0:
            p.poll(0)
    if p.flush(120):
        raise RuntimeError("could not produce the benchmark records")
    held = topic_size(bootstrap, topic, partitions)
    if held != records:
        raise RuntimeError(f"the topic holds {held:,} records, not {records:,}")
    return topic


def topic_size(bootstrap: str, topic: str, partitions: int) -> int:
    """Records in ``topic``: the sum of its partitions' high watermarks (a fresh topic)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-e2e-size"})
    try:
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, part), timeout=30)[1]
            for part in range(partitions)
        )
    finally:
        consumer.close()


# ------------------------------------------------------------------------------------------
# variants
# ------------------------------------------------------------------------------------------


def dte_spec(path: Path, *, full: bool, flush_interval: float | None = None) -> Path:
    """The kafka_to_influxdb dataflow, its output limited to the common one unless ``full``.

    Addresses, topic and database come from the environment the spec reads (``DTE_KAFKA_*``).
    """
    text = (REPO / "dataflows" / "kafka_to_influxdb.yaml").read_text()
    limit = "" if full else "    fields: [value, estimate, std]\n    tags: [channel, twin_id]\n"
    if flush_interval is not None:
        limit += f"    flush_interval: {flush_interval}\n"
    if "    create_database: true\n" not in text:
        raise RuntimeError("dataflows/kafka_to_influxdb.yaml changed: update bench_e2e.dte_spec")
    path.write_text(text.replace("    create_database: true\n", f"    create_database: true\n{limit}"))
    return path


@dataclass
class Launch:
    argv: list[list[str]]
    env: dict[str, str] = field(default_factory=dict)


def launch_of(variant: str, ctx: Context, db: str, work: Path) -> Launch:
    common = ["--bootstrap", ctx.bootstrap, "--topic", ctx.topic, "--influx", ctx.influx, "--database", db]
    pipes = [PYTHON, str(HERE / "e2e_pipes.py")]
    if variant == "bare":
        return Launch([[*pipes, "bare", *common]])
    if variant == "bare2":
        half = ctx.partitions // 2
        first = ",".join(str(p) for p in range(half))
        second = ",".join(str(p) for p in range(half, ctx.partitions))
        return Launch(
            [
                [*pipes, "bare", *common, "--partitions", first],
                [*pipes, "bare", *common, "--partitions", second],
            ]
        )
    if variant == "naive":
        return Launch([[*pipes, "naive", *common]])
    if variant == "quix":
        return Launch([[str(QUIX_VENV / "bin" / "python"), str(HERE / "e2e_quix.py"), *common]])
    if variant.startswith("dte"):
        flush = 1.0 if variant == "dte-flush" else None
        spec = dte_spec(work / "spec.yaml", full=variant == "dte-full", flush_interval=flush)
        argv = [str(Path(PYTHON).parent / "dte-stream"), "run", str(spec), "--quiet"]
        argv += ["--recovery-dir", str(work / "recovery")]
        if variant == "dte2":
            argv += ["--processes", "2"]
        env = {
            "DTE_KAFKA_BOOTSTRAP": ctx.bootstrap,
            "DTE_KAFKA_TOPIC": ctx.topic,
            "DTE_INFLUXDB_URL": ctx.influx,
            "DTE_INFLUXDB_DATABASE": db,
            "DTE_DEAD_LETTERS": str(work / "dead_letters.jsonl"),
        }
        return Launch([argv], env)
    raise ValueError(variant)


def stop_all(procs: list[subprocess.Popen[bytes]], logs: list[Any]) -> None:
    """SIGTERM every variant process's group, SIGKILL after 15 s; close the logs."""
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    for log in logs:
        log.close()


def tree_hwm_kb(pids: list[int]) -> int:
    """The sum of VmHWM (peak RSS) over ``pids`` and all their descendants."""
    return sum(_status_kb(pid, "VmHWM:") for pid in _tree(pids))


def process_hwm_kb(pids: list[int]) -> dict[int, tuple[str, int]]:
    """pid -> (what the process is, its VmHWM) for ``pids`` and all their descendants."""
    return {pid: (process_label(pid), _status_kb(pid, "VmHWM:")) for pid in _tree(pids)}


def process_label(pid: int) -> str:
    """A short name for a variant's process: ``view writer``, ``snapshot reader``, or its
    program and first argument (``dte-stream run``, ``e2e_pipes.py bare``)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return "?"
    if "dte_stream.view.process" in argv:
        return "view writer"
    if argv[1:4] == ["-I", "-S", "-c"]:
        return "snapshot reader"  # dte_stream/twins/snapshot_log.py's reader at a restore
    words = [Path(a).name for a in argv if not a.startswith("-")]
    if words and words[0].startswith("python"):
        words = words[1:]
    return " ".join(words[:2]) or "?"


def tree_cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by ``pids``, their descendants and reaped children."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in _tree(pids):
        with contextlib.suppress(OSError, IndexError, ValueError), open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return total / tick


def _status_kb(pid: int, field: str) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for row in f:
            if row.startswith(field):
                return int(row.split()[1])
    return 0


def _tree(pids: list[int]) -> list[int]:
    """``pids`` and all their living descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    todo, seen = list(pids), []
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo += children.get(pid, [])
    return seen


@dataclass
class Context:
    bootstrap: str
    influx: str
    topic: str
    partitions: int
    records: int
    twins: int
    start_ns: int


@dataclass
class RunResult:
    variant: str
    twins: int
    seconds: float
    rss_mb: float
    points: int
    cpu_s: float = 0.0  # CPU seconds of the variant's processes (not Kafka's or InfluxDB's)
    #: the machine's busy cores over the run (everything: the variant, Kafka, InfluxDB, the rest):
    #: near the machine's core count, the run was bound by the CPU of all of them together
    machine_cores: float = 0.0
    #: peak RSS (MiB) of each of the variant's processes, by label (see process_label), in start order
    rss_by_process: list[tuple[str, float]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.points / self.seconds


def run_variant(variant: str, ctx: Context, influx: Influx, timeout: float) -> tuple[RunResult, str, Path]:
    """Run one variant until InfluxDB holds ``ctx.records`` points; the result, its db, its work dir."""
    db = f"e2e_{variant.replace('-', '_')}_{uuid.uuid4().hex[:6]}"
    influx.create(db)
    work = Path(tempfile.mkdtemp(prefix=f"dte-e2e-{variant}-"))
    launch = launch_of(variant, ctx, db, work)
    env = {**os.environ, **launch.env, "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO)])}
    logs = [open(work / f"log{i}.txt", "w") for i in range(len(launch.argv))]  # noqa: SIM115
    started, busy_at_start = time.perf_counter(), machine_busy()
    procs = [
        subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        for argv, log in zip(launch.argv, logs, strict=True)
    ]
    points, hwm, cpu = 0, 0, 0.0
    peaks: dict[int, tuple[str, int]] = {}
    try:
        last_report = started
        while True:
            time.sleep(0.25)
            points = influx.count(db)
            elapsed = time.perf_counter() - started
            hwm = max(hwm, tree_hwm_kb([p.pid for p in procs]))
            for pid, (label, kb) in process_hwm_kb([p.pid for p in procs]).items():
                peaks[pid] = (label, max(kb, peaks.get(pid, (label, 0))[1]))
            cpu = max(cpu, tree_cpu_s([p.pid for p in procs]))
            if points >= ctx.records:
                break
            dead = [p for p in procs if p.poll() is not None]
            if dead or elapsed > timeout:
                tail = (work / "log0.txt").read_text()[-2000:]
                why = f"exited with {dead[0].returncode}" if dead else f"timed out after {timeout:.0f} s"
                raise RuntimeError(f"{variant} {why} at {points:,} points; log ends:\n{tail}")
            if time.perf_counter() - last_report > 10:
                last_report = time.perf_counter()
                say(f"  {variant}: {points:,} of {ctx.records:,} points after {elapsed:.0f} s")
        seconds = time.perf_counter() - started
        cores = (machine_busy() - busy_at_start) / seconds
    finally:
        stop_all(procs, logs)
    by_process = [(label, kb / 1024) for _, (label, kb) in sorted(peaks.items()) if kb]
    return RunResult(variant, ctx.twins, seconds, hwm / 1024, points, cpu, cores, by_process), db, work


def machine_busy() -> float:
    """CPU seconds the machine's cores have been busy so far (user, nice, system, irq, softirq)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def estimates(influx: Influx, db: str, twins: list[str]) -> dict[tuple[str, str, int], tuple[float, float]]:
    """(twin, channel, time) -> (estimate, std) for every point of ``twins``."""
    out = {}
    for twin in twins:
        q = f"SELECT estimate, std, channel FROM {MEASUREMENT} WHERE twin_id = '{twin}'"
        series = influx.query(q, db)["results"][0].get("series") or []
        for s in series:
            for t, est, std, channel in s["values"]:
                out[(twin, channel, t)] = (est, std)
    return out


def compare(reference: dict[Any, tuple[float, float]], other: dict[Any, tuple[float, float]]) -> str:
    """'equal' or what differs, to 1e-9 relative."""
    if reference.keys() != other.keys():
        return f"DIFFERENT points ({len(reference)} vs {len(other)})"
    worst, where, pair = 0.0, None, None
    differ = 0
    for key, (e, s) in reference.items():
        e2, s2 = other[key]
        rel = max(abs(a - b) / max(abs(a), abs(b), 1e-12) for a, b in ((e, e2), (s, s2)))
        differ += rel > 1e-9
        if rel > worst:
            worst, where, pair = rel, key, ((e, s), (e2, s2))
    if worst <= 1e-9:
        return "equal"
    return (
        f"DIFFERENT estimates at {differ:,} of {len(reference):,} points (worst relative {worst:.2e}"
        f" at {where}: estimate, std {pair[0]} vs {pair[1]})"
    )


# ------------------------------------------------------------------------------------------
# latency
# ------------------------------------------------------------------------------------------

SLOT_NS = 50_000_000
#: The first seconds of a latency run are left out (``--latency-warmup``): the variant's first
#: batches (allocations, new series in InfluxDB, the API process starting beside dte-stream) are
#: not its steady state; at 36,500 readings/s dte-stream needs about 10 s to catch up with them.
WARMUP_SECONDS = 10.0
#: How long the latency poller waits for the last readings after producing stops.
DRAIN_SECONDS = 20.0


@dataclass
class Latency:
    """One latency run: the poller's p50/p99 and the writer's own acknowledgement histogram."""

    p50: float
    p99: float
    #: per point, InfluxDB's acknowledgement of its write minus its time, in LAG_BUCKETS
    acked: list[int] = field(default_factory=list)

    def acked_quantile(self, q: float) -> float:
        return lag_quantile(self.acked, q) if self.acked else float("nan")

    def acked_within(self, seconds: float) -> float:
        """The fraction of points acknowledged within ``seconds`` (a bound of LAG_BUCKETS)."""
        total = sum(self.acked)
        inside = sum(n for bound, n in zip(LAG_BUCKETS, self.acked, strict=False) if bound <= seconds)
        return inside / total if total else float("nan")


def scrape_lag(port: int) -> list[int]:
    """dte-stream's ``dte_influxdb_stored_lag_seconds`` histogram as counts per LAG_BUCKETS bucket."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    cumulative = {
        float(m.group(1)): float(m.group(2))
        for m in re.finditer(r'^dte_influxdb_stored_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.M)
    }
    running, counts = 0.0, []
    for bound in (*LAG_BUCKETS, float("inf")):
        counts.append(int(cumulative.get(bound, running) - running))
        running = cumulative.get(bound, running)
    return counts


def consecutive_free_ports(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports (a cluster's ``--http`` ports)."""
    for _ in range(100):
        first = devservices().free_ports(1)[0]
        socks: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {count} consecutive free ports found")


def latency_run(
    variant: str,
    ctx: Context,
    influx: Influx,
    rate: float,
    seconds: float,
    *,
    poll: bool = False,
    warmup: float = WARMUP_SECONDS,
) -> Latency:
    """p50 and p99 seconds from a reading's (wall-clock) event time until InfluxDB returns it.

    Two measurements of the same run: the poller below (when a query first finds the reading's
    50 ms slot complete: an upper bound that includes the query's own time, which under load is
    seconds), and the writer's (when InfluxDB acknowledged the write that held the point:
    dte-stream's ``dte_influxdb_stored_lag_seconds`` histogram, scraped from ``--http``, and the
    same buckets counted by the baselines' writer), which has no polling in it. The poller runs
    only with ``poll``: at tens of thousands of readings/s its query every 50 ms takes CPU from
    the very pipeline it measures (dte-stream fell 5 s behind at 36,500 readings/s with it, kept
    up without it). Both leave out the first ``warmup`` seconds.
    """
    db = f"lat_{variant.replace('-', '_')}_{uuid.uuid4().hex[:6]}"
    influx.create(db)
    topic = create_topic(ctx.bootstrap, ctx.partitions)
    lat_ctx = Context(ctx.bootstrap, ctx.influx, topic, ctx.partitions, ctx.records, ctx.twins, ctx.start_ns)
    work = Path(tempfile.mkdtemp(prefix=f"dte-e2e-lat-{variant}-"))
    launch = launch_of(variant, lat_ctx, db, work)
    lag_file = work / "lag.json"
    # a cluster of N processes on one host serves --http on port, port + 1, ... (one per process):
    # the points of every process are in the sum of their histograms
    processes = 2 if variant == "dte2" else 1
    http_port = consecutive_free_ports(processes) if variant.startswith("dte") else None
    if http_port is not None:
        launch.argv[0] += ["--http", f"127.0.0.1:{http_port}"]
    env = {**os.environ, **launch.env, "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO)])}
    env["E2E_LAG_FILE"] = str(lag_file)
    logs = [open(work / f"log{i}.txt", "w") for i in range(len(launch.argv))]  # noqa: SIM115
    procs = [
        subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        for argv, log in zip(launch.argv, logs, strict=True)
    ]
    produced: dict[int, int] = {}  # slot -> readings
    complete: dict[int, int] = {}  # slot -> wall ns when InfluxDB held all of it
    stop = threading.Event()
    acked: list[int] = []

    def read_acked() -> list[int]:
        if http_port is not None:
            per_process = [scrape_lag(http_port + i) for i in range(processes)]
            return [sum(counts) for counts in zip(*per_process, strict=True)]
        if lag_file.exists():
            return list(json.loads(lag_file.read_text()))
        return [0] * (len(LAG_BUCKETS) + 1)

    def produce_live() -> None:
        p = producer(ctx.bootstrap)
        i, t0 = 0, time.perf_counter()
        while not stop.is_set():
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(min(delay, 0.01))
                continue
            now = time.time_ns()
            key, value = record(i, ctx.twins, 0, now)
            p.produce(topic, value, key)
            produced[now // SLOT_NS] = produced.get(now // SLOT_NS, 0) + 1
            i += 1
            if i % 1000 == 0:
                p.poll(0)
        p.flush(30)

    try:
        time.sleep(8)  # let the variant start (Bytewax, connections) before the clock runs
        writer = threading.Thread(target=produce_live, daemon=True)
        began = time.time_ns()
        writer.start()
        ended: int | None = None  # when producing stopped; polling goes on until all is in
        warm: list[int] | None = None  # the acknowledgement counts when the warm-up ended
        produced_at_warm = 0
        while True:
            if warm is None and time.time_ns() - began >= warmup * NS_PER_S:
                warm, produced_at_warm = read_acked(), sum(produced.values())
            if ended is None and time.time_ns() - began >= seconds * NS_PER_S:
                stop.set()
                writer.join(30)
                ended = time.time_ns()
            if ended is not None and (
                time.time_ns() - ended > DRAIN_SECONDS * NS_PER_S
                or (poll and all(s in complete for s in produced))
                or (not poll and sum(read_acked()) >= sum(produced.values()))
            ):
                break
            if not poll:
                time.sleep(0.25)
                continue
            time.sleep(0.05)
            q = f"SELECT count(value) FROM {MEASUREMENT} WHERE time >= {began} GROUP BY time(50ms)"
            now = time.time_ns()
            series = influx.query(q, db)["results"][0].get("series") or []
            for s in series:
                for t, n in s["values"]:
                    slot = t // SLOT_NS
                    if slot not in complete and n and n >= produced.get(slot, 1 << 60):
                        complete[slot] = now
        acked = [a - w for a, w in zip(read_acked(), warm or [], strict=False)]
        # readings produced after the warm-up that were never stored count as infinitely late
        missing = sum(produced.values()) - produced_at_warm - sum(acked)
        if acked and missing > 0:
            say(f"  {variant}: {missing:,} readings not stored by the end of the latency run")
            acked[-1] += missing
    finally:
        stop_all(procs, logs)
        influx.drop(db)
        shutil.rmtree(work, ignore_errors=True)
    # a reading's latency: its slot's completion minus its time (mid-slot), weighted by readings;
    # slots of the warm-up are left out (start-up)
    slots = sorted(s for s in produced if s - min(produced) > warmup * NS_PER_S // SLOT_NS)
    samples: list[float] = []
    missing = 0
    for s in slots:
        if s in complete:
            lat = (complete[s] - (s * SLOT_NS + SLOT_NS // 2)) / NS_PER_S
            samples += [lat] * produced[s]
        else:
            missing += produced[s]
    if not samples or not poll:
        return Latency(float("nan"), float("nan"), acked)
    samples.sort()
    if missing:
        say(f"  {variant}: {missing:,} readings never complete in InfluxDB during the latency run")
        samples += [float("inf")] * missing
        samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return Latency(samples[len(samples) // 2], p99, acked)


# ------------------------------------------------------------------------------------------
# quix venv
# ------------------------------------------------------------------------------------------


def ensure_quix_venv() -> bool:
    """Create .cache/bench-quix-venv with quixstreams and numpy (once); False if that fails."""
    python = QUIX_VENV / "bin" / "python"
    probe = [str(python), "-c", "import quixstreams, numpy, orjson, influxdb"]
    if python.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return True
    say("creating the Quix Streams virtual environment (a baseline only) ...")
    base = getattr(sys, "_base_executable", None) or shutil.which("python3") or "python3"
    steps = [
        [base, "-m", "venv", str(QUIX_VENV)],
        [str(QUIX_VENV / "bin" / "pip"), "install", "--quiet", "quixstreams[influxdb1]", "numpy", "orjson"],
    ]
    for step in steps:
        if subprocess.run(step, check=False).returncode != 0:
            say("could not create the Quix Streams environment; quix is left out")
            return False
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------


def dte_has_processes() -> bool:
    out = subprocess.run(
        [str(Path(PYTHON).parent / "dte-stream"), "run", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    return "--processes" in out.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--twins", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(ALL_VARIANTS), choices=ALL_VARIANTS)
    parser.add_argument("--quick", action="store_true", help="200,000 records, 1,000 twins, one round")
    parser.add_argument("--latency", action="store_true", help="also p50/p99 latency at half of dte's rate")
    parser.add_argument("--latency-seconds", type=float, default=30.0)
    parser.add_argument(
        "--latency-warmup", type=float, default=WARMUP_SECONDS, help="seconds left out at the start"
    )
    parser.add_argument(
        "--latency-poller", action="store_true", help="also poll InfluxDB for each 50 ms slot"
    )
    parser.add_argument(
        "--latency-rate", type=float, help="readings/s of the latency runs (default: half of dte's best)"
    )
    parser.add_argument(
        "--latency-variants", nargs="+", default=["bare", "dte", "naive"], choices=list(LABELS)
    )
    parser.add_argument("--sample-twins", type=int, default=3, help="twins whose estimates are compared")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds a run may take")
    parser.add_argument("--bootstrap", default=os.environ.get("DTE_TEST_KAFKA_BOOTSTRAP"))
    parser.add_argument("--influx", default=os.environ.get("DTE_TEST_INFLUXDB_URL"))
    parser.add_argument("--plot", type=Path, help="write a bar chart (PNG) of the rates")
    parser.add_argument("--json", type=Path, help="write every run as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the databases (to look at them)")
    args = parser.parse_args(argv)
    if args.quick:
        args.records, args.twins, args.rounds = min(args.records, 200_000), args.twins[:1], 1
    variants = list(args.variants)
    if "dte2" in variants and not dte_has_processes():
        say("dte-stream run has no --processes yet: dte2 is left out")
        variants.remove("dte2")
    if "quix" in variants and not ensure_quix_venv():
        variants.remove("quix")

    results: list[RunResult] = []
    checks: dict[tuple[str, int], list[str]] = {}
    latencies: dict[tuple[str, int], Latency] = {}
    with service("kafka", args.bootstrap) as bootstrap, service("influxdb", args.influx) as influx_url:
        influx = Influx(influx_url)
        for twins in args.twins:
            per_twin = args.records // (3 * twins) + 1
            start_ns = (time.time_ns() // NS_PER_S - per_twin - 600) * NS_PER_S  # ends 10 min ago
            say(
                f"producing {args.records:,} records of {twins:,} twins into {args.partitions} partitions ..."
            )
            t = time.perf_counter()
            topic = produce(bootstrap, args.partitions, args.records, twins, start_ns)
            say(f"produced in {time.perf_counter() - t:.1f} s (topic {topic})")
            ctx = Context(bootstrap, influx_url, topic, args.partitions, args.records, twins, start_ns)
            sample = [twin_id(i * (twins // max(1, args.sample_twins))) for i in range(args.sample_twins)]
            reference: dict[Any, tuple[float, float]] | None = None
            for round_ in range(args.rounds):
                # the order turns by one each round: no variant always follows the same one
                # (InfluxDB still works on the points of the variant before for a while)
                turn = round_ % len(variants)
                for variant in variants[turn:] + variants[:turn]:
                    say(f"twins {twins:,}, round {round_ + 1}/{args.rounds}: {variant} ...")
                    result, db, work = run_variant(variant, ctx, influx, args.timeout)
                    results.append(result)
                    if args.json:  # as it goes: a failure later keeps what was measured
                        args.json.with_suffix(".partial.jsonl").open("a").write(
                            json.dumps(result.__dict__) + "\n"
                        )
                    verdict = ""
                    if variant in KALMAN_VARIANTS:
                        found = estimates(influx, db, sample)
                        if reference is None:
                            reference, verdict = found, "reference"
                        else:
                            verdict = compare(reference, found)
                        checks.setdefault((variant, twins), []).append(verdict)
                    if not args.keep:
                        influx.drop(db)
                        shutil.rmtree(work, ignore_errors=True)
                    say(
                        f"  {variant}: {result.rate:,.0f} readings/s ({result.seconds:.1f} s), "
                        f"peak RSS {result.rss_mb:,.0f} MB ({per_process(result)}), "
                        f"CPU {result.cpu_s:.1f} s, "
                        f"machine {result.machine_cores:.2f} of {os.cpu_count()} cores busy {verdict}"
                        + (f" (db {db}, {work})" if args.keep else "")
                    )
            if args.latency:
                best_dte = max(
                    (r.rate for r in results if r.variant == "dte" and r.twins == twins), default=0
                )
                rate = args.latency_rate or (best_dte / 2 if best_dte else 10_000)
                for variant in [v for v in args.latency_variants if v in [*variants, "dte-flush"]]:
                    say(
                        f"latency of {variant} at {rate:,.0f} readings/s for {args.latency_seconds:.0f} s ..."
                    )
                    latencies[(variant, twins)] = latency_run(
                        variant,
                        ctx,
                        influx,
                        rate,
                        args.latency_seconds,
                        poll=args.latency_poller,
                        warmup=args.latency_warmup,
                    )
                    lat = latencies[(variant, twins)]
                    say(
                        f"  polled p50 {lat.p50:.3f} s, p99 {lat.p99:.3f} s; acknowledged p50 <= "
                        f"{lat.acked_quantile(0.5)} s, p99 <= {lat.acked_quantile(0.99)} s, "
                        f"{lat.acked_within(1.0):.2%} within 1 s"
                    )

    report(args, variants, results, checks, latencies)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "runs": [r.__dict__ for r in results],
                    "checks": {f"{v}@{t}": c for (v, t), c in checks.items()},
                    "latency": {f"{v}@{t}": lat.__dict__ for (v, t), lat in latencies.items()},
                },
                indent=1,
            )
        )
    if args.plot:
        plot(args.plot, variants, results, args.twins)
    return 0


def per_process(result: RunResult) -> str:
    """``dte-stream run 377, view writer 36`` (MB): each process's peak RSS."""
    return ", ".join(f"{label} {mb:,.0f}" for label, mb in result.rss_by_process)


def report(
    args: argparse.Namespace,
    variants: list[str],
    results: list[RunResult],
    checks: dict[tuple[str, int], list[str]],
    latencies: dict[tuple[str, int], Latency],
) -> None:
    print(
        f"\nEnd to end, {args.records:,} one-reading JSON records in {args.partitions} partitions, "
        f"{args.rounds} interleaved round(s); readings/s from start until InfluxDB holds every point "
        f"(min-max over rounds; ratio of medians to the bare pipe, 1 process):\n"
    )
    header = "| variant |" + "".join(f" {t:,} twins, readings/s | ratio | peak RSS MB |" for t in args.twins)
    print(header)
    print("|---|" + "---:|---:|---:|" * len(args.twins))
    for variant in variants:
        row = f"| {LABELS[variant]} |"
        for twins in args.twins:
            rates = [r.rate for r in results if r.variant == variant and r.twins == twins]
            bare = [r.rate for r in results if r.variant == "bare" and r.twins == twins]
            rss = max((r.rss_mb for r in results if r.variant == variant and r.twins == twins), default=0)
            if not rates:
                row += " - | - | - |"
                continue
            ratio = statistics.median(rates) / statistics.median(bare) if bare else float("nan")
            span = f"{min(rates):,.0f}" if len(rates) == 1 else f"{min(rates):,.0f}-{max(rates):,.0f}"
            row += f" {span} | {ratio:.2f} | {rss:,.0f} |"
        print(row)
    if checks:
        print("\nEstimates on the sample twins against the first Kalman variant:")
        for (variant, twins), verdicts in checks.items():
            print(f"- {LABELS[variant]}, {twins:,} twins: {', '.join(verdicts)}")
    if latencies:
        print(
            "\n| variant | twins | polled p50 s | polled p99 s | acknowledged p50 <= s | "
            "acknowledged p99 <= s | acknowledged within 1 s |\n|---|---:|---:|---:|---:|---:|---:|"
        )
        for (variant, twins), lat in latencies.items():
            print(
                f"| {LABELS[variant]} | {twins:,} | {lat.p50:.3f} | {lat.p99:.3f} | "
                f"{lat.acked_quantile(0.5)} | {lat.acked_quantile(0.99)} | {lat.acked_within(1.0):.2%} |"
            )


def plot(path: Path, variants: list[str], results: list[RunResult], twin_counts: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(twin_counts)
    for k, twins in enumerate(twin_counts):
        medians, lows, highs = [], [], []
        for variant in variants:
            rates = [r.rate for r in results if r.variant == variant and r.twins == twins] or [0.0]
            med = statistics.median(rates)
            medians.append(med)
            lows.append(med - min(rates))
            highs.append(max(rates) - med)
        xs = [i + (k - (len(twin_counts) - 1) / 2) * width for i in range(len(variants))]
        ax.bar(xs, medians, width, yerr=[lows, highs], label=f"{twins:,} twins", capsize=3)
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels([LABELS[v].replace(", ", "\n") for v in variants], fontsize=8)
    ax.set_ylabel("readings/s, Kafka to InfluxDB")
    ax.set_title("End to end (median and range over rounds, same run)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    say(f"plot written to {path}")


if __name__ == "__main__":
    raise SystemExit(main())
