"""NAB's scoring (benchmarks/nab_scoring.py) on small hand-made cases with hand-computed values.

The scaled sigmoid ``2 / (1 + exp(5 y)) - 1`` equals ``tanh(-5 y / 2)``; the expected values
below are written that way so they can be checked on paper.
"""

from __future__ import annotations

import doctest
import importlib
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"


def _import(name: str) -> ModuleType:
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


scoring = _import("nab_scoring")
nab = _import("nab")
STANDARD = scoring.PROFILES["standard"]
LOW_FP = scoring.PROFILES["reward_low_FP_rate"]
LOW_FN = scoring.PROFILES["reward_low_FN_rate"]
MAX_TP = math.tanh(2.5)  # the sigmoid at the window's first reading (y = -1)


def _flags(n: int, *rows: int) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[list(rows)] = True
    return out


def test_doctests() -> None:
    for module in (scoring, nab):
        failed, _ = doctest.testmod(module)
        assert failed == 0


def test_profiles_are_nabs() -> None:
    assert (STANDARD.tp, STANDARD.fp, STANDARD.fn) == (1.0, 0.11, 1.0)
    assert (LOW_FP.tp, LOW_FP.fp, LOW_FP.fn) == (1.0, 0.22, 1.0)
    assert (LOW_FN.tp, LOW_FN.fp, LOW_FN.fn) == (1.0, 0.11, 2.0)


def test_probation_is_15_percent_capped_at_750_rows() -> None:
    assert scoring.probation_rows(1000) == 150
    assert scoring.probation_rows(4032) == 604  # floor(604.8)
    assert scoring.probation_rows(5000) == 750
    assert scoring.probation_rows(22695) == 750


# One series of 20 rows, no probation, one window on rows 10..14 (width 5).
ONE = scoring.ScoringSeries.from_rows("one", n=20, windows=[(10, 14)], probation=0)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ((), -1.0),  # the window is missed
        ((10,), 1.0),  # first reading of the window: the full true-positive weight
        ((12,), math.tanh(1.5) / MAX_TP),  # y = -(14 - 12 + 1) / 5 = -0.6
        ((11, 13), math.tanh(2.0) / MAX_TP),  # only the first flag counts: y = -0.8
        ((10, 11, 12, 13, 14), 1.0),  # later flags in the window add nothing
        ((5,), -1.0 - 0.11),  # before any window: the full false-positive penalty, and a miss
        ((16,), -1.0 - 0.11 * math.tanh(1.25)),  # after the window: y = (16 - 14) / (5 - 1) = 0.5
        ((10, 19), 1.0 - 0.11 * math.tanh(3.125)),  # y = 5 / 4 = 1.25
    ],
)
def test_one_window_standard(rows: tuple[int, ...], expected: float) -> None:
    assert ONE.raw_score(_flags(20, *rows), STANDARD) == pytest.approx(expected, abs=1e-12)


def test_false_positive_far_after_a_window_is_the_full_penalty() -> None:
    # y = (30 - 14) / 4 = 4 > 3: sigma is -1 exactly.
    s = scoring.ScoringSeries.from_rows("far", n=40, windows=[(10, 14)], probation=0)
    assert s.raw_score(_flags(40, 10, 30), STANDARD) == pytest.approx(1.0 - 0.11, abs=1e-15)
    assert s.raw_score(_flags(40, 10, 30), LOW_FP) == pytest.approx(1.0 - 0.22, abs=1e-15)


def test_penalty_after_the_second_window_uses_the_second_window() -> None:
    # Windows 2..5 (width 4) and 10..11 (width 2); a flag at 13 is y = (13 - 11) / (2 - 1) = 2.
    s = scoring.ScoringSeries.from_rows("two", n=20, windows=[(2, 5), (10, 11)], probation=0)
    expected = 1.0 - 1.0 - 0.11 * math.tanh(5.0)  # first window hit at its start, second missed
    assert s.raw_score(_flags(20, 2, 13), STANDARD) == pytest.approx(expected, abs=1e-12)
    # Between the windows, 8 is y = (8 - 5) / 3 = 1 after the first.
    expected = -2.0 - 0.11 * math.tanh(2.5)
    assert s.raw_score(_flags(20, 8), STANDARD) == pytest.approx(expected, abs=1e-12)
    assert s.raw_score(_flags(20, 8), LOW_FN) == pytest.approx(-4.0 - 0.11 * math.tanh(2.5), abs=1e-12)


def test_probationary_flags_are_not_scored() -> None:
    s = scoring.ScoringSeries.from_rows("prob", n=20, windows=[(10, 14)], probation=8)
    assert s.raw_score(_flags(20, 0, 3, 7), STANDARD) == -1.0
    assert s.raw_score(_flags(20, 0, 8, 10), STANDARD) == pytest.approx(1.0 - 0.11)


def test_from_times_selects_rows_in_the_window() -> None:
    t = np.arange(10, dtype=np.int64) * 100
    s = scoring.ScoringSeries.from_times("t", t, np.array([[250, 500]]))
    assert s.window.tolist() == [-1, -1, -1, 0, 0, 0, -1, -1, -1, -1]


# Two series for the threshold sweep (no probation):
# A: 10 rows, window 5..6; scores 0.9 at row 5 (its start), 0.8 at row 1 (before the window).
# B: 10 rows, window 4..5; scores 0.7 at row 4 (its start), 0.95 at row 8 (y = 3 after it).
A = scoring.ScoringSeries.from_rows("A", n=10, windows=[(5, 6)], probation=0)
B = scoring.ScoringSeries.from_rows("B", n=10, windows=[(4, 5)], probation=0)
SCORES_A = np.zeros(10)
SCORES_A[[5, 1]] = [0.9, 0.8]
SCORES_B = np.zeros(10)
SCORES_B[[4, 8]] = [0.7, 0.95]


def test_sweep_finds_the_best_common_threshold() -> None:
    # Thresholds, standard profile: above all -2; 0.95: -2 - 0.11 tanh(7.5); 0.9: + 2;
    # 0.8: - 0.11; 0.7: + 2 -> 2 - 0.11 - 0.11 tanh(7.5) (the best); 0: more false positives.
    threshold, raw = scoring.sweep([A, B], [SCORES_A, SCORES_B], STANDARD)
    assert threshold == 0.7
    assert raw == pytest.approx(2.0 - 0.11 - 0.11 * math.tanh(7.5), abs=1e-12)
    result = scoring.score_profile([A, B], [SCORES_A, SCORES_B], STANDARD)
    assert (result.null, result.perfect) == (-2.0, 2.0)
    assert result.score == pytest.approx(100 * (raw + 2.0) / 4.0)
    assert [p.first_rows.tolist() for p in result.per_series] == [[5], [4]]
    assert [p.false_positives for p in result.per_series] == [1, 1]


def test_sweep_low_fn_profile_and_a_fixed_threshold() -> None:
    result = scoring.score_profile([A, B], [SCORES_A, SCORES_B], LOW_FN)
    assert result.threshold == 0.7
    assert result.score == pytest.approx(100 * (2.0 - 0.11 - 0.11 * math.tanh(7.5) + 4.0) / 6.0)
    fixed = scoring.score_profile([A, B], [SCORES_A, SCORES_B], STANDARD, threshold=0.85)
    # Only A's window (0.9) and B's false positive (0.95): 1 - 1 - 0.11 tanh(7.5).
    assert fixed.raw == pytest.approx(-0.11 * math.tanh(7.5), abs=1e-12)


def test_sweep_prefers_flagging_nothing_when_every_flag_costs() -> None:
    # 40 rows, window 30..31: at 0.5 one false positive (-1.11), at 0 thirty-eight of them.
    s = scoring.ScoringSeries.from_rows("late", n=40, windows=[(30, 31)], probation=0)
    scores = np.zeros(40)
    scores[1] = 0.5
    threshold, raw = scoring.sweep([s], [scores], STANDARD)
    assert (threshold, raw) == (math.inf, -1.0)


def test_sweep_ties_flag_together() -> None:
    # Equal scores on a window start and a false positive: both flagged at that threshold.
    scores = np.zeros(10)
    scores[[1, 5]] = 0.6
    threshold, raw = scoring.sweep([A], [scores], STANDARD)
    assert threshold == 0.6
    assert raw == pytest.approx(1.0 - 0.11)


def test_windowed_gaussian_statistics_slide_by_step() -> None:
    # window 3, step 2: row 1 sees [1] (std 0 -> 1e-6), row 2 [1, 2], rows 3-4 [1, 2, 3],
    # rows 5-6 [3, 4, 5], row 7 [5, 6, 7]; the score is 1 - Q(|z|).
    x = np.arange(1.0, 9.0)
    got = nab.windowed_gaussian_scores(x, window=3, step=2)
    sd3 = math.sqrt(2.0 / 3.0)
    z = [None, math.inf, 3.0, 2 / sd3, 3 / sd3, 2 / sd3, 3 / sd3, 2 / sd3]

    def score(v: float | None) -> float:
        return 0.0 if v is None else 1.0 - 0.5 * math.erfc(v / math.sqrt(2.0))

    assert got.tolist() == pytest.approx([score(v) for v in z], abs=1e-12)
