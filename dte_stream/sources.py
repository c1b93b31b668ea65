"""What every source emits into the dataflow: decoded readings, or raw payloads to decode."""

from __future__ import annotations

from dataclasses import dataclass, field

from dte_stream.codecs.base import DecodeContext
from dte_stream.readings import ReadingBatch

__all__ = ["RawBatch", "SourceBatch"]


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

    Each payload has its own :class:`DecodeContext` (its topic, its receive time).
    """

    source: str
    codec: str
    payloads: list[tuple[bytes, DecodeContext]] = field(default_factory=list)
    twin_type: str | None = None
