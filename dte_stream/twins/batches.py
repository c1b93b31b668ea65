"""Batches that flow after routing: readings of one twin type, and the bank's estimates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

from dte_stream.readings import ReadingBatch

__all__ = ["EstimateBatch", "TypedBatch"]


@dataclass(frozen=True, slots=True, eq=False)
class TypedBatch:
    """Readings of one twin type, each with the index of its channel in the type's channels."""

    twin_type: str
    readings: ReadingBatch
    channel_index: npt.NDArray[np.intp]

    def __len__(self) -> int:
        return len(self.readings)

    @classmethod
    def concat(cls, batches: list[TypedBatch]) -> TypedBatch:
        if len(batches) == 1:
            return batches[0]
        return cls(
            batches[0].twin_type,
            ReadingBatch.concat([b.readings for b in batches]),
            np.concatenate([b.channel_index for b in batches]),
        )


@dataclass(frozen=True, slots=True, eq=False)
class EstimateBatch:
    """One row per reading applied to a twin bank: the reading and the twin's estimate after it."""

    twin_type: str
    twin_id: npt.NDArray[np.str_]
    channel: npt.NDArray[np.str_]
    time_ns: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    unit: npt.NDArray[np.str_]
    estimate: npt.NDArray[np.float64]
    std: npt.NDArray[np.float64]
    innovation: npt.NDArray[np.float64]
    nis: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.time_ns.shape[0])

    def to_frame(self) -> pl.DataFrame:
        """The rows as a polars frame in the local store's ``readings`` schema."""
        n = len(self)
        return pl.DataFrame(
            {
                "time": pl.Series("time", self.time_ns, dtype=pl.Int64).cast(pl.Datetime("ns", "UTC")),
                "twin_id": pl.Series("twin_id", self.twin_id, dtype=pl.String),
                "twin_type": pl.Series("twin_type", [self.twin_type], dtype=pl.String).extend_constant(
                    self.twin_type, n - 1
                )
                if n
                else pl.Series("twin_type", [], dtype=pl.String),
                "channel": pl.Series("channel", self.channel, dtype=pl.String),
                "value": pl.Series("value", self.value, dtype=pl.Float64),
                "unit": pl.Series("unit", self.unit, dtype=pl.String),
                "estimate": pl.Series("estimate", self.estimate, dtype=pl.Float64),
                "std": pl.Series("std", self.std, dtype=pl.Float64),
                "innovation": pl.Series("innovation", self.innovation, dtype=pl.Float64),
                "nis": pl.Series("nis", self.nis, dtype=pl.Float64),
            }
        )
