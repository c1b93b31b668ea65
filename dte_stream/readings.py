"""The reading types used everywhere inside dte-stream.

A :class:`Reading` is one sensor value of one channel of one twin at one event time. Inside
the dataflow readings travel as a :class:`ReadingBatch`: struct-of-arrays (numpy) so that the
twin bank, the sinks and the store handle thousands of readings per Python call. Anything
that cannot become a reading becomes a :class:`DeadLetter` carrying the raw payload, where it
came from and why it was refused.

>>> batch = ReadingBatch.from_readings([Reading("pump-1", "temp", 1_000, 20.5)])
>>> len(batch), str(batch.twin_id[0]), float(batch.value[0])
(1, 'pump-1', 20.5)
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from dte_stream.times import MAX_TIME_NS, MIN_TIME_NS, now_ns

__all__ = [
    "MAX_ID_LENGTH",
    "DeadLetter",
    "Reading",
    "ReadingBatch",
    "check_reading",
    "id_problem",
]

#: Longest twin id, channel or unit accepted (characters).
MAX_ID_LENGTH = 256

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

StrArray = npt.NDArray[np.str_]
I64Array = npt.NDArray[np.int64]
F64Array = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Reading:
    """One sensor value: twin id, channel, event time (int64 ns UTC), value, unit, quality.

    ``quality`` is the sensor's own confidence in [0, 1], NaN when the sensor gives none.
    """

    twin_id: str
    channel: str
    time_ns: int
    value: float
    unit: str = ""
    quality: float = math.nan


def id_problem(kind: str, text: object) -> str | None:
    """Why ``text`` cannot be a twin id / channel / unit, or None when it can.

    Ids may hold spaces, commas, quotes, equals signs and any printable unicode (sinks escape
    them); they may not be empty, longer than :data:`MAX_ID_LENGTH`, or hold control characters
    (newlines, tabs, NUL), which no time-series store can represent faithfully.
    """
    if not isinstance(text, str):
        return f"{kind} must be a string, got {type(text).__name__}"
    if not text and kind != "unit":
        return f"{kind} is empty"
    if len(text) > MAX_ID_LENGTH:
        return f"{kind} is longer than {MAX_ID_LENGTH} characters"
    if _CONTROL.search(text):
        return f"{kind} {text[:40]!r} contains a control character"
    if text != text.strip():
        return f"{kind} {text[:40]!r} has leading or trailing whitespace"
    return None


def check_reading(
    twin_id: object, channel: object, time_ns: object, value: object, unit: object = ""
) -> str | None:
    """Why these fields cannot form a reading, or None when they can. Never raises."""
    for kind, text in (("twin id", twin_id), ("channel", channel), ("unit", unit)):
        problem = id_problem(kind, text)
        if problem:
            return problem
    if isinstance(time_ns, bool) or not isinstance(time_ns, int):
        return f"time must be an integer of nanoseconds, got {type(time_ns).__name__}"
    if not MIN_TIME_NS <= time_ns < MAX_TIME_NS:
        return f"time {time_ns} ns is outside 1970..2262"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"value must be a number, got {type(value).__name__}"
    if not math.isfinite(value):
        return f"value {value!r} is not finite"
    return None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Input that could not become readings: the raw payload, its source and the reason."""

    source: str
    reason: str
    raw: bytes
    received_ns: int = field(default_factory=now_ns)

    def to_json_dict(self) -> dict[str, object]:
        """A JSON-ready dict; the raw payload as text when it is UTF-8, else as hex."""
        try:
            raw: str = self.raw.decode("utf-8")
            encoding = "utf-8"
        except UnicodeDecodeError:
            raw = self.raw.hex()
            encoding = "hex"
        return {
            "received_ns": self.received_ns,
            "source": self.source,
            "reason": self.reason,
            "raw": raw,
            "raw_encoding": encoding,
        }


def _str_array(values: Sequence[str] | StrArray) -> StrArray:
    arr = np.asarray(values, dtype=np.str_)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    return arr


@dataclass(frozen=True, slots=True, eq=False)
class ReadingBatch:
    """A columnar batch of readings: equal-length 1-D numpy arrays.

    Build one with :meth:`from_columns` (validates lengths and dtypes) or
    :meth:`from_readings`. Batches are immutable by convention: steps make new arrays.
    """

    twin_id: StrArray
    channel: StrArray
    time_ns: I64Array
    value: F64Array
    unit: StrArray
    quality: F64Array

    @classmethod
    def from_columns(
        cls,
        twin_id: Sequence[str] | StrArray,
        channel: Sequence[str] | StrArray,
        time_ns: Sequence[int] | I64Array,
        value: Sequence[float] | F64Array,
        unit: Sequence[str] | StrArray | None = None,
        quality: Sequence[float] | F64Array | None = None,
    ) -> ReadingBatch:
        """Build a batch from columns; ``unit`` defaults to "" and ``quality`` to NaN."""
        t = np.asarray(time_ns, dtype=np.int64).reshape(-1)
        n = t.shape[0]
        twin = _str_array(twin_id) if n else np.empty(0, dtype="<U1")
        chan = _str_array(channel) if n else np.empty(0, dtype="<U1")
        val = np.asarray(value, dtype=np.float64).reshape(-1)
        u = np.full(n, "", dtype="<U1") if unit is None else _str_array(unit)
        q = np.full(n, np.nan) if quality is None else np.asarray(quality, dtype=np.float64)
        for name, arr in (
            ("twin_id", twin),
            ("channel", chan),
            ("value", val),
            ("unit", u),
            ("quality", q),
        ):
            if arr.shape[0] != n:
                raise ValueError(f"column {name} has {arr.shape[0]} rows, time_ns has {n}")
        return cls(twin, chan, t, val, u, q)

    @classmethod
    def from_readings(cls, readings: Iterable[Reading]) -> ReadingBatch:
        """Build a batch from :class:`Reading` objects (convenient, not a hot path)."""
        rs = list(readings)
        return cls.from_columns(
            [r.twin_id for r in rs],
            [r.channel for r in rs],
            [r.time_ns for r in rs],
            [r.value for r in rs],
            [r.unit for r in rs],
            [r.quality for r in rs],
        )

    @classmethod
    def empty(cls) -> ReadingBatch:
        """A batch with no readings."""
        return cls.from_columns([], [], [], [])

    @classmethod
    def concat(cls, batches: Sequence[ReadingBatch]) -> ReadingBatch:
        """Concatenate batches in order (one batch is returned as is)."""
        if len(batches) == 1:
            return batches[0]
        if not batches:
            return cls.empty()
        return cls(
            np.concatenate([b.twin_id for b in batches]),
            np.concatenate([b.channel for b in batches]),
            np.concatenate([b.time_ns for b in batches]),
            np.concatenate([b.value for b in batches]),
            np.concatenate([b.unit for b in batches]),
            np.concatenate([b.quality for b in batches]),
        )

    def __len__(self) -> int:
        return int(self.time_ns.shape[0])

    def take(self, index: npt.NDArray[np.intp] | npt.NDArray[np.bool_]) -> ReadingBatch:
        """The readings at ``index`` (integer positions or a boolean mask), as a new batch."""
        return ReadingBatch(
            self.twin_id[index],
            self.channel[index],
            self.time_ns[index],
            self.value[index],
            self.unit[index],
            self.quality[index],
        )

    def __iter__(self) -> Iterator[Reading]:
        for i in range(len(self)):
            yield Reading(
                str(self.twin_id[i]),
                str(self.channel[i]),
                int(self.time_ns[i]),
                float(self.value[i]),
                str(self.unit[i]),
                float(self.quality[i]),
            )

    def to_readings(self) -> list[Reading]:
        """The batch as a list of :class:`Reading` (for tests and small outputs)."""
        return list(self)
