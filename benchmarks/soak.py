"""Soak: does a long run level off? Memory, local store size and dead-letter file size over time.

1. Measures the maximum rate: ``dte-stream run`` of the soak spec with the simulator as fast as
   it goes (``rate: 0``) for ``--probe`` seconds, readings/s from its /metrics.
2. Runs the same spec at half that rate for ``--minutes`` minutes (default 10), 10,000 twins,
   with the local store's housekeeping on (retention 3 days of event time, compaction), and
   samples every ``--every`` seconds: resident memory (/metrics ``process_resident_memory_bytes``),
   readings processed, bytes under the data directory, files in it, dead-letter file size.

Each twin has one channel and reports once a day of event time, so the 10 minutes of wall time
span months of event time: retention (whole day partitions) has to delete days for the store to
level off. (The demo's alert rules are left out: with a day between readings every twin would be
silent and stale all the time, which measures alert churn, not the steady state.)
Writes ``benchmarks/results/soak.csv`` and ``docs/img/soak.png``.

    python benchmarks/soak.py --minutes 10
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name, _, value = line.rpartition(" ")
        out[name] = out.get(name, 0.0) + float(value)
    return out


def value(m: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in m.items() if k == prefix or k.startswith(prefix + "{"))


def write_spec(folder: Path, twins: int, rate: float, ticks_back: int) -> Path:
    start = datetime.now(UTC) - timedelta(days=ticks_back)
    spec = {
        "version": 1,
        "name": "soak",
        "sources": [
            {
                "kind": "simulator",
                "name": "pumps",
                "twin_type": "pump",
                "twins": twins,
                "interval": "1d",
                "rate": rate,
                "seed": 1,
                "start": start.isoformat(),
                "faults_per_twin_hour": 0.0,
                "channels": {"temperature": {}},
            }
        ],
        "twin_types": [
            {
                "name": "pump",
                "match": "pump-.*",
                "channels": {
                    "temperature": {
                        "unit": "degC",
                        "filter": {"process_noise": 0.001, "measurement_noise": 0.25},
                    }
                },
            }
        ],
        "sinks": [
            {
                "kind": "local_store",
                "data_dir": str(folder / "data"),
                "retention": "3d",
                "compact_min_files": 8,
                "housekeeping_interval": 10,
            }
        ],
        "dead_letters": {"path": str(folder / "data" / "dead_letters.jsonl")},
        "engine": {"shards": 4, "clock": "event"},
    }
    path = folder / "soak.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def tree_size(folder: Path) -> tuple[int, int]:
    size = files = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            try:
                size += (Path(root) / name).stat().st_size
                files += 1
            except FileNotFoundError:
                pass
    return size, files


def start(spec: Path, port: int, folder: Path) -> subprocess.Popen[bytes]:
    log = (folder / "daemon.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "dte_stream", "run", str(spec), "--quiet", "--http", f"127.0.0.1:{port}"],
        stdout=log,
        stderr=log,
        cwd=folder,
    )


def wait_http(port: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            metrics(port)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("the daemon did not serve /metrics")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def probe(folder: Path, twins: int, seconds: float) -> float:
    """Readings/s of the soak spec as fast as it goes (after a warm-up)."""
    spec = write_spec(folder / "probe", twins, 0, ticks_back=10_000)
    port = free_port()
    process = start(spec, port, spec.parent)
    try:
        wait_http(port)
        time.sleep(10)  # warm-up
        m0, t0 = value(metrics(port), "dte_readings_processed_total"), time.monotonic()
        time.sleep(seconds)
        m1, t1 = value(metrics(port), "dte_readings_processed_total"), time.monotonic()
    finally:
        stop(process)
    return (m1 - m0) / (t1 - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--twins", type=int, default=10_000)
    parser.add_argument("--probe", type=float, default=30.0, help="seconds of the max-rate probe")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "soak.csv")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "img" / "soak.png")
    parser.add_argument("--work", type=Path, default=None, help="folder for the run's data (default: /tmp)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dte-soak-", dir=args.work) as tmp:
        folder = Path(tmp)
        (folder / "probe").mkdir()
        max_rate = probe(folder, args.twins, args.probe)
        rate = max_rate / 2
        print(f"max rate {max_rate:,.0f} readings/s; soak at {rate:,.0f} readings/s", flush=True)
        # enough event time that the run never reaches the present (a reading a day)
        ticks = int(rate * args.minutes * 60 / args.twins) + 10
        spec = write_spec(folder, args.twins, rate, ticks_back=ticks)
        port = free_port()
        process = start(spec, port, folder)
        rows = []
        try:
            wait_http(port)
            began = time.monotonic()
            while time.monotonic() - began < args.minutes * 60:
                m = metrics(port)
                size, files = tree_size(folder / "data")
                dead = folder / "data" / "dead_letters.jsonl"
                row = {
                    "seconds": round(time.monotonic() - began, 1),
                    "rss_mb": round(value(m, "process_resident_memory_bytes") / 2**20, 1),
                    "readings": int(value(m, "dte_readings_processed_total")),
                    "store_mb": round(size / 2**20, 2),
                    "store_files": files,
                    "dead_letter_kb": round(dead.stat().st_size / 1024, 1) if dead.exists() else 0.0,
                    "twins": int(value(m, "dte_twins_active")),
                }
                rows.append(row)
                print(row, flush=True)
                time.sleep(args.every)
        finally:
            stop(process)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}")
    plot(rows, rate, max_rate, args.plot)


def plot(rows: list[dict[str, float]], rate: float, max_rate: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [r["seconds"] / 60 for r in rows]
    fig, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True)
    series = [
        ("rss_mb", "resident memory (MB)"),
        ("store_mb", "local store (MB)"),
        ("store_files", "files in the store"),
        ("dead_letter_kb", "dead-letter file (kB)"),
    ]
    for ax, (key, label) in zip(axes, series, strict=True):
        ax.plot(minutes, [r[key] for r in rows])
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("minutes")
    fig.suptitle(
        f"soak: 10,000 twins at {rate:,.0f} readings/s (half of the {max_rate:,.0f}/s measured), "
        "retention 3 days of event time"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
