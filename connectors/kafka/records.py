"""Kafka records to payloads: the pure part of the source, tested without a broker.

:class:`RecordMapper` turns the messages of one ``consume()`` call on one partition into the
payloads of a :class:`~dte_stream.batches.RawBatch`, each with its
:class:`~dte_stream.codecs.base.DecodeContext` (``kafka://BROKERS/TOPIC/PARTITION@OFFSET``, the
key as twin id, the record timestamp as receive time), and into dead letters for records that
cannot be payloads (no value, too large, a per-record driver error). It is the per-record hot
path of the source: one loop, no per-record allocation beyond the context.

>>> class Msg:  # the few methods of confluent_kafka.Message the mapper calls
...     def __init__(self, offset, key, value):
...         self._o, self._k, self._v = offset, key, value
...     def error(self): return None
...     def offset(self): return self._o
...     def key(self): return self._k
...     def value(self): return self._v
...     def timestamp(self): return (1, 1_700_000_000_000)
>>> mapper = RecordMapper("127.0.0.1:9092", "sensors", 0, key_is_twin_id=True, max_payload_bytes=100)
>>> out = mapper.map([Msg(7, b"pump-1", b'{"v": 1}'), Msg(8, b"pump-2", None)])
>>> [(p, c.source, c.twin_id, c.received_ns) for p, c in out.payloads]
[(b'{"v": 1}', 'kafka://127.0.0.1:9092/sensors/0@7', 'pump-1', 1700000000000000000)]
>>> [d.reason for d in out.errors], out.next_offset
(['Kafka record has no value (a null or tombstone record)'], 9)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, Message

from dte_stream.batches import DeadLetter
from dte_stream.codecs.base import DecodeContext, PayloadBatch
from dte_stream.times import now_ns

__all__ = [
    "DEAD_LETTER_RAW_BYTES",
    "RECORD_ERRORS",
    "KafkaPayloads",
    "MappedRecords",
    "RecordLike",
    "RecordMapper",
    "new_context",
]

#: How much of an oversize record a dead letter keeps.
DEAD_LETTER_RAW_BYTES = 4096
_NS_PER_MS = 1_000_000
_EOF = KafkaError._PARTITION_EOF
#: Driver errors about one record (it is unreadable): that record becomes a dead letter. Every
#: other error is about the partition or the connection and never skips an offset.
RECORD_ERRORS = frozenset(
    {
        KafkaError._BAD_MSG,
        KafkaError._BAD_COMPRESSION,
        KafkaError._KEY_DESERIALIZATION,
        KafkaError._VALUE_DESERIALIZATION,
        KafkaError.INVALID_RECORD,
    }
)


def _context_factory() -> Callable[[str, str | None, int, int], DecodeContext]:
    """A fast ``DecodeContext(source, twin_id, None, received_ns, max_payload_bytes)``.

    The source builds one context per record: the frozen dataclass's ``__init__`` (about
    1 us here) is a third of the source's per-record cost. Its slots are set directly through
    their descriptors instead, which is what ``__init__`` does minus the name lookups. If
    :class:`DecodeContext` ever changes shape, the plain constructor is used.
    """
    fields = ("source", "twin_id", "channel", "received_ns", "max_payload_bytes")
    if getattr(DecodeContext, "__slots__", None) != fields:  # pragma: no cover - a changed contract

        def plain(source: str, twin_id: str | None, received_ns: int, limit: int) -> DecodeContext:
            return DecodeContext(source, twin_id, None, received_ns, limit)

        return plain
    new = object.__new__
    set_source, set_twin, set_channel, set_received, set_limit = (
        getattr(DecodeContext, name).__set__ for name in fields
    )

    def fast(source: str, twin_id: str | None, received_ns: int, limit: int) -> DecodeContext:
        context: DecodeContext = new(DecodeContext)
        set_source(context, source)
        set_twin(context, twin_id)
        set_channel(context, None)
        set_received(context, received_ns)
        set_limit(context, limit)
        return context

    return fast


#: Builds the context of one record (see :func:`_context_factory`).
new_context = _context_factory()


class RecordLike(Protocol):
    """The part of ``confluent_kafka.Message`` the mapper reads."""

    def error(self) -> KafkaError | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def timestamp(self) -> tuple[int, int]: ...


class KafkaPayloads(PayloadBatch):
    """The values of consumed records as a :class:`PayloadBatch`; contexts made on demand.

    Holds the records themselves, so that the offset (for the source text), the key (the
    twin id) and the timestamp (the receive time) of a record are read only when a decoder
    needs them: a payload carrying its own twin id and time needs none of them.
    """

    __slots__ = ("_prefix", "_records", "_use_key", "_wall_ns")

    def __init__(
        self,
        records: Sequence[RecordLike],
        values: list[bytes],
        prefix: str,
        *,
        key_is_twin_id: bool,
        max_payload_bytes: int,
        wall_ns: int,
    ) -> None:
        super().__init__(values, max_payload_bytes)
        self._records = records
        self._prefix = prefix
        self._use_key = key_is_twin_id
        self._wall_ns = wall_ns

    def twin_id(self, index: int) -> str | None:
        if not self._use_key:
            return None
        key = self._records[index].key()
        if not key:
            return None
        try:
            return key.decode()
        except UnicodeDecodeError:
            return None

    def channel(self, index: int) -> str | None:
        return None

    def received_ns(self, index: int) -> int:
        ts_type, ts_ms = self._records[index].timestamp()
        return ts_ms * _NS_PER_MS if ts_type != TIMESTAMP_NOT_AVAILABLE and ts_ms >= 0 else self._wall_ns

    def context(self, index: int) -> DecodeContext:
        offset = self._records[index].offset()
        return new_context(
            f"{self._prefix}{offset}", self.twin_id(index), self.received_ns(index), self.max_payload_bytes
        )


@dataclass(slots=True)
class MappedRecords:
    """What one ``consume()`` call gave: payloads, dead letters, and where to read next.

    ``next_offset`` is the offset after the last record taken (None when none was);
    ``at_end`` is True when the partition's end was reached (a partition EOF event, or the
    ``end_offset`` given to :meth:`RecordMapper.map`); ``events`` are the driver errors that
    belong to no record (the source decides whether they are fatal).
    """

    payloads: list[tuple[bytes, DecodeContext]] | KafkaPayloads = field(default_factory=list)
    errors: list[DeadLetter] = field(default_factory=list)
    next_offset: int | None = None
    at_end: bool = False
    events: list[KafkaError] = field(default_factory=list)


class RecordMapper:
    """Maps the records of one Kafka partition to payloads and dead letters (see the module)."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        partition: int,
        *,
        key_is_twin_id: bool,
        max_payload_bytes: int,
    ) -> None:
        self.prefix = f"kafka://{bootstrap_servers}/{topic}/{partition}@"
        self.key_is_twin_id = key_is_twin_id
        self.max_payload_bytes = max_payload_bytes

    def _map_clean(self, messages: Sequence[RecordLike], end_offset: int | None) -> MappedRecords | None:
        """The bulk path of :meth:`map`, or None when a record needs a look of its own."""
        try:  # consumed records: Message's own methods through map, no Python frame per record
            if type(messages[0]) is not Message:
                raise TypeError
            consumed = cast("Sequence[Any]", messages)
            if any(map(Message.error, consumed)):
                return None
            values: list[bytes | None] = list(map(Message.value, consumed))
        except TypeError:  # records of another class (tests' stand-ins), or of more than one
            if any([m.error() for m in messages]):  # noqa: C419 - a list is faster than a generator
                return None
            values = [m.value() for m in messages]
        last = messages[-1].offset()
        if last is None or last < 0 or (end_offset is not None and last >= end_offset):
            return None
        if None in values:
            return None
        limit = self.max_payload_bytes
        if sum(map(len, values)) > limit and max(map(len, values)) > limit:  # type: ignore[arg-type]
            return None  # (a sum within the limit is cheaper to find than the largest size)
        payloads = KafkaPayloads(
            messages,
            values,  # type: ignore[arg-type]  # no None: checked above
            self.prefix,
            key_is_twin_id=self.key_is_twin_id,
            max_payload_bytes=self.max_payload_bytes,
            wall_ns=now_ns(),
        )
        at_end = end_offset is not None and last + 1 >= end_offset
        return MappedRecords(payloads, [], last + 1, at_end)

    def source_of(self, offset: int | None) -> str:
        """The source text of a record: ``kafka://BROKERS/TOPIC/PARTITION@OFFSET``."""
        return f"{self.prefix}{offset if offset is not None and offset >= 0 else '?'}"

    def map(self, messages: Sequence[RecordLike], end_offset: int | None = None) -> MappedRecords:
        """Map ``messages`` (in offset order); records at or past ``end_offset`` are left unread.

        The common case, records that are all fine (no driver error, a value within the size
        limit, none past ``end_offset``), is mapped in bulk into :class:`KafkaPayloads`
        without a Python step per record; anything else goes record by record.
        """
        if messages:
            fast = self._map_clean(messages, end_offset)
            if fast is not None:
                return fast
        out = MappedRecords()
        payloads: list[tuple[bytes, DecodeContext]] = []
        out.payloads = payloads
        prefix = self.prefix
        limit = self.max_payload_bytes
        use_key = self.key_is_twin_id
        make_context = new_context
        wall_ns = now_ns()
        last = -1
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.code() == _EOF:
                    out.at_end = True
                    continue
                offset = msg.offset()
                if error.code() not in RECORD_ERRORS or offset is None or offset < 0:
                    out.events.append(error)
                    continue
                value = msg.value()
                out.errors.append(
                    DeadLetter(
                        f"{prefix}{offset}",
                        f"Kafka error on this record: {error.str()}",
                        value or b"",
                        wall_ns,
                    )
                )
                last = offset
                continue
            offset = msg.offset() or 0
            if end_offset is not None and offset >= end_offset:
                out.at_end = True
                break
            last = offset
            value = msg.value()
            if value is None:
                out.errors.append(
                    DeadLetter(
                        f"{prefix}{offset}",
                        "Kafka record has no value (a null or tombstone record)",
                        b"",
                        wall_ns,
                    )
                )
                continue
            if len(value) > limit:
                out.errors.append(
                    DeadLetter(
                        f"{prefix}{offset}",
                        f"Kafka record of {len(value)} bytes is larger than max_payload_bytes={limit} "
                        f"(the first {min(len(value), DEAD_LETTER_RAW_BYTES)} bytes are kept)",
                        value[:DEAD_LETTER_RAW_BYTES],
                        wall_ns,
                    )
                )
                continue
            twin_id = None
            if use_key:
                key = msg.key()
                if key:
                    try:
                        twin_id = key.decode()
                    except UnicodeDecodeError:
                        twin_id = None
            ts_type, ts_ms = msg.timestamp()
            received = ts_ms * _NS_PER_MS if ts_type != TIMESTAMP_NOT_AVAILABLE and ts_ms >= 0 else wall_ns
            payloads.append((value, make_context(f"{prefix}{offset}", twin_id, received, limit)))
        if last >= 0:
            out.next_offset = last + 1
        if end_offset is not None and out.next_offset is not None and out.next_offset >= end_offset:
            out.at_end = True
        return out
