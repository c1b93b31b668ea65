"""Anomaly detection on the labelled NAB series: the z-score baseline and the engine's detectors.

Every detector sees each value once, in order, and scores it before the next (the kernel and
the scorer advance one reading per step); all parameters are the same for every series. The
default is ``dataflows/anomaly.yaml`` replayed through the real dataflow
(:func:`dataflow_detector`, what ``dte-stream replay`` does); :func:`engine_detector` is the
same filter and scorer driven directly (the prototype the settings were chosen with), and the
other candidates show what each choice adds.

    python benchmarks/bench_nab.py [--data DIR] [--plot OUT.png] [--hst]

Prints Markdown tables (per series for the baseline and the default, then overall for every
candidate) with the date and machine. ``--hst`` adds river's HalfSpaceTrees on the values and
on the innovations (slow: a river model per reading).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from nab import (
    DEFAULT_ROOT,
    Bool,
    Detector,
    Series,
    SeriesResult,
    load_series,
    run,
    summarise,
    zscore_detector,
)

from dte_stream.twins.anomaly import ANOMALY_LEVEL, AnomalyScorer
from dte_stream.twins.kalman import StateSpaceKernel
from dte_stream.twins.presets import local_linear_trend, random_walk
from dte_stream.twins.statespace import CHI2_1DOF_999, StateSpaceModel, StateSpaceState

ONE = np.zeros(1, dtype=np.intp)

#: Default filter noise densities, relative to a unit measurement variance (with gate=inf only the
#: ratios matter, so the filter is as scale-free as the scorer): a level that wanders by sqrt(1e-3)
#: per sqrt(second) and a slope that barely moves.
LEVEL_NOISE = 1e-3
SLOPE_NOISE = 1e-9


def filter_scores(
    model: StateSpaceModel, gate: float, scorer: AnomalyScorer | None, time_ns: np.ndarray, value: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replay one series through the kernel (one reading per round): scores, innovations, s."""
    kernel = StateSpaceKernel(model, gate=gate, lateness_ns=0)
    state = StateSpaceState.allocate(model, 1)
    n = time_ns.shape[0]
    scores, innov, s = np.zeros(n), np.full(n, np.nan), np.full(n, np.nan)
    for i in range(n):
        t, v = time_ns[i : i + 1], value[i : i + 1]
        out = kernel.step(state, ONE, ONE, t, v)
        innov[i], s[i] = out.innovation[0], out.s[0]
        if scorer is not None:
            scores[i] = scorer.score(ONE, ONE, t, v, out.innovation, out.s)[0]
    return scores, innov, s


def kernel_detector(model: StateSpaceModel, gate: float = math.inf, **scorer_params: float) -> Detector:
    """Filter ``model`` (gate ``gate``) and an :class:`AnomalyScorer` per series."""

    def detect(time_ns: np.ndarray, value: np.ndarray) -> np.ndarray:
        scorer = AnomalyScorer(channels=1, capacity=1, **scorer_params)  # type: ignore[arg-type]
        return filter_scores(model, gate, scorer, time_ns, value)[0]

    return detect


def engine_detector() -> Detector:
    """The engine's default: local-linear-trend filter, no gating, AnomalyScorer defaults, ANOMALY_LEVEL."""
    return kernel_detector(local_linear_trend(LEVEL_NOISE, SLOPE_NOISE, [1.0]), math.inf)


def hst_detector(on: str) -> Detector:
    """river's HalfSpaceTrees per reading on min-max scaled values or filter innovations (prototype)."""
    from river import anomaly, preprocessing

    def detect(time_ns: np.ndarray, value: np.ndarray) -> np.ndarray:
        model = preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(
            n_trees=25, height=8, window_size=250, seed=7
        )
        if on == "innovation":
            _, innov, s = filter_scores(
                local_linear_trend(LEVEL_NOISE, SLOPE_NOISE, [1.0]), math.inf, None, time_ns, value
            )
            feature = np.nan_to_num(innov / np.sqrt(np.where(np.isfinite(s), s, 1.0)))
        else:
            feature = value
        out = np.zeros(feature.shape[0])
        for i, x in enumerate(feature.tolist()):
            row = {"x": x}
            out[i] = model.score_one(row)
            model.learn_one(row)
        out[:250] = 0.0  # the trees' first window is their warm-up
        return out

    return detect


ANOMALY_SPEC = Path(__file__).resolve().parent.parent / "dataflows" / "anomaly.yaml"


def dataflow_detector(spec_path: Path = ANOMALY_SPEC) -> Detector:
    """Each series replayed as one twin through the real dataflow of ``spec_path`` (dte-stream replay)."""
    from dte_stream.readings import ReadingBatch
    from dte_stream.replay import replay_frame
    from dte_stream.spec import load_spec

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


def candidates(with_hst: bool) -> list[tuple[str, Detector, float]]:
    """(name, detector, level): the baseline first, the default second."""
    rw = random_walk(LEVEL_NOISE, [1.0])
    llt = local_linear_trend(LEVEL_NOISE, SLOPE_NOISE, [1.0])
    out: list[tuple[str, Detector, float]] = [
        ("z-score W=100, z>=3", zscore_detector(100), 3.0),
        ("dataflows/anomaly.yaml through dte-stream replay", dataflow_detector(), ANOMALY_LEVEL),
        ("default: local_linear_trend gate=inf + scorer", engine_detector(), ANOMALY_LEVEL),
        ("local_linear_trend gate=default + scorer", kernel_detector(llt, CHI2_1DOF_999), ANOMALY_LEVEL),
        ("random_walk gate=inf + scorer", kernel_detector(rw), ANOMALY_LEVEL),
        ("default, no peak memory", kernel_detector(llt, peak_ref=1e9), ANOMALY_LEVEL),
        ("default, point view only", kernel_detector(llt, window_cap=1e-9), ANOMALY_LEVEL),
    ]
    if with_hst:
        out += [
            ("HST on values", hst_detector("value"), 0.9),
            ("HST on innovations", hst_detector("innovation"), 0.9),
        ]
    return out


def _fmt(x: float, digits: int = 1) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


def series_table(results: list[SeriesResult]) -> str:
    lines = [
        "| series | readings | windows detected | delay (readings) | delay (h) "
        "| false episodes | false readings |",
        "|---|---:|---:|---|---|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.name.split('/')[-1]} | {r.readings} | {r.detected}/{r.windows} "
            f"| {', '.join(_fmt(d, 0) for d in r.delay_readings)} "
            f"| {', '.join(_fmt(d) for d in r.delay_hours)} "
            f"| {r.false_episodes} | {r.false_readings} |"
        )
    return "\n".join(lines)


def plot(path: Path, series: list[Series], flagged: dict[str, list[Bool]]) -> None:
    """One panel per series: values, windows shaded, flags of each detector as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(series), 1, figsize=(14, 2.2 * len(series)))
    colours = ["tab:red", "tab:green", "tab:purple", "tab:orange"]
    for k, (ax, s) in enumerate(zip(axes, series, strict=True)):
        t = s.time_ns.astype("datetime64[ns]")
        ax.plot(t, s.value, lw=0.5, color="0.3")
        for start, end in s.windows:
            ax.axvspan(
                np.datetime64(int(start), "ns"), np.datetime64(int(end), "ns"), color="gold", alpha=0.3
            )
        lo, hi = float(np.min(s.value)), float(np.max(s.value))
        for j, (name, flags) in enumerate(flagged.items()):
            y = hi + (j + 1) * 0.06 * (hi - lo + 1e-12)
            ax.plot(t[flags[k]], np.full(int(flags[k].sum()), y), "|", ms=6, color=colours[j % 4], label=name)
        ax.set_title(s.name, fontsize=8, loc="left")
        ax.tick_params(labelsize=6)
    axes[0].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="folder with anomaly_windows.json")
    parser.add_argument("--plot", type=Path, help="write a PNG of every series with windows and flags")
    parser.add_argument("--hst", action="store_true", help="add river HalfSpaceTrees candidates (slow)")
    parser.add_argument("--only-default", action="store_true", help="baseline and default only")
    args = parser.parse_args(argv)
    series = load_series(args.data)
    readings = sum(s.time_ns.shape[0] for s in series)
    stamp = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs"
    print(f"NAB, {len(series)} series, {readings} readings; {stamp}, {platform.platform()}\n")
    chosen = candidates(args.hst)[:3] if args.only_default else candidates(args.hst)
    rows = []
    flagged: dict[str, list[Bool]] = {}
    for k, (name, detector, level) in enumerate(chosen):
        start = time.perf_counter()
        results = run(detector, level, series)
        elapsed = time.perf_counter() - start
        if k < 3:
            print(f"### {name}\n\n{series_table([r for r, _ in results])}\n")
            flagged[name] = [f for _, f in results]
        sm = summarise([r for r, _ in results])
        rows.append(
            f"| {name} | {level:g} | {sm.detected}/{sm.windows} | {_fmt(sm.mean_delay_readings, 0)} "
            f"| {_fmt(sm.median_delay_hours)} | {sm.false_episodes} | {sm.false_readings} "
            f"| {sm.nab_score:.1f} | {elapsed:.1f} |"
        )
    print("### Overall\n")
    print("| detector | level | windows detected | mean delay (readings) | median delay (h) "
          "| false episodes | false readings | NAB-like score | time (s) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    if args.plot:
        plot(args.plot, series, flagged)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
