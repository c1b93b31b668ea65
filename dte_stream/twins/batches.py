"""Batches that flow after routing: readings of one twin type, and the bank's estimates."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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

    def per_twin_documents(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """One JSON-ready document per twin, its rows in batch order: what message sinks send.

        A document has ``twin_id``, ``twin_type`` and ``estimates``: a list of ``{channel,
        time (RFC 3339, ns), time_ns, value, unit, estimate, std, innovation, nis}``
        (serialisers write non-finite numbers as null).
        """
        n = len(self)
        if n == 0:
            return
        order = np.argsort(self.twin_id, kind="stable")
        ids = self.twin_id[order]
        starts = [0, *(np.flatnonzero(ids[1:] != ids[:-1]) + 1).tolist(), n]
        times = self.time_ns[order]
        texts = np.char.add(np.datetime_as_string(times.astype("datetime64[ns]"), unit="ns"), "Z")
        columns = (
            self.channel[order].tolist(),
            texts.tolist(),
            times.tolist(),
            self.value[order].tolist(),
            self.unit[order].tolist(),
            self.estimate[order].tolist(),
            self.std[order].tolist(),
            self.innovation[order].tolist(),
            self.nis[order].tolist(),
        )
        keys = ("channel", "time", "time_ns", "value", "unit", "estimate", "std", "innovation", "nis")
        rows = [dict(zip(keys, values, strict=True)) for values in zip(*columns, strict=True)]
        for lo, hi in itertools.pairwise(starts):
            twin_id = str(ids[lo])
            yield twin_id, {"twin_id": twin_id, "twin_type": self.twin_type, "estimates": rows[lo:hi]}

    def to_frame(self) -> pl.DataFrame:
        """The rows as a polars frame in the local store's ``readings`` schema."""
        return EstimateBatch.frame_of([self])

    @staticmethod
    def frame_of(batches: list[EstimateBatch]) -> pl.DataFrame:
        """Many batches as one polars frame: numpy concatenation first, one conversion after.

        Building a frame costs about a millisecond whatever its size, so sinks convert their
        whole buffer at once rather than each small batch. String columns go through
        ``tolist()``: polars builds a String column from Python strings about five times faster
        than from a numpy ``<U`` array.
        """

        def cat(name: str) -> npt.NDArray[Any]:
            arrays = [getattr(b, name) for b in batches]
            return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

        types = [b.twin_type for b in batches]
        counts = [len(b) for b in batches]
        type_names = sorted(set(types))
        type_codes = np.repeat(np.array([type_names.index(t) for t in types], dtype=np.uint32), counts)
        twin_type_col = pl.Series("twin_type", type_names, dtype=pl.String).gather(type_codes)
        return pl.DataFrame(
            [
                pl.Series("time", cat("time_ns"), dtype=pl.Int64).cast(pl.Datetime("ns", "UTC")),
                pl.Series("twin_id", cat("twin_id").tolist(), dtype=pl.String),
                twin_type_col,
                pl.Series("channel", cat("channel").tolist(), dtype=pl.String),
                pl.Series("value", cat("value"), dtype=pl.Float64),
                pl.Series("unit", cat("unit").tolist(), dtype=pl.String),
                pl.Series("estimate", cat("estimate"), dtype=pl.Float64),
                pl.Series("std", cat("std"), dtype=pl.Float64),
                pl.Series("innovation", cat("innovation"), dtype=pl.Float64),
                pl.Series("nis", cat("nis"), dtype=pl.Float64),
            ]
        )
