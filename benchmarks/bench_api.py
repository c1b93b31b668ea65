"""What the twin view and the HTTP API cost a dataflow running at full speed, and their latency.

Three configurations of ``dte-stream demo --twins N --rate 0`` (simulated pumps as fast as
possible, 4 shards, one worker), each run for ``--seconds`` and repeated ``--rounds`` times,
interleaved so that the shared machine's load hits them alike:

- ``no-view``: the dataflow with the twin view switched off (the baseline);
- ``view``: the dataflow as shipped: shards publish the twin view;
- ``view+api``: also ``--http``, with a client sending ``--rps`` requests per second, half twin
  lists (``GET /api/v1/twins?limit=100&offset=random``) and half twin details
  (``GET /api/v1/twins/pump-XXXX``, a random twin), timing each.

Prints per configuration (median of the rounds) readings/s and the CPU time per reading (of the
demo's process and of the processes it starts: the view's writer, the API), the p50/p99 latency
of list and detail, and the cost of the view and the API against the baseline in both: the
throughput lost, and the CPU added per reading (what the throughput loses on a machine whose
cores are all busy; on a shared machine it is the steadier figure). Both over the whole run
(what the demo prints: start-up and the end included) and over its steady window, from
``WARMUP_S`` after the first reading to the end of the input, sampled every 0.5 s inside the
demo: what a dataflow that runs for hours pays.

    python benchmarks/bench_api.py --twins 10000 --seconds 30 --rounds 2 --rps 20
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

import httpx

PY = sys.executable
# CPU seconds of the demo and of the processes it started (the view's writer, the API), printed at
# exit; atexit runs last-registered first, so the view's writer has been waited for by then. And
# every half second, readings processed and CPU seconds so far (this process, its live children
# from /proc, and its reaped ones): the steady window of the run, after the start and before the
# end of the input, is measured from these samples.
SAMPLER = """
def _children_cpu():
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for task in os.listdir("/proc/self/task"):
        try:
            kids = open(f"/proc/self/task/{task}/children").read().split()
        except OSError:
            continue
        for pid in kids:
            try:
                fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick
    return total + sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])


def _sample_loop(samples):
    from dte_stream.metrics import METRICS
    while True:
        cpu = time.process_time() + _children_cpu()
        samples.append((time.monotonic(), METRICS.get("readings_processed"), cpu))
        time.sleep(0.5)


_samples = []
threading.Thread(target=_sample_loop, args=(_samples,), daemon=True).start()
atexit.register(lambda: print("samples " + json.dumps(_samples), file=sys.stderr))
"""
CPU = (
    "import atexit, json, os, resource, sys, threading, time; "
    "atexit.register(lambda: print('cpu %.3f %.3f' % ("
    "sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), "
    "sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])), file=sys.stderr)); "
    f"exec({SAMPLER!r}); "
)
# The baseline switches the view off inside the demo process (the benchmark's only hook).
NO_VIEW = (
    CPU + "import dte_stream.dataflow as d; d.ViewHub = lambda *args, **kwargs: None; "
    "from dte_stream.cli import main; sys.exit(main(sys.argv[1:]))"
)
WITH_VIEW = CPU + "from dte_stream.cli import main; sys.exit(main(sys.argv[1:]))"
RATE = re.compile(r"([\d,]+) readings processed \(([\d,]+) readings/s\)")
CPU_LINE = re.compile(r"^cpu ([\d.]+) ([\d.]+)$", re.MULTILINE)
SAMPLES = re.compile(r"^samples (.*)$", re.MULTILINE)
#: Seconds after the first reading before the steady window starts (imports, the writer's and the
#: API's start, the first write of every twin).
WARMUP_S = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def demo_args(twins: int, seconds: float, data_dir: Path) -> list[str]:
    return ["demo", "--twins", str(twins), "--rate", "0", "--duration", str(seconds),
            "--data-dir", str(data_dir), "--quiet"]  # fmt: skip


class Run(NamedTuple):
    """One demo run: readings/s as it reports them and CPU microseconds per reading (the demo's
    process and the processes it started, together) over the whole run, and both again over the
    steady window (from ``WARMUP_S`` after the first reading to the end of the input)."""

    rate: float
    cpu_us: float
    steady_rate: float
    steady_cpu_us: float


def steady(samples: list[tuple[float, int, float]]) -> tuple[float, float]:
    """Readings/s and CPU us per reading between ``WARMUP_S`` after the first reading and the last
    sample in which the count still grew."""
    first = next((i for i, s in enumerate(samples) if s[1] > 0), None)
    if first is None:
        return float("nan"), float("nan")
    start = next((s for s in samples[first:] if s[0] >= samples[first][0] + WARMUP_S), None)
    final = samples[-1][1]
    end = max((s for s in samples if s[1] < final), key=lambda s: s[0], default=samples[-1])
    if start is None or end[0] <= start[0] or end[1] <= start[1]:
        return float("nan"), float("nan")
    readings = end[1] - start[1]
    return readings / (end[0] - start[0]), 1e6 * (end[2] - start[2]) / readings


def parse_run(stderr: str) -> Run:
    match, cpu, samples = RATE.search(stderr), CPU_LINE.search(stderr), SAMPLES.search(stderr)
    if match is None or cpu is None or samples is None:
        raise RuntimeError(f"no throughput in the demo's output:\n{stderr[-2000:]}")
    readings = float(match.group(1).replace(",", ""))
    seconds = float(cpu.group(1)) + float(cpu.group(2))
    rate, cpu_us = steady([tuple(x) for x in json.loads(samples.group(1))])  # type: ignore[misc]
    return Run(float(match.group(2).replace(",", "")), 1e6 * seconds / max(readings, 1.0), rate, cpu_us)


def run_plain(code: str, twins: int, seconds: float) -> Run:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([PY, "-c", code, *demo_args(twins, seconds, Path(tmp))],
                             capture_output=True, text=True, check=True)  # fmt: skip
        return parse_run(out.stderr)


def run_with_api(twins: int, seconds: float, rps: float) -> tuple[Run, list[float], list[float]]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        token = subprocess.run(
            [PY, "-c", WITH_VIEW, "token", "create", "--name", "bench", "--scope", "read", "--data-dir", tmp],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        proc = subprocess.Popen(
            [PY, "-c", WITH_VIEW, *demo_args(twins, seconds, data), "--http", f"127.0.0.1:{port}"],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        lists: list[float] = []
        details: list[float] = []
        stop = threading.Event()

        def load() -> None:
            rng = random.Random(1)
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=10) as client:
                while not stop.is_set():
                    try:
                        client.get("/healthz")
                        break
                    except httpx.HTTPError:
                        time.sleep(0.1)
                k = 0
                next_at = time.monotonic()
                while not stop.is_set():
                    k += 1
                    start = time.perf_counter()
                    try:
                        if k % 2:
                            r = client.get(
                                "/api/v1/twins", params={"limit": 100, "offset": rng.randrange(twins)}
                            )
                            target = lists
                        else:
                            r = client.get(f"/api/v1/twins/pump-{rng.randrange(twins):04d}")
                            target = details
                    except httpx.HTTPError:
                        break  # the demo ended
                    if r.status_code == 200:
                        target.append(time.perf_counter() - start)
                    next_at += 1.0 / rps
                    time.sleep(max(0.0, next_at - time.monotonic()))

        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        _, err = proc.communicate()
        stop.set()
        thread.join(15)
        if proc.returncode != 0:
            raise RuntimeError(f"demo --http failed:\n{err[-2000:]}")
        return parse_run(err), lists, details


def view_write_cost(twins: int = 2_500) -> tuple[float, float]:
    """CPU and wall seconds per twin of one view write (records + SQLite), demo twin type, warm bank,
    with the cyclic GC off as in the view's writer process."""
    import numpy as np

    from dte_stream.alerts.rules import AlertEngine
    from dte_stream.demo import demo_spec
    from dte_stream.readings import ReadingBatch
    from dte_stream.twins.bank import TwinBank
    from dte_stream.twins.routing import TypedBatch
    from dte_stream.view import TwinView, ViewCollector

    with tempfile.TemporaryDirectory() as tmp:
        spec = demo_spec(twins=10, data_dir=Path(tmp)).twin_types[0]
        bank, engine = TwinBank(spec), AlertEngine(spec.name, spec.channel_names(), spec.alerts)
        view, collector = TwinView.open(tmp), ViewCollector()
        ids = np.repeat(np.array([f"pump-{i:05d}" for i in range(twins)]), 3)
        channels = np.tile(np.array(["temperature", "pressure", "flow"]), twins)
        cpu = wall = 0.0
        for k in range(4):
            values = np.random.default_rng(k).normal(50, 1, 3 * twins)
            rb = ReadingBatch.from_columns(
                ids.tolist(), channels.tolist(), [k * 10**9] * (3 * twins), values.tolist()
            )
            collector.note(
                bank.update(TypedBatch("pump", rb, np.tile(np.arange(3), twins)), now_ns=k * 10**9)
            )
            gc.disable()
            c0, w0 = time.thread_time(), time.perf_counter()
            records, alerts = collector.records(bank, engine)
            view.put(records, k, alerts)
            gc.enable()
            if k:  # the first write creates the rows
                cpu += time.thread_time() - c0
                wall += time.perf_counter() - w0
        view.close()
    return cpu / 3 / twins, wall / 3 / twins


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return 1000 * s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--twins", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rps", type=float, default=20.0, help="API requests per second during view+api")
    args = parser.parse_args()
    cpu, wall = view_write_cost()
    print(f"view write: {1e6 * cpu:.0f} us CPU ({1e6 * wall:.0f} us wall) per changed twin", flush=True)
    runs: dict[str, list[Run]] = {"no-view": [], "view": [], "view+api": []}
    lists: list[float] = []
    details: list[float] = []
    for r in range(args.rounds):
        runs["no-view"].append(run_plain(NO_VIEW, args.twins, args.seconds))
        runs["view"].append(run_plain(WITH_VIEW, args.twins, args.seconds))
        run, lat_list, lat_detail = run_with_api(args.twins, args.seconds, args.rps)
        runs["view+api"].append(run)
        lists += lat_list
        details += lat_detail
        print(f"round {r + 1}: " + "; ".join(
            f"{k} {v[-1].rate:,.0f}/s {v[-1].cpu_us:.2f} us CPU/reading, steady {v[-1].steady_rate:,.0f}/s "
            f"{v[-1].steady_cpu_us:.2f} us" for k, v in runs.items()
        ), flush=True)  # fmt: skip
    print(f"\n{args.twins:,} twins, demo at full speed for {args.seconds:g} s, {args.rounds} rounds (median)")
    base = {f: statistics.median(getattr(r, f) for r in runs["no-view"]) for f in Run._fields}
    for name, values in runs.items():
        med = {f: statistics.median(getattr(r, f) for r in values) for f in Run._fields}
        vs = {f: f"{100 * (med[f] / base[f] - 1):+.1f} %" for f in Run._fields}
        print(f"  {name:<9} whole run {med['rate']:>10,.0f} readings/s ({vs['rate']}), "
              f"{med['cpu_us']:.2f} us CPU/reading ({vs['cpu_us']}); "
              f"steady {med['steady_rate']:>10,.0f} readings/s ({vs['steady_rate']}), "
              f"{med['steady_cpu_us']:.2f} us CPU/reading ({vs['steady_cpu_us']})")  # fmt: skip
    print(f"  API at {args.rps:g} requests/s: twin list (100 rows) p50 {pct(lists, 0.5):.1f} ms, "
          f"p99 {pct(lists, 0.99):.1f} ms ({len(lists)} requests); "
          f"twin detail p50 {pct(details, 0.5):.1f} ms, "
          f"p99 {pct(details, 0.99):.1f} ms ({len(details)} requests)")  # fmt: skip


if __name__ == "__main__":
    main()
