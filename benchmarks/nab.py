"""Evaluation library for streaming anomaly detectors on the labelled NAB series.

A :data:`Detector` gets a whole series (event times in int64 ns, values) and returns one score
per reading; it must behave as a streaming detector (each score computed before the next value
is seen, no tuning per series): the library cannot check that, the detectors in
``bench_nab.py`` are written that way. Flags are ``scores >= level``.

Metrics per series (:func:`evaluate`) and summed over series (:func:`summarise`):

- windows detected: a flag inside ``[start, end]``; delay from the window's start to the first
  flag in it, in readings and in hours;
- false flags outside every window: raw flagged readings and *episodes* (runs of consecutive
  flagged readings, so one long excursion counts once);
- a NAB-like score: NAB's standard profile weights the first detection in a window by its
  scaled sigmoid ``2 / (1 + exp(5 y)) - 1`` with ``y = (t - end) / (end - start)`` (about 0.99
  at the start, 0 at the end), a missed window counts -1 and each false flagged reading -0.11;
  normalised as NAB does, ``100 (S - S_null) / (S_perfect - S_null)`` (null: no flag at all,
  perfect: every window flagged at its start and nothing else). NAB's probationary period is
  not applied: flags anywhere count.

The windowed z-score baseline (:func:`zscore_detector`) scores ``|x - mean| / std`` over the
previous ``W`` readings.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

#: A streaming detector: (time_ns, value) of one series -> one score per reading.
Detector = Callable[[I64, F64], F64]

#: Where the NAB series are when the repository is cloned next to ``shared/``.
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "nab"
#: NAB standard profile: weight of a false positive (true positives weigh 1, misses -1).
FP_WEIGHT = 0.11
NS_PER_HOUR = 3_600 * 10**9


@dataclass(frozen=True)
class Series:
    """One labelled series: readings in time order and anomaly windows ``(k, 2)`` in ns."""

    name: str
    time_ns: I64
    value: F64
    windows: I64

    @property
    def in_window(self) -> Bool:
        """Per reading: inside some window."""
        inside = np.zeros(self.time_ns.shape[0], dtype=bool)
        for start, end in self.windows:
            inside |= (self.time_ns >= start) & (self.time_ns <= end)
        return inside


def _ns(stamps: Sequence[str]) -> I64:
    return np.array([s.replace(" ", "T") for s in stamps], dtype="datetime64[ns]").astype(np.int64)


def load_series(root: Path = DEFAULT_ROOT) -> list[Series]:
    """Every series listed in ``anomaly_windows.json`` under ``root``, in file-name order."""
    windows = json.loads((root / "anomaly_windows.json").read_text())
    out = []
    for name in sorted(windows):
        with (root / name).open(newline="") as f:
            rows = list(csv.DictReader(f))
        time_ns = _ns([r["timestamp"] for r in rows])
        value = np.array([float(r["value"]) for r in rows])
        order = np.argsort(time_ns, kind="stable")
        win = _ns([t for pair in windows[name] for t in pair]).reshape(-1, 2)
        out.append(Series(name, time_ns[order], value[order], win))
    return out


@dataclass(frozen=True)
class SeriesResult:
    """Detection metrics of one detector on one series (delays NaN for missed windows)."""

    name: str
    readings: int
    windows: int
    detected: int
    delay_readings: F64
    delay_hours: F64
    false_readings: int
    false_episodes: int
    nab_raw: float
    nab_perfect: float
    nab_null: float


def _episodes(mask: Bool) -> int:
    """Runs of consecutive True values."""
    if not mask.any():
        return 0
    return int(mask[0]) + int(np.count_nonzero(mask[1:] & ~mask[:-1]))


def evaluate(series: Series, flags: Bool) -> SeriesResult:
    """Metrics of ``flags`` (one per reading) against the series' windows."""
    t = series.time_ns
    delays_r, delays_h = [], []
    raw = 0.0
    perfect = 0.0
    for start, end in series.windows:
        idx = np.flatnonzero((t >= start) & (t <= end))
        if idx.size:
            first_in = idx[0]
            perfect += _sigmoid_weight(int(t[first_in]), int(start), int(end))
        hits = idx[flags[idx]] if idx.size else idx
        if hits.size:
            first = int(hits[0])
            delays_r.append(float(first - idx[0]))
            delays_h.append((int(t[first]) - int(start)) / NS_PER_HOUR)
            raw += _sigmoid_weight(int(t[first]), int(start), int(end))
        else:
            delays_r.append(math.nan)
            delays_h.append(math.nan)
            raw -= 1.0
    outside = flags & ~series.in_window
    false_readings = int(np.count_nonzero(outside))
    raw -= FP_WEIGHT * false_readings
    k = int(series.windows.shape[0])
    return SeriesResult(
        series.name, int(t.shape[0]), k, int(np.count_nonzero(~np.isnan(delays_r))),
        np.array(delays_r), np.array(delays_h), false_readings, _episodes(outside),
        raw, perfect, -float(k),
    )  # fmt: skip


def _sigmoid_weight(t: int, start: int, end: int) -> float:
    """NAB's scaled sigmoid for a detection at ``t`` inside ``[start, end]``."""
    y = (t - end) / max(end - start, 1)
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


@dataclass(frozen=True)
class Summary:
    """A detector's metrics summed over series."""

    windows: int
    detected: int
    mean_delay_readings: float
    median_delay_hours: float
    false_readings: int
    false_episodes: int
    nab_score: float


def summarise(results: Sequence[SeriesResult]) -> Summary:
    """Totals over series; delays over detected windows; the NAB-like score normalised to 0..100."""
    delays_r = np.concatenate([r.delay_readings for r in results])
    delays_h = np.concatenate([r.delay_hours for r in results])
    hit = ~np.isnan(delays_r)
    raw = sum(r.nab_raw for r in results)
    perfect = sum(r.nab_perfect for r in results)
    null = sum(r.nab_null for r in results)
    return Summary(
        sum(r.windows for r in results), sum(r.detected for r in results),
        float(delays_r[hit].mean()) if hit.any() else math.nan,
        float(np.median(delays_h[hit])) if hit.any() else math.nan,
        sum(r.false_readings for r in results), sum(r.false_episodes for r in results),
        100.0 * (raw - null) / (perfect - null),
    )  # fmt: skip


def zscore_scores(value: F64, window: int = 100) -> F64:
    """``|x - mean| / std`` over the previous ``window`` readings (0 until there are that many).

    A constant history and a different value scores ``inf``; the same value scores 0.
    """
    n = value.shape[0]
    out = np.zeros(n)
    if n <= window:
        return out
    past = np.lib.stride_tricks.sliding_window_view(value[:-1], window)  # past[i] precedes i + window
    mean = past.mean(axis=1)
    std = past.std(axis=1)
    dev = np.abs(value[window:] - mean)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(std > 0, dev / np.where(std > 0, std, 1.0), np.where(dev > 0, np.inf, 0.0))
    out[window:] = z
    return out


def zscore_detector(window: int = 100) -> Detector:
    """The windowed z-score baseline as a :data:`Detector` (flag it at level 3)."""

    def detect(time_ns: I64, value: F64) -> F64:
        del time_ns
        return zscore_scores(value, window)

    return detect


def run(detector: Detector, level: float, series: Sequence[Series]) -> list[tuple[SeriesResult, Bool]]:
    """Run ``detector`` on every series; results and flags per series."""
    out = []
    for s in series:
        flags = np.asarray(detector(s.time_ns, s.value)) >= level
        out.append((evaluate(s, flags), flags))
    return out
