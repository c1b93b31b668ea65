"""The labelled NAB series, baseline detectors, and NAB scoring of a detector over them.

A :data:`Detector` gets a whole series (event times in int64 ns, values) and returns one score
per reading; it must behave as a streaming detector (each score computed before the next value
is seen, no tuning per series): the library cannot check that, the detectors here and in
``bench_nab.py`` are written that way. Scores are judged by :mod:`nab_scoring` (NAB's own
rules: probation, sigmoid-weighted windows, three profiles, one optimised threshold per
profile over all series together).

Baselines:

- :func:`windowed_gaussian_scores`: NAB's "windowed Gaussian" detector as NAB describes it (the
  mean and standard deviation of the last 6,400 values, refreshed every 100 values; the score
  is ``1 - Q(|z|)``), published at 39.6 standard on NAB's full corpus;
- :func:`zscore_scores`: ``|x - mean| / std`` over the previous ``W`` readings.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from nab_scoring import PROFILES, ProfileResult, ScoringSeries, score_all, score_profile

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

#: A streaming detector: (time_ns, value) of one series -> one score per reading.
Detector = Callable[[I64, F64], F64]


def _find_root() -> Path:
    """``shared/data/nab`` in the nearest folder above the repository that has one."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "shared" / "data" / "nab"
        if candidate.is_dir():
            return candidate
    return here.parents[2] / "shared" / "data" / "nab"


#: Where the NAB series are: ``shared/data/nab`` beside the repository (or a folder further up).
DEFAULT_ROOT = _find_root()
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

    def scoring(self) -> ScoringSeries:
        """The series as NAB's scorer sees it."""
        return ScoringSeries.from_times(self.name, self.time_ns, self.windows)


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
class Evaluation:
    """A detector's scores per series and its NAB result for each profile."""

    name: str
    scores: list[F64]
    results: dict[str, ProfileResult]
    seconds: float

    def at_level(self, series: Sequence[Series], level: float) -> dict[str, ProfileResult]:
        """Every profile at one fixed threshold (what a deployment with that level gets)."""
        scoring = [s.scoring() for s in series]
        return {n: score_profile(scoring, self.scores, p, level) for n, p in PROFILES.items()}


#: Scores every series at once (for example all of them as twins of one bank): one array per series.
BatchDetector = Callable[[Sequence[Series]], list[F64]]


def evaluate(
    name: str, detector: Detector | BatchDetector, series: Sequence[Series], batch: bool = False
) -> Evaluation:
    """Run ``detector`` on every series (all at once if ``batch``) and score it with every NAB profile."""
    start = time.perf_counter()
    raw = detector(series) if batch else [detector(s.time_ns, s.value) for s in series]  # type: ignore[call-arg]
    scores = [np.nan_to_num(np.asarray(r, dtype=float), nan=0.0) for r in raw]
    seconds = time.perf_counter() - start
    return Evaluation(name, scores, score_all([s.scoring() for s in series], scores), seconds)


def _normal_sf(z: F64) -> F64:
    """Upper tail ``Q(z)`` of the standard normal."""
    return 0.5 * np.vectorize(math.erfc)(z / math.sqrt(2.0))


def windowed_gaussian_scores(value: F64, window: int = 6400, step: int = 100) -> F64:
    """NAB's windowed Gaussian: ``1 - Q(|x - mean| / std)`` against a window of past values.

    Streaming: reading ``i`` is scored with the statistics of the values before it. While
    fewer than ``window`` values have been seen, the statistics are those of all of them; after
    that, the window is the last ``window`` values as of the latest multiple of ``step`` (the
    window slides ``step`` values at a time). A zero std counts as 1e-6. The first reading scores 0.
    """
    x = np.asarray(value, dtype=float)
    n = x.shape[0]
    mean = np.zeros(n)
    std = np.ones(n)
    grow = min(n, window + 1)
    # Readings 1..grow-1: the statistics of values[0:i] (shifted sums for accuracy).
    shifted = x[:grow] - x[0]
    c1 = np.cumsum(shifted)
    c2 = np.cumsum(shifted * shifted)
    k = np.arange(1, grow)
    m = c1[: grow - 1] / k
    mean[1:grow] = m + x[0]
    std[1:grow] = np.sqrt(np.maximum(c2[: grow - 1] / k - m * m, 0.0))
    # Readings window+j*step .. : the window values[j*step : window + j*step], refreshed per step.
    for begin in range(window + step, n, step):
        block = x[begin - window : begin]
        stop = min(begin + step, n)
        mean[begin:stop] = block.mean()
        std[begin:stop] = block.std()
    if n > window:
        first = x[:window]
        mean[window : min(window + step, n)] = first.mean()
        std[window : min(window + step, n)] = first.std()
    std = np.where(std == 0.0, 1e-6, std)
    scores = 1.0 - _normal_sf(np.abs(x - mean) / std)
    scores[:1] = 0.0
    return scores


def windowed_gaussian_detector() -> Detector:
    """:func:`windowed_gaussian_scores` as a :data:`Detector`."""

    def detect(time_ns: I64, value: F64) -> F64:
        del time_ns
        return windowed_gaussian_scores(value)

    return detect


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
    """The windowed z-score baseline as a :data:`Detector`."""

    def detect(time_ns: I64, value: F64) -> F64:
        del time_ns
        return zscore_scores(value, window)

    return detect


def delays_hours(series: Series, first_rows: I64) -> list[float]:
    """Hours from each window's start to its first counted flag (NaN when missed)."""
    out = []
    for (start, _end), row in zip(series.windows, first_rows, strict=True):
        out.append(math.nan if row < 0 else (int(series.time_ns[row]) - int(start)) / NS_PER_HOUR)
    return out
