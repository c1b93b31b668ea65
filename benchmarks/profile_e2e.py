"""Where dte-stream's time goes on the real Kafka -> InfluxDB run: a sampling profile by stage.

Produces ``--records`` records of ``--twins`` twins (the format of bench_e2e.py) into a fresh
topic, runs ``dte-stream run`` on ``dataflows/kafka_to_influxdb.yaml`` (output limited as in
bench_e2e.py unless ``--full``; ``stop_at_end: true`` so that it exits when the topic is
drained; ``--recovery-dir`` as a daemon runs) under py-spy (a profiling tool from PyPI,
installed once into ``.cache/bench-profile-venv`` by this script, never a dependency), every
thread sampled, and sorts each sample into the stage of its deepest recognised frame: Kafka
source, decode, routing and id lookup, bank (filters), quality checks, anomaly scorer, learners,
alert rules, snapshot per epoch, the twin state view published per epoch, line-protocol
serialisation, InfluxDB sink (buffer, HTTP), Bytewax and the rest. Prints a Markdown table of
shares of the samples (CPU time of dte-stream's process; InfluxDB and Kafka run beside it).

    .venv/bin/python benchmarks/profile_e2e.py --twins 1000 --records 500000
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_e2e import REPO, Influx, dte_spec, produce, say, service
from e2e_common import NS_PER_S

PROFILE_VENV = REPO / ".cache" / "bench-profile-venv"


def ensure_pyspy() -> Path:
    """py-spy from the venv's bin, else from .cache/bench-profile-venv (created once)."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return beside
    pyspy = PROFILE_VENV / "bin" / "py-spy"
    if not pyspy.exists():
        say("installing py-spy into .cache/bench-profile-venv (a profiling tool, not a dependency) ...")
        base = getattr(sys, "_base_executable", None) or "python3"
        subprocess.run([base, "-m", "venv", str(PROFILE_VENV)], check=True)
        subprocess.run([str(PROFILE_VENV / "bin" / "pip"), "install", "--quiet", "py-spy"], check=True)
    return pyspy


#: (stage, substrings of a frame "function (file:line)"), matched from the leaf upwards; the
#: first stage any frame matches wins, so more specific stages come first.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("snapshot per epoch", ("snapshot (",)),
    ("twin state view (published per epoch)", ("dte_stream/view/", "_publish (", "twins/flags.py")),
    ("decode", ("dte_stream/codecs/", "dte_stream/readings.py", "_decode (")),
    ("Kafka source", ("connectors/kafka/", "confluent_kafka")),
    ("line-protocol serialisation", ("connectors/influxdb/serialise.py",)),
    ("InfluxDB sink (buffer, HTTP)", ("connectors/influxdb/",)),
    ("alert rules", ("dte_stream/alerts/",)),
    ("learners", ("twins/learners.py", "river/")),
    ("anomaly scorer", ("twins/anomaly.py",)),
    ("quality checks", ("twins/quality.py",)),
    ("routing and id lookup", ("twins/routing.py", "twins/idindex.py")),
    ("bank (filters, outputs)", ("dte_stream/twins/",)),
    ("metrics", ("dte_stream/metrics.py", "dte_stream/metric_catalogue.py")),
    ("start-up (imports, spec)", ("_find_and_load", "dte_stream/spec/")),
    ("Bytewax engine (native, below run_flow)", ("run_flow (",)),
    (
        "dataflow wiring",
        (
            "dte_stream/dataflow.py",
            "dte_stream/flow_steps.py",
            "dte_stream/shard_logic.py",
            "dte_stream/batches.py",
        ),
    ),
    ("Bytewax", ("bytewax",)),
]


#: Leaf frames of a thread blocked in a wait or a read. py-spy's idle detection misses threads
#: blocked in these (a pipe's read, a condition variable), so they would count as busy: their
#: samples are reported apart and left out of the shares.
BLOCKED_LEAVES = (
    "Condition.wait (threading.py",
    "Event.wait (threading.py",
    "read_frame (dte_stream/view/process_child.py",
    "_copy (dte_stream/cli/failures.py",
    "readinto (socket.py",
    "select (selectors.py",
)


def blocked(leaf: str) -> bool:
    return leaf.startswith(BLOCKED_LEAVES)


def stage_of(frames: list[str]) -> str:
    for frame in reversed(frames):  # leaf first
        for stage, needles in STAGES:
            if any(n in frame for n in needles):
                return stage
    return "other"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--twins", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--full", action="store_true", help="dte-stream's full output")
    parser.add_argument("--processes", type=int, default=1, help="dte-stream run --processes N")
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument(
        "--blocking",
        action="store_true",
        help="pause the process for each sample (exact stacks, but it runs several times slower)",
    )
    parser.add_argument("--top", type=int, default=25, help="also print the top leaf functions")
    parser.add_argument("--bootstrap", default=os.environ.get("DTE_TEST_KAFKA_BOOTSTRAP"))
    parser.add_argument("--influx", default=os.environ.get("DTE_TEST_INFLUXDB_URL"))
    args = parser.parse_args(argv)
    pyspy = ensure_pyspy()
    with service("kafka", args.bootstrap) as bootstrap, service("influxdb", args.influx) as influx_url:
        per_twin = args.records // (3 * args.twins) + 1
        start_ns = (time.time_ns() // NS_PER_S - per_twin - 600) * NS_PER_S
        say(f"producing {args.records:,} records of {args.twins:,} twins ...")
        topic = produce(bootstrap, args.partitions, args.records, args.twins, start_ns)
        work = Path(tempfile.mkdtemp(prefix="dte-profile-"))
        spec = dte_spec(work / "spec.yaml", full=args.full)
        spec.write_text(
            spec.read_text().replace(
                "    key_is_twin_id: true\n", "    key_is_twin_id: true\n    stop_at_end: true\n"
            )
        )
        db = f"profile_{os.getpid()}"
        env = {
            **os.environ,
            "DTE_KAFKA_BOOTSTRAP": bootstrap,
            "DTE_KAFKA_TOPIC": topic,
            "DTE_INFLUXDB_URL": influx_url,
            "DTE_INFLUXDB_DATABASE": db,
            "DTE_DEAD_LETTERS": str(work / "dead.jsonl"),
        }
        out = work / "stacks.txt"
        dte = [str(Path(sys.executable).parent / "dte-stream"), "run", str(spec), "--quiet"]
        dte += ["--recovery-dir", str(work / "recovery")]
        if args.processes > 1:
            dte += ["--processes", str(args.processes)]
        say("profiling dte-stream run ...")
        started = time.perf_counter()
        subprocess.run(
            [
                str(pyspy),
                "record",
                "--format",
                "raw",
                "--rate",
                str(args.rate),
                "--threads",
                *([] if args.blocking else ["--nonblocking"]),
                *(["--subprocesses"] if args.processes > 1 else []),
                "-o",
                str(out),
                "--",
                *dte,
            ],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        seconds = time.perf_counter() - started
        points = Influx(influx_url).count(db)
        Influx(influx_url).drop(db)
    by_stage: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = waiting = 0
    for row in out.read_text().splitlines():
        stack, _, count = row.rpartition(" ")
        if not count.isdigit():  # not a stack line (py-spy --subprocesses adds a few)
            continue
        frames = stack.split(";")
        n = int(count)
        total += n
        if blocked(frames[-1]):
            waiting += n
            continue
        by_stage[stage_of(frames)] += n
        leaves[frames[-1]] += n
    print(
        f"\ndte-stream run, {args.records:,} records of {args.twins:,} twins, "
        f"{'full' if args.full else 'limited'} output, {args.processes} process(es): "
        f"{seconds:.1f} s with the profiler, "
        f"{points:,} points; {total:,} samples of busy threads, of which {waiting:,} blocked in a "
        "wait or a read (left out below)\n"
    )
    total -= waiting
    print("| stage | share of samples |\n|---|---:|")
    for stage, n in by_stage.most_common():
        print(f"| {stage} | {100 * n / total:.1f} % |")
    print(f"\nTop {args.top} leaf functions:\n")
    for leaf, n in leaves.most_common(args.top):
        print(f"{100 * n / total:5.1f} %  {leaf}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
