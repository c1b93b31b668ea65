"""What the bank tests compare: every output column of a run, and every state array of a bank.

Shared by the tests that run the same readings two ways (rounds against one round per batch,
the per-reading path against the rounds path, fused filters against unfused ones).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dte_stream.twins.bank import TwinBank

_OUTPUTS = ("twin_id", "channel", "time_ns", "value", "estimate", "std", "innovation", "nis")


def output_columns(updates: list[Any]) -> dict[str, np.ndarray]:
    """Every output column of ``updates`` (estimate batches), concatenated in their order."""
    cols: dict[str, list[np.ndarray]] = {}
    for e in updates:
        for name in _OUTPUTS:
            cols.setdefault(name, []).append(np.asarray(getattr(e, name)))
        cols.setdefault("flags", []).append(e.flag_column())
        cols.setdefault("score", []).append(e.score_column())
        for name, col in e.extra.items():
            cols.setdefault(name, []).append(col)
    return {name: np.concatenate(parts) for name, parts in cols.items()}


def bank_state(bank: TwinBank, scorer_rows: int, cells: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The bank's state arrays by name: kernels, quality, the scorer's first ``scorer_rows``
    rows and the per-cell arrays ``cells`` (``last_value``, ...)."""
    out: dict[str, np.ndarray] = {}
    for g, group in enumerate(bank.groups):
        out |= {f"kernel{g}.{k}": v for k, v in group.state.arrays().items()}
    out |= {f"quality.{k}": v for k, v in bank.quality.state.arrays().items()}
    if bank.scorer is not None:
        out |= {f"scorer.{k}": v for k, v in bank.scorer.snapshot(scorer_rows).items()}
    return out | {k: getattr(bank, k) for k in cells}
