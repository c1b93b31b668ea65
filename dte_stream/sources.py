"""What every source emits into the dataflow: decoded readings, or raw payloads to decode."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from dte_stream.codecs.base import DecodeContext
from dte_stream.readings import DeadLetter, ReadingBatch

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
