"""Anomaly detection on the labelled NAB series, scored as NAB scores it (``nab_scoring.py``).

Every detector sees each value once, in order, and scores it before the next; all parameters
are the same for every series. Detectors:

- NAB's windowed Gaussian baseline (:func:`nab.windowed_gaussian_detector`), published at 39.6
  standard on NAB's full corpus of 58 series;
- the default: each series replayed as one twin through a twin bank built from the twin type
  of ``dataflows/anomaly.yaml`` (:func:`bank_detector`, the same bank the dataflow runs);
- the previous defaults (the contextual scorer without its likelihood stage; the innovation
  scorer), in the same run;
- with ``--dataflow``, the same spec through ``dte-stream replay``'s dataflow (slow);
- with ``--candidates``, variants of the default's settings (what each part adds).

Only the 13 series in ``shared/data/nab/`` are here: **every score printed is a partial figure
on 13 of NAB's 58 series**, not a NAB corpus score.

    python benchmarks/bench_nab.py [--data DIR] [--plots DIR] [--dataflow] [--candidates]

Prints Markdown tables (every detector's three profile scores and optimised thresholds; the
default per series) with the date and machine.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from nab import (
    DEFAULT_ROOT,
    BatchDetector,
    Detector,
    Evaluation,
    Series,
    delays_hours,
    evaluate,
    load_series,
    windowed_gaussian_detector,
)
from nab_scoring import ProfileResult

from dte_stream.readings import ReadingBatch
from dte_stream.spec import load_spec
from dte_stream.spec.twins import TwinTypeSpec
from dte_stream.twins.bank import TwinBank
from dte_stream.twins.contextual import ContextualScorer
from dte_stream.twins.routing import TypedBatch

ANOMALY_SPEC = Path(__file__).resolve().parent.parent / "dataflows" / "anomaly.yaml"
#: Readings per bank update in the bank replay (the dataflow's replay uses batches of this order).
CHUNK = 2_000


def spec_twin_type(spec_path: Path = ANOMALY_SPEC, **anomaly: Any) -> TwinTypeSpec:
    """The first twin type of ``spec_path``, with ``anomaly`` settings overridden."""
    twin_type = load_spec(spec_path).twin_types[0]
    if anomaly:
        merged = twin_type.anomaly.model_dump() | anomaly
        twin_type = twin_type.model_copy(update={"anomaly": type(twin_type.anomaly).model_validate(merged)})
    return twin_type


def bank_detector(twin_type: TwinTypeSpec, scorer: dict[str, Any] | None = None) -> BatchDetector:
    """Every series as one twin of a single :class:`TwinBank` of ``twin_type`` (event-time clock).

    ``scorer``: keyword arguments of :class:`ContextualScorer` beyond the spec's (for variants of
    settings the spec does not expose); the bank's scorer is replaced by one built with them.

    The readings go in as the dataflow would send them: micro-batches of about ``CHUNK``
    readings mixing every twin, in time order per twin (the i-th reading of every series
    together, so the bank's rounds are vectorised over the 13 twins).
    """
    channel = twin_type.channel_names()[0]

    def detect(series: Sequence[Series]) -> list[np.ndarray]:
        bank = TwinBank(twin_type)
        if scorer:
            a = twin_type.anomaly
            bank.scorer = ContextualScorer(
                bank.width, bank.capacity, level=a.level, quiet=a.quiet, context_bins=a.context_bins,
                context_halflife=a.context_halflife, context_after=a.context_after,
                likelihood=a.likelihood, **scorer,
            )  # fmt: skip
        ids = np.concatenate([np.full(s.time_ns.shape[0], f"series{k:02d}") for k, s in enumerate(series)])
        time_ns = np.concatenate([s.time_ns for s in series])
        value = np.concatenate([s.value for s in series])
        position = np.concatenate([np.arange(s.time_ns.shape[0]) for s in series])
        order = np.lexsort((ids, position))
        scores = np.full(time_ns.shape[0], np.nan)
        for lo in range(0, order.shape[0], CHUNK):
            idx = order[lo : lo + CHUNK]
            readings = ReadingBatch.from_columns(ids[idx], [channel] * idx.size, time_ns[idx], value[idx])
            batch = TypedBatch(twin_type.name, readings, np.zeros(idx.size, dtype=np.intp))
            update = bank.update(batch, int(time_ns[idx].max()))
            if len(update.estimates) != idx.size:
                raise RuntimeError(f"the bank returned {len(update.estimates)} rows for {idx.size} readings")
            scores[idx] = update.estimates.score_column()
        bounds = np.cumsum([0] + [s.time_ns.shape[0] for s in series])
        return [scores[bounds[k] : bounds[k + 1]] for k in range(len(series))]

    return detect


def dataflow_detector(spec_path: Path = ANOMALY_SPEC) -> Detector:
    """Each series replayed as one twin through the real dataflow of ``spec_path`` (dte-stream replay)."""
    from dte_stream.replay import replay_frame

    spec = load_spec(spec_path)
    twin_type = spec.twin_types[0]
    channel = twin_type.channel_names()[0]

    def detect(time_ns: np.ndarray, value: np.ndarray) -> np.ndarray:
        n = time_ns.shape[0]
        readings = ReadingBatch.from_columns(["series"] * n, [channel] * n, time_ns, value)
        frame = replay_frame(spec, readings, twin_type.name).frame
        if frame.height != n:
            raise RuntimeError(f"the replay returned {frame.height} rows for {n} readings")
        return np.nan_to_num(frame["anomaly_score"].to_numpy(), nan=0.0)

    return detect


#: Variants of the default's anomaly settings (what each part adds; not tuned per series):
#: a name, spec overrides, scorer keyword arguments the spec does not expose.
CANDIDATES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("default without the time-of-day context", {"context_after": 1e12}, {}),
    ("default without the quiet period", {"quiet": 0}, {}),
    ("default with a 48-slot profile", {"context_bins": 48}, {}),
    ("likelihood: short half-life 5 readings (default 10)", {}, {"likelihood_short": 5.0}),
    ("likelihood: short half-life 20 readings (default 10)", {}, {"likelihood_short": 20.0}),
    ("likelihood: long half-life 2,000 readings (default 8,640)", {}, {"likelihood_long": 2000.0}),
    ("likelihood: surprises winsorised at 2 sd (default 3)", {}, {"likelihood_winsor": 2.0}),
    ("likelihood: surprises winsorised at 4 sd (default 3)", {}, {"likelihood_winsor": 4.0}),
    ("likelihood: surprises not winsorised", {}, {"likelihood_winsor": 1e9}),
]


def _fmt(x: float, digits: int = 1) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


def overall_row(name: str, results: dict[str, ProfileResult], seconds: float) -> str:
    cells = " | ".join(f"{r.score:.1f} (>= {r.threshold:.4g})" for r in results.values())
    return f"| {name} | {cells} | {seconds:.1f} |"


def series_table(series: list[Series], result: ProfileResult) -> str:
    lines = [
        "| series | readings | windows detected | delay (h) | false positives | raw score |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for s, r in zip(series, result.per_series, strict=True):
        delays = ", ".join(_fmt(d) for d in delays_hours(s, r.first_rows))
        detected = int(np.count_nonzero(r.first_rows >= 0))
        lines.append(
            f"| {s.name.split('/')[-1]} | {s.time_ns.shape[0]} | {detected}/{r.first_rows.shape[0]} "
            f"| {delays} | {r.false_positives} | {r.raw:.2f} |"
        )
    return "\n".join(lines)


def plot(path: Path, series: Series, scores: np.ndarray, threshold: float, title: str) -> None:
    """Values with the windows shaded and the flags marked; the score below with the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nab_scoring import probation_rows

    t = series.time_ns.astype("datetime64[ns]")
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(12, 4.5), sharex=True, height_ratios=[2, 1])
    ax.plot(t, series.value, lw=0.5, color="0.35")
    for start, end in series.windows:
        for axis in (ax, bx):
            axis.axvspan(
                np.datetime64(int(start), "ns"), np.datetime64(int(end), "ns"), color="gold", alpha=0.35
            )
    probation = probation_rows(series.time_ns.shape[0])
    for axis in (ax, bx):
        axis.axvspan(t[0], t[probation], color="0.85", alpha=0.6)
    flags = scores >= threshold
    flags[:probation] = False
    ax.plot(t[flags], series.value[flags], "o", ms=5, mfc="none", color="tab:red", label="flagged")
    ax.set_title(f"{series.name}: {title}", fontsize=9, loc="left")
    ax.legend(fontsize=7, loc="upper left")
    bx.plot(t, scores, lw=0.6, color="tab:blue")
    bx.axhline(threshold, color="tab:red", lw=0.6, ls="--")
    bx.set_ylim(0, 1.02)
    bx.set_ylabel("score", fontsize=8)
    for axis in (ax, bx):
        axis.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="folder with anomaly_windows.json")
    parser.add_argument("--plots", type=Path, help="write one PNG per series of the default into DIR")
    parser.add_argument("--dataflow", action="store_true", help="also replay through the dataflow (slow)")
    parser.add_argument("--candidates", action="store_true", help="also run variants of the default")
    args = parser.parse_args(argv)
    series = load_series(args.data)
    readings = sum(s.time_ns.shape[0] for s in series)
    windows = sum(s.windows.shape[0] for s in series)
    stamp = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs"
    print(f"NAB, {len(series)} of NAB's 58 series ({readings} readings, {windows} windows): PARTIAL "
          f"figures, not NAB corpus scores; {stamp}, {platform.platform()}\n")  # fmt: skip
    default_type = spec_twin_type()
    chosen: list[tuple[str, Detector | BatchDetector, bool]] = [
        ("NAB's windowed Gaussian", windowed_gaussian_detector(), False),
        ("default: dataflows/anomaly.yaml (twin bank)", bank_detector(default_type), True),
        (
            "before: the same without the likelihood stage (anomaly {likelihood: false})",
            bank_detector(spec_twin_type(likelihood=False)),
            True,
        ),
        (
            "before that: anomaly {method: innovation, level: 0.7}",
            bank_detector(spec_twin_type(method="innovation", level=0.7)),
            True,
        ),
    ]
    if args.dataflow:
        chosen.append(("dataflows/anomaly.yaml through dte-stream replay", dataflow_detector(), False))
    if args.candidates:
        chosen += [(name, bank_detector(spec_twin_type(**kw), sc), True) for name, kw, sc in CANDIDATES]
    evaluations: list[Evaluation] = []
    for name, detector, batch in chosen:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        evaluations.append(evaluate(name, detector, series, batch))
    default = evaluations[1]
    level = default_type.anomaly.level
    print("### Overall (partial: 13 series)\n")
    print("| detector | standard | reward low FP | reward low FN | time (s) |")
    print("|---|---:|---:|---:|---:|")
    for ev in evaluations:
        print(overall_row(ev.name, ev.results, ev.seconds))
    print(
        overall_row(f"default at its fixed level {level:g}", default.at_level(series, level), default.seconds)
    )
    std = default.results["standard"]
    print(f"\n### Default per series (standard profile, threshold {std.threshold:.4g})\n")
    print(series_table(series, std))
    prev = evaluations[2].results["standard"]
    print(f"\n### Previous default (no likelihood) per series (standard, threshold {prev.threshold:.4g})\n")
    print(series_table(series, prev))
    base = evaluations[0].results["standard"]
    print(f"\n### Windowed Gaussian per series (standard profile, threshold {base.threshold:.4g})\n")
    print(series_table(series, base))
    if args.plots:
        args.plots.mkdir(parents=True, exist_ok=True)
        for s, sc in zip(series, default.scores, strict=True):
            out = args.plots / f"{Path(s.name).stem}.png"
            plot(out, s, sc, std.threshold, f"default detector, standard threshold {std.threshold:.3g}")
        print(f"\nplots: {args.plots}/")


if __name__ == "__main__":
    main()
