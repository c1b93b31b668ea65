"""The data types that cross between the core and the connectors, in one module.

Sources emit :class:`RawBatch` (payloads to decode) or :class:`SourceBatch` (readings);
the twin shards emit :class:`EstimateBatch` (one row per reading applied, plus timer rows)
and :class:`AlertEvent` (alert state changes); anything refused anywhere is a
:class:`~dte_stream.readings.DeadLetter`. Connectors import these types from here and never
from the kernel packages (``dte_stream.twins``, ``dte_stream.alerts``), so the kernels can
change inside without touching a connector. :class:`~dte_stream.readings.ReadingBatch` and
``DeadLetter`` are defined with the reading checks in :mod:`dte_stream.readings`,
:class:`AlertEvent` in :mod:`dte_stream.alert_event` and :class:`TwinStates` (what the twin
state view publishes) in :mod:`dte_stream.twin_states`; all are named here as well.

>>> import numpy as np
>>> b = EstimateBatch("pump", np.array(["p1"]), np.array(["temp"]), np.array([1_000]),
...     np.array([20.5]), np.array(["Cel"]), np.array([20.4]), np.array([0.1]),
...     np.array([0.1]), np.array([0.5]))
>>> len(b), b.flag_column().tolist(), b.score_column().tolist()
(1, [0], [nan])
>>> e = AlertEvent("pump-1/overheat", "pump-1", "pump", "overheat", "firing", "critical",
...                starts_ns=10**18, time_ns=10**18, message="temperature 97.5 > 95",
...                labels={"site": "north"}, value=97.5)
>>> e.to_json_dict()["labels"]
{'site': 'north', 'alertname': 'overheat', 'twin_id': 'pump-1', 'twin_type': 'pump', 'severity': 'critical'}
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from dte_stream.alert_event import AlertEvent, AlertState, alert_id
from dte_stream.codecs.base import DecodeContext
from dte_stream.readings import DeadLetter, ReadingBatch
from dte_stream.twin_states import FilterStates, TwinStates

__all__ = [
    "AlertEvent",
    "AlertState",
    "DeadLetter",
    "EstimateBatch",
    "FilterStates",
    "RawBatch",
    "ReadingBatch",
    "SourceBatch",
    "TwinStates",
    "alert_id",
]


# -- what sources emit ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class SourceBatch:
    """Readings from a source that already produces them (the simulator) or just decoded.

    ``twin_type`` is set when the source declares the type of all its readings.
    """

    source: str
    readings: ReadingBatch
    twin_type: str | None = None


@dataclass(frozen=True, slots=True, eq=False)
class RawBatch:
    """Payloads to decode with one codec: MQTT messages, Kafka records, chunks of a file.

    Each payload has its own :class:`DecodeContext` (its topic, its receive time); a source
    reading many at once may hand a :class:`~dte_stream.codecs.base.PayloadBatch`, whose
    contexts are made only when a decoder asks.
    ``errors`` carries what the source itself refused before decoding (a topic that does not
    fit its template, a Kafka record without a value, an oversize message): the dataflow
    sends them to the dead-letter output with the decoder's own dead letters.
    """

    source: str
    codec: str
    payloads: Sequence[tuple[bytes, DecodeContext]] = field(default_factory=list)
    twin_type: str | None = None
    errors: list[DeadLetter] = field(default_factory=list)


# -- what twin shards emit --------------------------------------------------------------------


def _no_flags() -> npt.NDArray[np.uint16]:
    return np.zeros(0, dtype=np.uint16)


@dataclass(frozen=True, slots=True, eq=False)
class EstimateBatch:
    """One row per reading applied to a twin bank: the reading and the twin's outputs after it.

    ``estimate``/``std`` are the filter's posterior of the reading's channel, ``innovation``
    and ``nis`` its surprise; ``flags`` the bits of :mod:`dte_stream.twins.flags` (an empty
    array means none), ``anomaly_score`` in [0, 1] (empty: not scored); ``extra`` holds the
    optional outputs the twin type declares (every state of a multi-state model, forecasts,
    learner outputs), one float column each, NaN where it does not apply to a row.
    Rows with a NaN ``value`` are events without a reading (a stale sensor found by a timer).
    """

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
    flags: npt.NDArray[np.uint16] = field(default_factory=_no_flags)
    anomaly_score: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    extra: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.time_ns.shape[0])

    def flag_column(self) -> npt.NDArray[np.uint16]:
        """``flags``, or zeros when the batch carries none."""
        n = len(self)
        return self.flags if self.flags.shape[0] == n else np.zeros(n, dtype=np.uint16)

    def score_column(self) -> npt.NDArray[np.float64]:
        """``anomaly_score``, or NaN when the batch was not scored."""
        n = len(self)
        return self.anomaly_score if self.anomaly_score.shape[0] == n else np.full(n, np.nan)

    @staticmethod
    def concat(batches: list[EstimateBatch]) -> EstimateBatch:
        """Batches of one twin type as one, rows in order."""
        if len(batches) == 1:
            return batches[0]

        def cat(name: str) -> npt.NDArray[Any]:
            return np.concatenate([getattr(b, name) for b in batches])

        names = list(dict.fromkeys(name for b in batches for name in b.extra))
        extra = {
            name: np.concatenate([b.extra.get(name, np.full(len(b), np.nan)) for b in batches])
            for name in names
        }
        return EstimateBatch(
            batches[0].twin_type,
            cat("twin_id"),
            cat("channel"),
            cat("time_ns"),
            cat("value"),
            cat("unit"),
            cat("estimate"),
            cat("std"),
            cat("innovation"),
            cat("nis"),
            np.concatenate([b.flag_column() for b in batches]),
            np.concatenate([b.score_column() for b in batches]),
            extra,
        )

    def take(self, index: npt.NDArray[np.intp]) -> EstimateBatch:
        """The rows at ``index``, in that order."""
        return EstimateBatch(
            self.twin_type,
            self.twin_id[index],
            self.channel[index],
            self.time_ns[index],
            self.value[index],
            self.unit[index],
            self.estimate[index],
            self.std[index],
            self.innovation[index],
            self.nis[index],
            self.flag_column()[index],
            self.score_column()[index],
            {name: col[index] for name, col in self.extra.items()},
        )

    def per_twin_documents(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """One JSON-ready document per twin, its rows in batch order: what message sinks send.

        A document has ``twin_id``, ``twin_type`` and ``estimates``: a list of ``{channel,
        time (RFC 3339, ns), time_ns, value, unit, estimate, std, innovation, nis, flags,
        anomaly_score}`` plus the batch's ``extra`` columns (serialisers write non-finite
        numbers as null).
        """
        n = len(self)
        if n == 0:
            return
        order = np.argsort(self.twin_id, kind="stable")
        ids = self.twin_id[order]
        starts = [0, *(np.flatnonzero(ids[1:] != ids[:-1]) + 1).tolist(), n]
        times = self.time_ns[order]
        texts = np.char.add(np.datetime_as_string(times.astype("datetime64[ns]"), unit="ns"), "Z")
        columns = [
            self.channel[order].tolist(),
            texts.tolist(),
            times.tolist(),
            self.value[order].tolist(),
            self.unit[order].tolist(),
            self.estimate[order].tolist(),
            self.std[order].tolist(),
            self.innovation[order].tolist(),
            self.nis[order].tolist(),
            self.flag_column()[order].tolist(),
            self.score_column()[order].tolist(),
            *(col[order].tolist() for col in self.extra.values()),
        ]
        keys = (
            "channel", "time", "time_ns", "value", "unit", "estimate", "std", "innovation", "nis",
            "flags", "anomaly_score", *self.extra,
        )  # fmt: skip
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
        flags = np.concatenate([b.flag_column() for b in batches])
        scores = np.concatenate([b.score_column() for b in batches])
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
                pl.Series("flags", flags, dtype=pl.UInt16),
                pl.Series("anomaly_score", scores, dtype=pl.Float64),
            ]
        )

    @staticmethod
    def outputs_frame_of(batches: list[EstimateBatch]) -> pl.DataFrame | None:
        """The ``extra`` columns as a long frame (time, twin_id, twin_type, channel, output, value).

        One row per finite value, for the local store's ``outputs`` table; None when no batch
        has extra outputs.
        """
        parts = []
        for b in batches:
            if not b.extra or len(b) == 0:
                continue
            base = pl.DataFrame(
                {
                    "time": pl.Series(b.time_ns, dtype=pl.Int64).cast(pl.Datetime("ns", "UTC")),
                    "twin_id": b.twin_id.tolist(),
                    "channel": b.channel.tolist(),
                }
            )
            for name, col in b.extra.items():
                finite = np.isfinite(col)
                if finite.any():
                    parts.append(
                        base.filter(pl.Series(finite)).with_columns(
                            pl.lit(b.twin_type).alias("twin_type"),
                            pl.lit(name).alias("output"),
                            pl.Series("value", col[finite], dtype=pl.Float64),
                        )
                    )
        if not parts:
            return None
        return pl.concat(parts).select("time", "twin_id", "twin_type", "channel", "output", "value")
