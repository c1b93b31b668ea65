"""What the twin view and the HTTP API cost a dataflow running at full speed, and their latency.

Configurations of ``dte-stream demo --twins N --rate 0`` (simulated pumps as fast as possible,
4 shards, one worker), each run for ``--seconds`` and repeated ``--rounds`` times, interleaved so
that the shared machine's load hits them alike:

- ``no-view``: the dataflow with the twin view switched off (the baseline);
- ``view``: the dataflow as shipped: shards publish the twin view;
- ``view+api``: also ``--http``, with a client sending ``--rps`` requests per second, half twin
  lists (``GET /api/v1/twins?limit=100&offset=random``) and half twin details
  (``GET /api/v1/twins/pump-XXXX``, a random twin), timing each;
- ``view+api0`` (only with ``--configs``): ``--http`` and no requests (what the API costs idle).

Prints per configuration (median of the rounds) readings/s and the CPU time per reading (of the
demo's process and of the processes it starts: the view's writer, the API), the p50/p99 latency
of list and detail, and the cost of the view and the API against the baseline in both: the
throughput lost, and the CPU added per reading (what the throughput loses on a machine whose
cores are all busy; on a shared machine it is the steadier figure). Both over the whole run
(what the demo prints: start-up and the end included) and over its steady window, from
``WARMUP_S`` after the first reading to the end of the input, sampled every 0.5 s inside the
demo: what a dataflow that runs for hours pays.

**The machine's other load.** The dataflow's throughput follows the CPU that other programs
leave it (on a shared 2-core machine it moved 4x between runs with nothing changed), so each run
also measures the **foreign CPU**: the machine's busy CPU time (``/proc/stat``) minus this
benchmark's own and its children's, per second of the run, in cores. With ``--max-foreign C``
a run starts only once the machine has been below ``C`` cores for 2 s (waiting at most
``--quiet-wait`` s), and a run during which others used more than ``C`` cores is run again (at
most ``--retries`` times; the quietest attempt is kept). Each run prints its foreign CPU.

**The client's CPU.** The client runs in this process, on the same cores as the dataflow: a
keep-alive ``http.client`` loop on one thread (about 0.5 ms of CPU per request, a third of
httpx's), whose CPU time is printed separately (it is not in the demo's CPU per reading, but it
does compete with the dataflow for the cores), as are the API's and the writer's processes'.

    python benchmarks/bench_api.py --twins 10000 --seconds 30 --rounds 3 --rps 20 --max-foreign 0.2
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import os
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
    steady window (from ``WARMUP_S`` after the first reading to the end of the input); the
    machine's foreign CPU during the run (cores); CPU seconds per second of the run of the API's
    process, of the view's writer process and of the benchmark's HTTP client; the client's
    requests and its CPU milliseconds per request."""

    rate: float
    cpu_us: float
    steady_rate: float
    steady_cpu_us: float
    foreign: float = float("nan")
    api_cores: float = 0.0
    writer_cores: float = 0.0
    client_cores: float = 0.0
    requests: int = 0
    client_ms: float = float("nan")


TICK = os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds the machine's cores have been busy (user, nice, system, irq, softirq)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / TICK


def own_cpu() -> float:
    """CPU seconds of this process and of its children that have ended (the demo and, through it,
    the API's and the writer's processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def wait_quiet(limit: float, timeout: float) -> float:
    """Wait until the machine's other programs used less than ``limit`` cores over 2 s (at most
    ``timeout`` s); returns the last such reading."""
    deadline = time.monotonic() + timeout
    while True:
        busy, own, start = machine_busy(), own_cpu(), time.monotonic()
        time.sleep(2.0)
        cores = (machine_busy() - busy - (own_cpu() - own)) / (time.monotonic() - start)
        if cores < limit or time.monotonic() >= deadline:
            return cores


ROLES = {"dte_stream.api.process": "api", "dte_stream.view.process": "writer"}


class Children:
    """CPU seconds of the demo's child processes by role (``api``, ``writer``), sampled from /proc
    every 0.5 s while the demo runs (the last sample of each process is kept)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cpu: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for kid in self._kids():
                try:
                    with open(f"/proc/{kid}/cmdline") as f:
                        cmd = f.read()
                    with open(f"/proc/{kid}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                role = ROLES.get(next((m for m in ROLES if m in cmd), ""))
                if role is not None:
                    self.cpu[kid] = (role, (int(fields[11]) + int(fields[12])) / TICK)
            self._stop.wait(0.5)

    def _kids(self) -> list[int]:
        kids: list[int] = []
        try:
            tasks = os.listdir(f"/proc/{self.pid}/task")
        except OSError:
            return kids
        for task in tasks:
            try:
                with open(f"/proc/{self.pid}/task/{task}/children") as f:
                    kids += [int(k) for k in f.read().split()]
            except OSError:
                continue
        return kids

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join(5)
        out: dict[str, float] = {}
        for role, cpu in self.cpu.values():
            out[role] = out.get(role, 0.0) + cpu
        return out


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
    rate, cpu_us = steady([tuple(x) for x in json.loads(samples.group(1))])
    return Run(float(match.group(2).replace(",", "")), 1e6 * seconds / max(readings, 1.0), rate, cpu_us)


Latencies = tuple[list[float], list[float]]  # seconds: twin lists, twin details (answers 200)


def run_demo(code: str, twins: int, seconds: float, rps: float | None) -> tuple[Run, Latencies]:
    """One demo run; ``rps`` None: no API, else ``--http`` and a client at ``rps`` (0: none)."""
    port = free_port()
    lists: list[float] = []
    details: list[float] = []
    client: list[float] = [0.0, 0.0]  # CPU seconds, requests
    with tempfile.TemporaryDirectory() as tmp:
        args = [PY, "-c", code, *demo_args(twins, seconds, Path(tmp))]
        token = ""
        if rps is not None:
            token = subprocess.run(
                [PY, "-c", WITH_VIEW, "token", "create", "--name", "b", "--scope", "read", "--data-dir", tmp],
                capture_output=True, text=True, check=True,
            ).stdout.strip()  # fmt: skip
            args += ["--http", f"127.0.0.1:{port}"]
        busy, own, start = machine_busy(), own_cpu(), time.monotonic()
        proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        kids = Children(proc.pid)
        stop = threading.Event()

        def load() -> None:
            """Keep-alive GETs at ``rps`` on one connection (http.client: little CPU per request)."""
            rng = random.Random(1)
            headers = {"Authorization": f"Bearer {token}"}
            conn = None
            while conn is None and not stop.is_set():  # until the API answers
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    conn.request("GET", "/healthz")
                    conn.getresponse().read()
                except (OSError, http.client.HTTPException):
                    conn = None
                    time.sleep(0.1)
            if conn is None:
                return
            cpu0, k, next_at = time.thread_time(), 0, time.monotonic()
            while not stop.is_set():
                k += 1
                if k % 2:
                    path, target = f"/api/v1/twins?limit=100&offset={rng.randrange(twins)}", lists
                else:
                    path, target = f"/api/v1/twins/pump-{rng.randrange(twins):04d}", details
                begin = time.perf_counter()
                try:
                    conn.request("GET", path, headers=headers)
                    answer = conn.getresponse()
                    answer.read()
                except (OSError, http.client.HTTPException):
                    break  # the demo ended
                if answer.status == 200:
                    target.append(time.perf_counter() - begin)
                client[1] += 1
                next_at += 1.0 / rps  # type: ignore[operator]
                time.sleep(max(0.0, next_at - time.monotonic()))
            client[0] = time.thread_time() - cpu0
            conn.close()

        thread = threading.Thread(target=load, daemon=True)
        if rps:
            thread.start()
        _, err = proc.communicate()
        stop.set()
        if rps:
            thread.join(15)
        wall = time.monotonic() - start
        foreign = (machine_busy() - busy - (own_cpu() - own)) / wall
        roles = kids.stop()
        if proc.returncode != 0:
            raise RuntimeError(f"the demo failed:\n{err[-2000:]}")
        run = parse_run(err)._replace(
            foreign=foreign,
            api_cores=roles.get("api", 0.0) / wall,
            writer_cores=roles.get("writer", 0.0) / wall,
            client_cores=client[0] / wall,
            requests=int(client[1]),
            client_ms=1e3 * client[0] / client[1] if client[1] else float("nan"),
        )
        return run, (lists, details)


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


def adjusted(runs: dict[str, list[Run]], field: str) -> dict[str, tuple[float, float, float]]:
    """Each configuration's ``field`` against the first's, adjusted for the machine's other load:
    least squares of ``log(field) = configuration + slope * foreign`` over every run; per
    configuration the ratio - 1 and its 95 % interval (normal approximation), in per cent."""
    import numpy as np

    names = list(runs)
    rows = [(i, r) for i, name in enumerate(names) for r in runs[name] if getattr(r, field) > 0]
    x = np.array([[float(i == k) for k in range(len(names))] + [r.foreign] for i, r in rows])
    y = np.log([getattr(r, field) for _, r in rows])
    if len(y) <= x.shape[1] or np.linalg.matrix_rank(x) < x.shape[1]:
        return {}
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ coef
    cov = (resid @ resid / (len(y) - x.shape[1])) * np.linalg.inv(x.T @ x)
    out = {}
    for k, name in enumerate(names[1:], 1):
        d, se = coef[k] - coef[0], float(np.sqrt(cov[k, k] + cov[0, 0] - 2 * cov[k, 0]))
        out[name] = tuple(100 * (float(np.exp(v)) - 1) for v in (d, d - 1.96 * se, d + 1.96 * se))
    return out  # type: ignore[return-value]


CONFIGS = ("no-view", "view", "view+api", "view+api0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--twins", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rps", type=float, default=20.0, help="API requests per second during view+api")
    parser.add_argument("--configs", default="no-view,view,view+api",
                        help=f"comma-separated, run in this order, of {', '.join(CONFIGS)}")  # fmt: skip
    parser.add_argument("--max-foreign", type=float, default=None, metavar="CORES",
                        help="start runs only when other programs use less than CORES, and redo runs during "
                        "which they used more")  # fmt: skip
    parser.add_argument("--quiet-wait", type=float, default=300.0, help="seconds to wait for a quiet machine")
    parser.add_argument("--retries", type=int, default=3, help="redos of a run that was not quiet enough")
    args = parser.parse_args()
    configs = args.configs.split(",")
    if unknown := [c for c in configs if c not in CONFIGS]:
        parser.error(f"--configs: unknown {', '.join(unknown)} (choose from {', '.join(CONFIGS)})")
    cpu, wall = view_write_cost()
    print(f"view write: {1e6 * cpu:.0f} us CPU ({1e6 * wall:.0f} us wall) per changed twin", flush=True)
    how = {"no-view": (NO_VIEW, None), "view": (WITH_VIEW, None), "view+api": (WITH_VIEW, args.rps),
           "view+api0": (WITH_VIEW, 0.0)}  # fmt: skip
    runs: dict[str, list[Run]] = {c: [] for c in configs}
    lists: list[float] = []
    details: list[float] = []
    for r in range(args.rounds):
        for name in configs:
            best: tuple[Run, Latencies] | None = None
            attempts = 1 + (args.retries if args.max_foreign is not None else 0)
            for k in range(attempts):
                if args.max_foreign is not None:
                    wait_quiet(args.max_foreign, args.quiet_wait)
                code, rps = how[name]
                attempt = run_demo(code, args.twins, args.seconds, rps)
                if best is None or attempt[0].foreign < best[0].foreign:
                    best = attempt
                if args.max_foreign is None or attempt[0].foreign <= args.max_foreign:
                    break
                then = "again" if k + 1 < attempts else "keeping the quietest attempt"
                print(f"  ({name}: other programs used {attempt[0].foreign:.2f} cores: {then})", flush=True)
            assert best is not None
            run, (lat_list, lat_detail) = best
            runs[name].append(run)
            lists += lat_list
            details += lat_detail
            client = f", client {run.client_ms:.2f} ms CPU/request" if run.requests else ""
            print(f"round {r + 1} {name:<9} {run.rate:>9,.0f}/s {run.cpu_us:.2f} us CPU/reading, steady "
                  f"{run.steady_rate:>9,.0f}/s {run.steady_cpu_us:.2f} us; others {run.foreign:.2f} cores; "
                  f"API {run.api_cores:.3f}, writer {run.writer_cores:.3f}, "
                  f"client {run.client_cores:.3f} cores{client}", flush=True)  # fmt: skip
    print(f"\n{args.twins:,} twins, demo at full speed for {args.seconds:g} s, {args.rounds} rounds (median)")
    base = {f: statistics.median(getattr(r, f) for r in runs[configs[0]]) for f in Run._fields}
    for name, values in runs.items():
        med = {f: statistics.median(getattr(r, f) for r in values) for f in Run._fields}
        vs = {f: f"{100 * (med[f] / base[f] - 1):+.1f} %" for f in Run._fields[:4]}
        print(f"  {name:<9} whole run {med['rate']:>10,.0f} readings/s ({vs['rate']}), "
              f"{med['cpu_us']:.2f} us CPU/reading ({vs['cpu_us']}); "
              f"steady {med['steady_rate']:>10,.0f} readings/s ({vs['steady_rate']}), "
              f"{med['steady_cpu_us']:.2f} us CPU/reading ({vs['steady_cpu_us']}); "
              f"others {med['foreign']:.2f} cores; API {med['api_cores']:.3f}, "
              f"writer {med['writer_cores']:.3f}, client {med['client_cores']:.3f} cores")  # fmt: skip
    print(f"  (vs the first configuration, {configs[0]})")
    for field in ("steady_rate", "rate"):
        adj = adjusted(runs, field)
        what = "steady" if field == "steady_rate" else "whole-run"
        parts = [f"{n} {d:+.1f} % (95 % interval {lo:+.1f} .. {hi:+.1f} %)" for n, (d, lo, hi) in adj.items()]
        if parts:
            print(f"  {what} readings/s adjusted for the other programs' CPU (log-linear fit over all runs): "
                  + "; ".join(parts))  # fmt: skip
    print(f"  API at {args.rps:g} requests/s: twin list (100 rows) p50 {pct(lists, 0.5):.1f} ms, "
          f"p99 {pct(lists, 0.99):.1f} ms ({len(lists)} requests); "
          f"twin detail p50 {pct(details, 0.5):.1f} ms, "
          f"p99 {pct(details, 0.99):.1f} ms ({len(details)} requests)")  # fmt: skip


if __name__ == "__main__":
    main()
