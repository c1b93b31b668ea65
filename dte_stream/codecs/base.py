"""The codec contract: bytes in, readings and dead letters out, never an exception.

A codec turns one payload (an MQTT message, a Kafka record, a line of a file) into a
:class:`DecodeResult`: the good readings as a :class:`~dte_stream.readings.ReadingBatch` and
one :class:`~dte_stream.readings.DeadLetter` per part that could not be decoded or validated.
A payload of many records may yield both: the good records are kept, each bad one is dead-lettered
with its index and reason. ``encode`` is the inverse, used by the simulator and the tests.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, overload, runtime_checkable

from dte_stream.readings import DeadLetter, ReadingBatch
from dte_stream.times import now_ns

__all__ = ["MAX_PAYLOAD_BYTES", "Codec", "ContextPayloads", "DecodeContext", "DecodeResult", "PayloadBatch"]

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


_Pair = tuple[bytes, "DecodeContext"]


class PayloadBatch(Sequence[tuple[bytes, DecodeContext]]):
    """Payloads of one source read, as columns: what a codec's batch fast path reads.

    A sequence of ``(payload, context)`` pairs like any other, but the payloads are one list
    (``values``) and the context of each is made only when asked for: a source that reads
    thousands of records per call (Kafka) does not build a :class:`DecodeContext` per record
    when the payloads carry their own twin ids and times, which is the common case. Every
    payload shares ``max_payload_bytes``. Subclasses say where each payload came from.

    >>> batch = ContextPayloads([(b"1.5", DecodeContext("a", twin_id="t", channel="c"))])
    >>> batch.values, batch.twin_id(0), batch[0][1].source
    ([b'1.5'], 't', 'a')
    """

    __slots__ = ("max_payload_bytes", "values")

    def __init__(self, values: list[bytes], max_payload_bytes: int) -> None:
        self.values = values
        self.max_payload_bytes = max_payload_bytes

    def context(self, index: int) -> DecodeContext:
        """The full context of payload ``index``."""
        raise NotImplementedError

    def twin_id(self, index: int) -> str | None:
        """The twin id the context gives payload ``index`` (None: none)."""
        return self.context(index).twin_id

    def channel(self, index: int) -> str | None:
        """The channel the context gives payload ``index`` (None: none)."""
        return self.context(index).channel

    def received_ns(self, index: int) -> int:
        """When payload ``index`` was received (the time of readings that carry none)."""
        return self.context(index).received_ns

    def __len__(self) -> int:
        return len(self.values)

    @overload
    def __getitem__(self, index: int) -> tuple[bytes, DecodeContext]: ...
    @overload
    def __getitem__(self, index: slice) -> list[tuple[bytes, DecodeContext]]: ...
    def __getitem__(
        self, index: int | slice
    ) -> tuple[bytes, DecodeContext] | list[tuple[bytes, DecodeContext]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self.values)
        return self.values[index], self.context(index)

    def __iter__(self) -> Iterator[tuple[bytes, DecodeContext]]:
        for index, value in enumerate(self.values):
            yield value, self.context(index)

    def __reduce__(self) -> tuple[type[list[_Pair]], tuple[list[_Pair]]]:
        # Pickled (sent to another worker) as the plain list of pairs: every context is made.
        return list, (list(self),)


class ContextPayloads(PayloadBatch):
    """A :class:`PayloadBatch` over ready ``(payload, context)`` pairs (tests, small sources)."""

    __slots__ = ("_contexts",)

    def __init__(self, pairs: Sequence[tuple[bytes, DecodeContext]]) -> None:
        limit = min((c.max_payload_bytes for _, c in pairs), default=MAX_PAYLOAD_BYTES)
        super().__init__([p for p, _ in pairs], limit)
        self._contexts = [c for _, c in pairs]

    def context(self, index: int) -> DecodeContext:
        return self._contexts[index]


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
