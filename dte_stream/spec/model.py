"""The dataflow spec: sources, twin types and sinks, validated by pydantic.

Every model forbids unknown fields and names the allowed ones, so a typo in a spec is an
error that says what was meant, not a silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from dte_stream.spec.base import CODEC_CHOICES, Identifier, PositiveSeconds, Seconds, SpecModel, TimeNs
from dte_stream.spec.influxdb import InfluxDBSinkSpec
from dte_stream.spec.kafka import KafkaDeadLetterSinkSpec, KafkaSinkSpec, KafkaSourceSpec
from dte_stream.spec.mqtt import MqttDeadLetterSinkSpec, MqttSinkSpec, MqttSourceSpec
from dte_stream.spec.notify import NotifierList
from dte_stream.spec.twins import ChannelSpec, TwinTypeSpec
from dte_stream.spec.view import SqliteViewSpec, ViewSpec

__all__ = [
    "CODEC_CHOICES",
    "ChannelSpec",
    "DataflowSpec",
    "DeadLetterSinkSpec",
    "DeadLetterSpec",
    "EngineSpec",
    "FileSourceSpec",
    "LocalStoreSinkSpec",
    "SimulatedChannelSpec",
    "SimulatorSourceSpec",
    "SinkSpec",
    "SourceSpec",
    "TwinTypeSpec",
]


class SimulatedChannelSpec(SpecModel):
    """The signal the simulator generates for one channel."""

    mean: float = 0.0
    spread: float = Field(0.0, ge=0, description="standard deviation of the mean across twins")
    daily_amplitude: float = Field(1.0, ge=0)
    noise: float = Field(0.1, ge=0, description="standard deviation of the measurement noise")
    drift_per_day: float = 0.0


class SimulatorSourceSpec(SpecModel):
    """The built-in sensor simulator: N twins of one type with realistic signals and faults."""

    kind: Literal["simulator"]
    name: Identifier = "simulator"
    twin_type: Identifier
    twins: int = Field(100, ge=1, le=10_000_000)
    rate: float | None = Field(
        None, ge=0, description="readings per second; 0 = as fast as possible; unset = real time"
    )
    interval: PositiveSeconds = Field(1.0, description="event time between two readings of a twin")
    duration: Seconds | None = Field(None, description="wall-clock run time; unset = forever")
    ticks: int | None = Field(None, ge=1, description="readings per twin and channel, then stop")
    seed: int = 0
    start: TimeNs | None = Field(
        None,
        description="event time of the first reading (ISO 8601); unset = now (real time: when emitted)",
    )
    faults_per_twin_hour: float = Field(
        0.5, ge=0, description="mean injected faults per twin per hour of event time"
    )
    partitions: int = Field(4, ge=1, le=1024)
    channels: dict[str, SimulatedChannelSpec] = Field(
        default_factory=dict, description="signal per channel; defaults per well-known channel name"
    )
    ground_truth: Path | None = Field(None, description="JSON lines file for the injected faults")


class FileSourceSpec(SpecModel):
    """Readings from a file: JSON lines, SenML, line protocol or CSV."""

    kind: Literal["file"]
    name: Identifier = "file"
    path: Path
    codec: Literal["json", "senml", "line_protocol", "csv"] = "json"
    twin_type: Identifier | None = None
    batch_lines: int = Field(2000, ge=1, description="lines per batch (not for csv, read whole)")


SourceSpec = Annotated[
    SimulatorSourceSpec | FileSourceSpec | KafkaSourceSpec | MqttSourceSpec, Field(discriminator="kind")
]


class LocalStoreSinkSpec(SpecModel):
    """The embedded default storage: partitioned Parquet files in ``data_dir``."""

    kind: Literal["local_store"]
    name: Identifier = "local_store"
    data_dir: Path = Path("dte-data")
    flush_rows: int = Field(100_000, ge=1)
    flush_seconds: PositiveSeconds = 2.0
    retention: Seconds | None = Field(
        None, description="delete day partitions older than this (for example 30d); unset = keep all"
    )
    compact_min_files: int = Field(
        8, ge=0, description="merge a day's small files once there are this many; 0 = never"
    )
    compact_file_bytes: int = Field(64 * 2**20, ge=1, description="files from this size on are not merged")
    housekeeping_interval: PositiveSeconds = Field(60.0, description="how often retention and compaction run")


SinkSpec = Annotated[
    LocalStoreSinkSpec | KafkaSinkSpec | InfluxDBSinkSpec | MqttSinkSpec, Field(discriminator="kind")
]
DeadLetterSinkSpec = Annotated[KafkaDeadLetterSinkSpec | MqttDeadLetterSinkSpec, Field(discriminator="kind")]


class DeadLetterSpec(SpecModel):
    """Where input that cannot be decoded or validated goes, with its reason.

    By default a JSON lines file in the local store's folder (``dte-data/`` without a local
    store); with ``sinks`` (Kafka, MQTT) the dead letters go there instead, and also to ``path``
    if it is given. Points an InfluxDB sink refuses or drops always go to the file. The file
    rotates at ``max_bytes`` (``NAME.1`` ... ``NAME.<keep>``).
    """

    path: Path | None = Field(
        None, description="JSON lines file; default <data_dir>/dead_letters.jsonl (dte-data/ without a store)"
    )
    sinks: list[DeadLetterSinkSpec] = Field(default_factory=list, description="Kafka or MQTT outputs")
    max_bytes: int | None = Field(
        100 * 1024 * 1024, ge=1024, description="rotate the file at this size (bytes); null = never"
    )
    keep: int = Field(3, ge=0, le=100, description="rotated files kept (NAME.1 ... NAME.<keep>)")

    def writes_file(self) -> bool:
        return self.path is not None or not self.sinks


class EngineSpec(SpecModel):
    """How the dataflow runs: shards of the twin banks, workers, epoch length."""

    shards: int = Field(8, ge=1, le=4096, description="twin bank shards (keys of Bytewax state)")
    workers: int = Field(1, ge=1, le=64, description="Bytewax worker threads in this process")
    epoch_seconds: PositiveSeconds = Field(10.0, description="how often state is snapshotted")
    clock: Literal["wall", "event"] = Field(
        "wall",
        description="clock of stale sensors and TTLs: wall clock, or the latest event time (replays)",
    )


class DataflowSpec(SpecModel):
    """A whole dataflow: where readings come from, which twins they feed, where results go."""

    version: int = Field(
        1,
        ge=1,
        le=2**31 - 1,
        description="the spec's own version: bump it with each change; the recovery state records it",
    )
    name: Identifier
    description: str = ""
    sources: list[SourceSpec] = Field(min_length=1)
    twin_types: list[TwinTypeSpec] = Field(min_length=1)
    sinks: list[SinkSpec] = Field(min_length=1)
    dead_letters: DeadLetterSpec = Field(default_factory=DeadLetterSpec)
    engine: EngineSpec = Field(default_factory=EngineSpec)
    view: ViewSpec = Field(
        default_factory=SqliteViewSpec,
        description="where shards publish the twin state view: sqlite (this host) or kafka (docs/api.md)",
    )
    notifiers: NotifierList = Field(
        default_factory=list, description="where alert events go besides the alert log (docs/alerting.md)"
    )

    @model_validator(mode="after")
    def _check_references(self) -> DataflowSpec:
        types = {t.name for t in self.twin_types}
        if len(types) != len(self.twin_types):
            raise ValueError("twin_types: names must be unique")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"sources: names must be unique, got {names}")
        sink_names = [s.name for s in self.sinks]
        if len(set(sink_names)) != len(sink_names):
            raise ValueError(f"sinks: names must be unique (set `name` on each), got {sink_names}")
        declared = ", ".join(sorted(types))
        for i, source in enumerate(self.sources):
            if source.twin_type is not None and source.twin_type not in types:
                raise ValueError(
                    f"sources[{i}].twin_type: {source.twin_type!r} is not a twin type; declared: {declared}"
                )
            for j, sub in enumerate(getattr(source, "subscriptions", [])):
                if sub.twin_type is not None and sub.twin_type not in types:
                    raise ValueError(
                        f"sources[{i}].subscriptions[{j}].twin_type: {sub.twin_type!r} is not a twin type; "
                        f"declared: {declared}"
                    )
        return self

    def twin_type(self, name: str) -> TwinTypeSpec:
        for t in self.twin_types:
            if t.name == name:
                return t
        raise KeyError(name)

    def data_dir(self) -> Path | None:
        """The local store's folder, when the spec has a local store sink."""
        for sink in self.sinks:
            if isinstance(sink, LocalStoreSinkSpec):
                return sink.data_dir
        return None

    def dead_letter_path(self) -> Path:
        if self.dead_letters.path is not None:
            return self.dead_letters.path
        data_dir = self.data_dir()
        return (data_dir if data_dir is not None else Path("dte-data")) / "dead_letters.jsonl"
