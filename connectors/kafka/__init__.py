"""Kafka in and out (confluent-kafka): :class:`KafkaSource`, :class:`KafkaSink`, :class:`KafkaDeadLetterSink`.

The source reads topics partition by partition into :class:`~dte_stream.batches.RawBatch`
items (offsets in Bytewax recovery state, at-least-once); the sinks write estimates and dead
letters as JSON records. Settings: :mod:`dte_stream.spec.kafka`; guide: docs/connectors/kafka.md.
The twin state view on a compacted topic: :mod:`~dte_stream.connectors.kafka.view` (the writer
the shards publish through) and :mod:`~dte_stream.connectors.kafka.view_reader` (what ``serve
--view kafka://...`` follows); imported on use, not here.
"""

from __future__ import annotations

from dte_stream.connectors.kafka.records import RecordMapper
from dte_stream.connectors.kafka.sink import (
    KafkaDeadLetterSink,
    KafkaSink,
    dead_letter_record,
    estimate_records,
)
from dte_stream.connectors.kafka.source import KafkaSource

__all__ = [
    "KafkaDeadLetterSink",
    "KafkaSink",
    "KafkaSource",
    "RecordMapper",
    "dead_letter_record",
    "estimate_records",
]
