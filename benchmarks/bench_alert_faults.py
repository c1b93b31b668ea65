"""Alert rules against the simulator's injected faults: how many raise an alert, how fast, how many false.

Runs the demo spec (``dte_stream.demo.demo_document``: simulated pumps with injected faults ->
twin bank with the demo's alert rules -> local store) with a fixed seed and start, ``--ticks``
readings per twin and channel (1 s apart), as fast as possible (``rate: 0``: the engine judges
stale sensors by event time), into a temporary data dir. The simulator writes every injected
fault to ``ground_truth.jsonl`` (twin_id, channel, kind, start_ns, end_ns, magnitude); the
engine writes every alert event to the store table ``alerts``.

Matching: a fault counts as detected by a rule when a ``firing`` event of that rule (renotifies
excluded), of the same twin, and of the same channel when the event has one (``silent_twin``
has none), has its ``starts`` (when the condition began) within ``[fault start, fault end +
grace]``. Delay = the firing event's time (when receivers are told) - fault start. A firing
event that matches no fault window is a false alert.

Baseline, scored the same way on the same run: a fixed threshold on the raw readings of the
``readings`` table, ``|value - mean| > k * std`` where mean and std are over the previous
``--baseline-window`` readings of the (twin, channel); consecutive exceedances less than
``--baseline-gap`` seconds apart are one alert (it starts at the first exceedance).

``--variant NAME`` also runs the demo with a changed rule setting (see ``VARIANTS``) and reports it.

    python benchmarks/bench_alert_faults.py                         # 200 twins, 2 h of event time
    python benchmarks/bench_alert_faults.py --twins 50 --ticks 1800 # quick (~10 s)
    python benchmarks/bench_alert_faults.py --variant anomaly_0.9

Prints Markdown tables with the date, machine and command line; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from dte_stream.cli.run import execute
from dte_stream.demo import demo_document
from dte_stream.metrics import METRICS
from dte_stream.spec import parse_spec
from dte_stream.times import NS_PER_S

START = "2026-01-05T00:00:00Z"
FAULT_KINDS = ("spike", "step", "stuck", "drift")
BASELINE = "baseline"
ANY = "any engine rule"


def _rules(doc: dict[str, Any]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = doc["twin_types"][0]["alerts"]["rules"]
    return rules


def _set_rule(name: str, **changes: Any) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        for rule in _rules(doc):
            if rule["name"] == name:
                rule.update(changes)

    return apply


#: Alternative rule settings that ``--variant`` can measure against the demo's.
VARIANTS: dict[str, Callable[[dict[str, Any]], None]] = {
    "anomaly_0.9": _set_rule("anomaly", level=0.9),
    "anomaly_0.99": _set_rule("anomaly", level=0.99),
    "anomaly_hold_3s": _set_rule("anomaly", holds_for="3s"),
    "nis_readings_3": _set_rule("model_mismatch", readings=3),
    "nis_readings_2": _set_rule("model_mismatch", readings=2),
}


def build_doc(args: argparse.Namespace, data_dir: Path, variant: str | None) -> dict[str, Any]:
    doc = demo_document(twins=args.twins, rate=0, data_dir=data_dir, seed=args.seed)
    source = doc["sources"][0]
    source["ticks"] = args.ticks
    source["start"] = START
    if variant is not None:
        VARIANTS[variant](doc)
    return doc


def run_demo(doc: dict[str, Any], label: str) -> float:
    """Run the spec to its end with a progress line on stderr every 10 s; the wall time."""
    spec = parse_spec(doc, source="bench_alert_faults")
    total = doc["sources"][0]["twins"] * doc["sources"][0]["ticks"] * 3
    done = threading.Event()

    def report() -> None:
        while not done.wait(10.0):
            n = METRICS.get("readings_processed")
            print(f"  {label}: {n:,} / {total:,} readings ({n / total:.0%})", file=sys.stderr, flush=True)

    started = time.monotonic()
    thread = threading.Thread(target=report, daemon=True)
    thread.start()
    try:
        execute(spec, quiet=True)
    finally:
        done.set()
        thread.join()
    return time.monotonic() - started


def load_faults(data_dir: Path) -> pl.DataFrame:
    return (
        pl.read_ndjson(data_dir / "ground_truth.jsonl")
        .with_row_index("fault")
        .select("fault", "twin_id", "channel", "kind", "start_ns", "end_ns", "magnitude")
    )


def load_alerts(data_dir: Path) -> pl.DataFrame:
    """Firing events (no renotifies) as (rule, twin_id, channel, starts_ns, time_ns)."""
    return (
        pl.scan_parquet(data_dir / "alerts" / "**" / "*.parquet")
        .filter((pl.col("state") == "firing") & ~pl.col("renotify").fill_null(False))
        .select(
            "rule",
            "twin_id",
            "channel",
            pl.col("starts").dt.epoch("ns").alias("starts_ns"),
            pl.col("time").dt.epoch("ns").alias("time_ns"),
        )
        .collect()
    )


def baseline_alerts(data_dir: Path, window: int, k: float, gap_s: float) -> pl.DataFrame:
    """The fixed-threshold detector on raw readings, as firing events like :func:`load_alerts`."""
    keys = ["twin_id", "channel"]
    value = pl.col("value")
    hits = (
        pl.scan_parquet(data_dir / "readings" / "**" / "*.parquet")
        .select(pl.col("time").dt.epoch("ns").alias("time_ns"), "twin_id", "channel", "value")
        .sort([*keys, "time_ns"])
        .with_columns(
            value.shift(1).rolling_mean(window).over(keys).alias("mean"),
            value.shift(1).rolling_std(window).over(keys).alias("std"),
        )
        .filter((value - pl.col("mean")).abs() > k * pl.col("std"))
        .with_columns(pl.col("time_ns").shift(1).over(keys).alias("previous"))
        .filter(
            pl.col("previous").is_null() | (pl.col("time_ns") - pl.col("previous") > int(gap_s * NS_PER_S))
        )
        .collect()
    )
    return hits.select(
        pl.lit(BASELINE).alias("rule"),
        "twin_id",
        "channel",
        pl.col("time_ns").alias("starts_ns"),
        "time_ns",
    )


def match(faults: pl.DataFrame, alerts: pl.DataFrame, grace_s: float) -> pl.DataFrame:
    """Every (firing event, fault) pair that matches: same twin, same channel if any, start in window."""
    grace = int(grace_s * NS_PER_S)
    return (
        alerts.with_row_index("alert")
        .join(faults, on="twin_id", suffix="_fault")
        .filter(
            (pl.col("channel").is_null() | (pl.col("channel") == pl.col("channel_fault")))
            & (pl.col("starts_ns") >= pl.col("start_ns"))
            & (pl.col("starts_ns") <= pl.col("end_ns") + grace)
        )
    )


def _pct(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "-"


def _q(values: list[float], q: float) -> str:
    return f"{float(np.quantile(values, q)):.0f}" if values else "-"


def score(
    faults: pl.DataFrame, alerts: pl.DataFrame, rule_names: list[str], grace_s: float, twin_hours: float
) -> tuple[list[list[str]], list[list[str]]]:
    """Detection rows (rule, kind, faults, detected, rate, median and p90 delay) and false-alert rows."""
    pairs = match(faults, alerts, grace_s)
    engine = pairs.filter(pl.col("rule") != BASELINE).with_columns(pl.lit(ANY).alias("rule"))
    per_fault = (
        pl.concat([pairs, engine])
        .group_by("rule", "fault")
        .agg(((pl.col("time_ns") - pl.col("start_ns")).min() / NS_PER_S).alias("delay_s"))
    )
    rules = [*rule_names, ANY] + ([BASELINE] if BASELINE in alerts["rule"] else [])
    kind_of = dict(zip(faults["fault"].to_list(), faults["kind"].to_list(), strict=True))
    count = {kind: int((faults["kind"] == kind).sum()) for kind in FAULT_KINDS}
    detection: list[list[str]] = []
    for rule in rules:
        rows = per_fault.filter(pl.col("rule") == rule)
        delays: dict[str, list[float]] = {kind: [] for kind in FAULT_KINDS}
        for fault, delay in zip(rows["fault"].to_list(), rows["delay_s"].to_list(), strict=True):
            delays[kind_of[fault]].append(delay)
        delays_all = [d for kind in FAULT_KINDS for d in delays[kind]]
        for kind, values in [*delays.items(), ("all", delays_all)]:
            n = faults.height if kind == "all" else count[kind]
            detection.append(
                [rule, kind, str(n), str(len(values)), _pct(len(values), n), _q(values, 0.5), _q(values, 0.9)]
            )
    matched = set(pairs["alert"].unique().to_list())
    flagged = alerts.with_row_index("alert").with_columns(pl.col("alert").is_in(list(matched)).alias("true"))
    false_rows: list[list[str]] = []
    engine_alerts = flagged.filter(pl.col("rule") != BASELINE)
    for rule in rules:
        part = engine_alerts if rule == ANY else flagged.filter(pl.col("rule") == rule)
        fired, false = part.height, int((~part["true"]).sum())
        false_rows.append([rule, str(fired), str(false), _pct(false, fired), f"{false / twin_hours:.3f}"])
    return detection, false_rows


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    return (
        f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {platform.machine()}, "
        f"Linux {platform.release()}, Python {platform.python_version()}, polars {pl.__version__}"
    )


def evaluate(args: argparse.Namespace, root: Path, variant: str | None) -> str:
    label = variant or "demo"
    data_dir = root / label
    doc = build_doc(args, data_dir, variant)
    print(f"bench_alert_faults: running {label} ({args.twins} twins, {args.ticks} ticks)", file=sys.stderr)
    wall = run_demo(doc, label)
    faults = load_faults(data_dir)
    alerts = load_alerts(data_dir)
    if variant is None:
        print("bench_alert_faults: baseline detector on the readings table", file=sys.stderr)
        base = baseline_alerts(data_dir, args.baseline_window, args.baseline_k, args.baseline_gap)
        alerts = pl.concat([alerts, base.cast(alerts.schema)])
    twin_hours = args.twins * args.ticks / 3600.0
    rule_names = [rule["name"] for rule in _rules(doc)]
    detection, false_rows = score(faults, alerts, rule_names, args.grace, twin_hours)
    changed = "the demo's rules" if variant is None else f"variant `{variant}`"
    out = [
        f"## {changed}: {faults.height} faults in {twin_hours:,.0f} twin-hours (run {wall:.0f} s)",
        "",
        "Detection (delay = firing event time - fault start, seconds):",
        "",
        table(["rule", "fault kind", "faults", "detected", "rate", "median delay", "p90 delay"], detection),
        "",
        "False alerts (firing events matching no fault window):",
        "",
        table(["rule", "firing events", "false", "false share", "false per twin-hour"], false_rows),
        "",
    ]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--twins", type=int, default=200)
    ap.add_argument("--ticks", type=int, default=7200, help="readings per twin and channel, 1 s apart")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--grace", type=float, default=60.0, help="seconds after a fault's end that still match")
    ap.add_argument("--baseline-window", type=int, default=300, help="readings in the running mean/std")
    ap.add_argument("--baseline-k", type=float, default=4.0, help="threshold in running std")
    ap.add_argument("--baseline-gap", type=float, default=60.0, help="seconds that separate two alerts")
    ap.add_argument("--variant", choices=sorted(VARIANTS), action="append", default=[])
    ap.add_argument("--only-variants", action="store_true", help="skip the demo's own rules")
    ap.add_argument("--data-dir", type=Path, help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args()

    started = time.perf_counter()
    sections = []
    with tempfile.TemporaryDirectory(prefix="bench-alert-faults-") as tmp:
        root = args.data_dir or Path(tmp)
        runs: list[str | None] = [] if args.only_variants else [None]
        for variant in [*runs, *args.variant]:
            sections.append(evaluate(args, root, variant))

    cmd = shlex.join(["python", "benchmarks/bench_alert_faults.py", *sys.argv[1:]])
    print(f"# alert rules against injected faults; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print()
    print(f"- machine: {machine()}, load average {os.getloadavg()[0]:.2f} at the end")
    print(f"- command: `{cmd}` ({time.perf_counter() - started:.0f} s)")
    print(
        f"- demo spec, seed {args.seed}, {args.twins} twins x 3 channels, {args.ticks} ticks of 1 s from "
        f"{START}, rate 0 (event clock), 2 faults per twin-hour"
    )
    print(
        f"- match: same twin (and channel, when the alert has one), alert starts in "
        f"[fault start, fault end + {args.grace:g} s]"
    )
    print(
        f"- baseline: |value - mean| > {args.baseline_k:g} std over the previous {args.baseline_window} "
        f"readings per (twin, channel); exceedances < {args.baseline_gap:g} s apart are one alert"
    )
    print()
    print("\n".join(sections))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
