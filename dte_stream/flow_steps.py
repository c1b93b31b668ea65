"""The small steps that :mod:`dte_stream.dataflow` wires between sources, shards and sinks.

Decoding a raw batch into columns, counting errors by stage before they become dead letters,
the end-to-end lag, the probe that tells ``/readyz`` the dataflow runs, and the sources and
sinks that each kind of spec connector becomes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bytewax.inputs import Source
from bytewax.outputs import DynamicSink, Sink, StatelessSinkPartition

from dte_stream.batches import DeadLetter, EstimateBatch, RawBatch, SourceBatch
from dte_stream.codecs import get_codec
from dte_stream.connectors.file.source import FileSource
from dte_stream.connectors.kafka import KafkaDeadLetterSink, KafkaSink, KafkaSource
from dte_stream.connectors.mqtt import MqttDeadLetterSink, MqttSink, MqttSource
from dte_stream.metrics import METRICS
from dte_stream.readiness import READINESS
from dte_stream.spec.kafka import KafkaDeadLetterSinkSpec, KafkaSinkSpec, KafkaSourceSpec
from dte_stream.spec.model import FileSourceSpec
from dte_stream.spec.mqtt import MqttDeadLetterSinkSpec, MqttSinkSpec, MqttSourceSpec
from dte_stream.times import NS_PER_S, now_ns
from dte_stream.twins.shard import ShardUpdate

__all__ = [
    "StartedProbe",
    "count_decode_errors",
    "count_errors",
    "dead_letter_sink",
    "decode",
    "estimate_sink",
    "keyed_estimates",
    "observe_lag",
    "raw_source",
]


def decode(raw: RawBatch) -> tuple[SourceBatch, list[DeadLetter]]:
    """A consumed batch of payloads as reading columns, and the payloads its codec refused."""
    result = get_codec(raw.codec).decode_many(raw.payloads)
    METRICS.add("payloads_in", len(raw.payloads), source=raw.source)
    return SourceBatch(raw.source, result.readings, raw.twin_type), [*raw.errors, *result.errors]


def count_decode_errors(decoded: tuple[SourceBatch, list[DeadLetter]]) -> list[DeadLetter]:
    """The refused payloads of a decoded batch, counted by reason and source."""
    letters = decoded[1]
    if letters:
        METRICS.add_reasons("decode_errors", (d.reason for d in letters), source=decoded[0].source)
    return count_errors(letters, "decode")


def count_errors(letters: list[DeadLetter], stage: str) -> list[DeadLetter]:
    """``letters`` unchanged, counted in ``dte_dead_letters_total`` by reason and ``stage``."""
    if letters:
        METRICS.add_reasons("dead_letters", (d.reason for d in letters), stage=stage)
    return letters


def observe_lag(step_id: str, item: tuple[str, EstimateBatch]) -> None:
    """End-to-end lag: wall time as the batch goes to the sinks minus its newest event time."""
    batch = item[1]
    lag = max(0.0, (now_ns() - int(batch.time_ns.max())) / NS_PER_S)
    METRICS.observe("end_to_end_lag_seconds", lag)
    METRICS.set_gauge("end_to_end_lag_last", "", lag)
    READINESS.observe_lag(lag)


class StartedProbe(DynamicSink[Any]):
    """Takes nothing; Bytewax builds it with the other sinks, which tells /readyz the dataflow runs."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[Any]:
        READINESS.ok("dataflow", "running")
        return _NoPartition()


class _NoPartition(StatelessSinkPartition[Any]):
    def write_batch(self, items: list[Any]) -> None:
        pass


def keyed_estimates(kv: tuple[str, ShardUpdate]) -> list[tuple[str, EstimateBatch]]:
    """A shard's non-empty estimate batches, still keyed by the shard (the writers' routing key)."""
    return [(kv[0], b) for b in kv[1].estimates if len(b)]


def raw_source(
    spec: FileSourceSpec | KafkaSourceSpec | MqttSourceSpec, flow_name: str, recovery_dir: Path | None
) -> Source[RawBatch]:
    """The Bytewax source of a spec source that delivers payloads to decode."""
    if isinstance(spec, KafkaSourceSpec):
        return KafkaSource(spec)
    if isinstance(spec, MqttSourceSpec):
        return MqttSource(spec, flow_name=flow_name, recovery_dir=recovery_dir)
    return FileSource(spec)


def estimate_sink(spec: KafkaSinkSpec | MqttSinkSpec, flow_name: str) -> Sink[EstimateBatch]:
    """The Bytewax sink of a spec sink that takes estimate batches."""
    if isinstance(spec, MqttSinkSpec):
        return MqttSink(spec, flow_name=flow_name)
    return KafkaSink(spec)


def dead_letter_sink(
    spec: KafkaDeadLetterSinkSpec | MqttDeadLetterSinkSpec, flow_name: str
) -> Sink[DeadLetter]:
    """The Bytewax sink of a dead-letter target that is a broker topic."""
    if isinstance(spec, MqttDeadLetterSinkSpec):
        return MqttDeadLetterSink(spec, flow_name=flow_name)
    return KafkaDeadLetterSink(spec)
