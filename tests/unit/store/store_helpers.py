"""Frames for the local store tests (a module, not conftest, so that tests can import it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import polars as pl

#: 2026-01-02T00:00:00Z in nanoseconds.
DAY0 = 1_767_312_000_000_000_000
NS_PER_S = 1_000_000_000

ReadingsFactory = Callable[..., pl.DataFrame]


def make_readings(
    n: int,
    *,
    start_ns: int = DAY0,
    step_ns: int = NS_PER_S,
    twins: Sequence[str] = ("pump-1", "pump-2"),
    channels: Sequence[str] = ("temp", "flow"),
    seed: int = 0,
) -> pl.DataFrame:
    """``n`` readings cycling over twins and channels, one every ``step_ns`` from ``start_ns``."""
    rng = np.random.default_rng(seed)
    idx = np.arange(n)
    value = rng.normal(20.0, 2.0, n)
    return pl.DataFrame(
        {
            "time": start_ns + idx.astype(np.int64) * step_ns,
            "twin_id": [twins[i % len(twins)] for i in range(n)],
            "twin_type": ["pump"] * n,
            "channel": [channels[(i // len(twins)) % len(channels)] for i in range(n)],
            "value": value,
            "unit": ["degC"] * n,
            "estimate": value + 0.1,
            "std": np.full(n, 0.5),
            "innovation": np.full(n, -0.1),
            "nis": np.full(n, 0.04),
            "flags": pl.Series(np.arange(n) % 4, dtype=pl.UInt16),
            "anomaly_score": np.linspace(0.0, 1.0, n),
        }
    )
