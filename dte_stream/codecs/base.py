"""The codec contract: bytes in, readings and dead letters out, never an exception.

A codec turns one payload (an MQTT message, a Kafka record, a line of a file) into a
:class:`DecodeResult`: the good readings as a :class:`~dte_stream.readings.ReadingBatch` and
one :class:`~dte_stream.readings.DeadLetter` per part that could not be decoded or validated.
A payload of many records may yield both: the good records are kept, each bad one is dead-lettered
with its index and reason. ``encode`` is the inverse, used by the simulator and the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

from dte_stream.readings import DeadLetter, ReadingBatch
from dte_stream.times import now_ns

__all__ = ["MAX_PAYLOAD_BYTES", "Codec", "DecodeContext", "DecodeResult"]

#: Default payload size limit; larger payloads are dead-lettered unread.
MAX_PAYLOAD_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class DecodeContext:
    """Where a payload came from and what it implies.

    ``twin_id`` and ``channel`` are defaults taken from outside the payload (for example
    from MQTT topic levels); a payload's own values win. ``received_ns`` is the event time of
    readings whose payload carries no timestamp.
    """

    source: str
    twin_id: str | None = None
    channel: str | None = None
    received_ns: int = field(default_factory=now_ns)
    max_payload_bytes: int = MAX_PAYLOAD_BYTES


@dataclass(frozen=True, slots=True)
class DecodeResult:
    """Readings decoded from a payload, and dead letters for what could not be."""

    readings: ReadingBatch
    errors: list[DeadLetter]


@runtime_checkable
class Codec(Protocol):
    """Decode payloads into readings; encode readings into payloads.

    ``decode`` must not raise for any input: every problem becomes a dead letter whose reason
    names what is wrong (the field, the record index, the expected form).
    """

    name: ClassVar[str]

    def decode(self, payload: bytes, context: DecodeContext) -> DecodeResult: ...

    def decode_many(self, payloads: Sequence[tuple[bytes, DecodeContext]]) -> DecodeResult:
        """Decode many payloads into one batch (what the dataflow calls); never raises."""
        ...

    def encode(self, readings: ReadingBatch) -> bytes: ...
