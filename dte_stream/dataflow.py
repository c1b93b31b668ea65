"""The Bytewax wiring: a dataflow spec becomes a Bytewax ``Dataflow``.

This is the one module that knows Bytewax operators (sources and sinks implement Bytewax's
contracts in their own modules). The graph, with stable step ids (they are recovery keys)::

    source_<name> ─▶ [decode_<name>] ─▶ merge_sources ─▶ count_in ─▶ route ─▶ split_by_shard
        ─▶ twin_bank (stateful_batch, key = shard, a TwinShard) ─▶ estimate_batches ─▶ sink_<name>
    source, decode and route errors, readings too late for a twin ─▶ dead_letters (file) /
        dead_letters_<kind>_<i>
    alert events ─▶ alert_log (local store), alert_log_<influxdb sink>, alert_notifiers

Everything about twins, alerts and time is in :class:`~dte_stream.twins.shard.TwinShard`;
:class:`_ShardLogic` only translates Bytewax's stateful-logic calls into the shard's.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, Sink, StatelessSinkPartition
from bytewax.recovery import RecoveryConfig, init_db_dir

from dte_stream.alerts.store import AckInbox
from dte_stream.batches import AlertEvent, DeadLetter, EstimateBatch, RawBatch, SourceBatch
from dte_stream.codecs import get_codec
from dte_stream.connectors.alerting.sink import NotifierSink
from dte_stream.connectors.file.source import FileSource
from dte_stream.connectors.influxdb import InfluxDBSink
from dte_stream.connectors.influxdb.alerts import InfluxDBAlertSink
from dte_stream.connectors.kafka import KafkaDeadLetterSink, KafkaSink, KafkaSource
from dte_stream.connectors.mqtt import MqttDeadLetterSink, MqttSink, MqttSource
from dte_stream.connectors.simulator.source import SimulatorSource
from dte_stream.errors import ConfigError
from dte_stream.metrics import METRICS
from dte_stream.placement import ClusterPlan
from dte_stream.readiness import READINESS
from dte_stream.reload import LiveSpec
from dte_stream.spec.influxdb import InfluxDBSinkSpec
from dte_stream.spec.kafka import KafkaDeadLetterSinkSpec, KafkaSinkSpec, KafkaSourceSpec
from dte_stream.spec.model import DataflowSpec, FileSourceSpec, LocalStoreSinkSpec, SimulatorSourceSpec
from dte_stream.spec.mqtt import MqttDeadLetterSinkSpec, MqttSinkSpec, MqttSourceSpec
from dte_stream.spec.view import KafkaViewSpec
from dte_stream.store.sink import DeadLetterOutput, DeadLetterSink, LocalStoreSink
from dte_stream.times import NS_PER_S, now_ns
from dte_stream.twins.routing import Router, RouteResult, TypedBatch, use_shard_keys
from dte_stream.twins.shard import AckSource, InputClock, ShardUpdate, TwinShard
from dte_stream.twins.snapshot_log import SnapshotLog
from dte_stream.view.hub import ViewHub
from dte_stream.view.publisher import ViewPublisher

__all__ = ["build_flow", "recovery_config", "run_flow"]

#: Called with each shard as it snapshots (once per epoch): the twin state view hooks in here.
EpochHook = Callable[[TwinShard], None]

#: The twin view of each dataflow built here (by ``id``), closed by :func:`run_flow` at its end.
_VIEW_HUBS: dict[int, ViewHub] = {}


class _ShardLogic(StatefulBatchLogic[TypedBatch, ShardUpdate, dict[str, Any]]):
    """Bytewax keyed state of one shard: each Bytewax call is one :class:`TwinShard` call.

    Besides, it hands every update to the shard's twin view publishers (:mod:`dte_stream.view`,
    one per twin type; they pace their own writes) and forces a write at each epoch's end.
    """

    def __init__(
        self,
        shard: TwinShard,
        view: ViewHub | None,
        on_epoch: EpochHook | None,
        log: SnapshotLog | None = None,
    ) -> None:
        self.shard = shard
        self.log = log  # incremental snapshots (None: full ones)
        self.view = view
        self.publishers: dict[str, ViewPublisher] = {}
        self.on_epoch = on_epoch
        if view is not None:
            me = weakref.ref(self)  # no cycle: the view ends when this is dropped
            shard.on_evicted = lambda twin_type, ids: _evicted(me, twin_type, ids)
            view.attach(self)

    def on_batch(self, values: list[TypedBatch]) -> tuple[Iterable[ShardUpdate], bool]:
        pid = os.getpid()
        remote = sum(len(batch) for batch in values if batch.origin not in (0, pid))
        if remote:  # routed by another process of the cluster: it crossed processes
            METRICS.add("readings_from_other_processes", remote)
        started = time.perf_counter()
        update = self.shard.on_batch(values)
        METRICS.observe("batch_seconds", time.perf_counter() - started)
        return self._published(update), StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[ShardUpdate], bool]:
        return self._published(self.shard.on_timer()), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[ShardUpdate], bool]:
        out = self._published(self.shard.on_eof())
        for twin_type, publisher in self.publishers.items():  # the input ended: the view gets all of it
            publisher.finish(self.shard.banks[twin_type], self.shard.alert_engines.get(twin_type), now_ns())
        if self.view is not None:
            self.view.finished(self)  # the last shard to finish closes the view
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        due = [d for d in (self.shard.next_due(), *(p.due_ns() for p in self.publishers.values())) if d]
        return datetime.fromtimestamp(min(due) / 1e9, tz=UTC) if due else None

    def snapshot(self) -> dict[str, Any]:
        self._published(ShardUpdate(), force=True)
        if self.on_epoch is not None:
            self.on_epoch(self.shard)
        if self.view is not None:
            self.view.follow()  # after a reload: the new twin types for the API
        started = time.perf_counter()
        snap = self.log.snapshot(self.shard) if self.log is not None else self.shard.snapshot()
        METRICS.observe("snapshot_seconds", time.perf_counter() - started)
        size = self.log.last_written if self.log is not None else _nbytes(snap)
        METRICS.set_gauge("snapshot_bytes", self.shard.key, size)
        return snap

    def _published(self, update: ShardUpdate, *, force: bool = False) -> list[ShardUpdate]:
        if self.view is not None:
            for twin_type, bank_update in update.per_type().items():
                if twin_type not in self.publishers:
                    self.publishers[twin_type] = self.view.publisher()
                self.publishers[twin_type].note(bank_update)
            for twin_type, publisher in self.publishers.items():
                bank, engine = self.shard.banks[twin_type], self.shard.alert_engines.get(twin_type)
                publisher.publish(bank, engine, now_ns(), force=force)
        return [update]

    def _evicted(self, twin_type: str, twin_ids: list[str]) -> None:
        publisher = self.publishers.get(twin_type)
        if publisher is not None:
            publisher.evicted(twin_ids)


def _evicted(logic: weakref.ref[_ShardLogic], twin_type: str, twin_ids: list[str]) -> None:
    alive = logic()
    if alive is not None:
        alive._evicted(twin_type, twin_ids)


def _nbytes(value: object) -> int:
    """About how many bytes a snapshot holds (arrays and byte strings; other leaves count 8)."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, bytes | str):
        return len(value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_nbytes(v) for v in value)
    return 8


def _decode(raw: RawBatch) -> tuple[SourceBatch, list[DeadLetter]]:
    result = get_codec(raw.codec).decode_many(raw.payloads)
    METRICS.add("payloads_in", len(raw.payloads), source=raw.source)
    return SourceBatch(raw.source, result.readings, raw.twin_type), [*raw.errors, *result.errors]


def _count_decode_errors(decoded: tuple[SourceBatch, list[DeadLetter]]) -> list[DeadLetter]:
    letters = decoded[1]
    if letters:
        METRICS.add_reasons("decode_errors", (d.reason for d in letters), source=decoded[0].source)
    return _count_errors(letters, "decode")


def _count_errors(letters: list[DeadLetter], stage: str) -> list[DeadLetter]:
    if letters:
        METRICS.add_reasons("dead_letters", (d.reason for d in letters), stage=stage)
    return letters


def _observe_lag(step_id: str, item: tuple[str, EstimateBatch]) -> None:
    """End-to-end lag: wall time as the batch goes to the sinks minus its newest event time."""
    batch = item[1]
    lag = max(0.0, (now_ns() - int(batch.time_ns.max())) / NS_PER_S)
    METRICS.observe("end_to_end_lag_seconds", lag)
    METRICS.set_gauge("end_to_end_lag_last", "", lag)
    READINESS.observe_lag(lag)


class _StartedProbe(DynamicSink[Any]):
    """Takes nothing; Bytewax builds it with the other sinks, which tells /readyz the dataflow runs."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[Any]:
        READINESS.ok("dataflow", "running")
        return _NoPartition()


class _NoPartition(StatelessSinkPartition[Any]):
    def write_batch(self, items: list[Any]) -> None:
        pass


def _keyed_estimates(kv: tuple[str, ShardUpdate]) -> list[tuple[str, EstimateBatch]]:
    return [(kv[0], b) for b in kv[1].estimates if len(b)]


def build_flow(
    spec: DataflowSpec,
    *,
    inputs: dict[str, Source[SourceBatch]] | None = None,
    outputs: dict[str, Sink[EstimateBatch]] | None = None,
    dead_letter_output: Sink[DeadLetter] | None = None,
    processes: int = 1,
    one_host: bool = True,
    on_epoch: EpochHook | None = None,
    recovery_dir: Path | None = None,
    live: LiveSpec | None = None,
) -> Dataflow:
    """Build the Bytewax dataflow of ``spec``. Connects to nothing until it runs.

    ``inputs``, ``outputs`` and ``dead_letter_output`` replace the spec's sources, sinks and
    dead-letter targets (by step name): tests feed and collect through them. ``processes``
    is the cluster size (partitioned sinks get one partition per worker of every process) and
    ``one_host`` whether all its processes share this host and ``recovery_dir`` (then shards
    snapshot incrementally, as one process does; on several hosts in full). A cluster places
    its shards beside the Kafka partitions that feed them (:mod:`dte_stream.cluster_plan`: it
    lists those partitions, the one connection made here). ``on_epoch`` is
    called with every shard as it snapshots; ``recovery_dir`` is where MQTT spools live unless
    their spec names a folder. ``live`` holds the running spec for live reloads
    (:mod:`dte_stream.reload`): the shards and the notifiers follow its accepted changes; it
    must start with ``spec``.
    """
    live = live if live is not None else LiveSpec(spec)
    flow = Dataflow(spec.name)
    keyed_sources: list[Any] = []  # Kafka sources keyed by twin id: a cluster places shards by them
    readings: list[Stream[SourceBatch]] = []
    dead: list[Stream[DeadLetter]] = []
    for name, source_override in (inputs or {}).items():
        readings.append(op.input(f"source_{name}", flow, source_override))
    for source in [] if inputs is not None else spec.sources:
        if isinstance(source, SimulatorSourceSpec):
            channels = spec.twin_type(source.twin_type).channel_names()
            readings.append(op.input(f"source_{source.name}", flow, SimulatorSource(source, channels)))
        else:
            raw_source = _raw_source(source, spec.name, recovery_dir)
            if isinstance(source, KafkaSourceSpec) and source.key_is_twin_id:
                keyed_sources.append(raw_source)
            raw = op.input(f"source_{source.name}", flow, raw_source)
            decoded = op.map(f"decode_{source.name}", raw, _decode)
            readings.append(op.map(f"decoded_{source.name}", decoded, lambda d: d[0]))
            dead.append(op.flat_map(f"decode_errors_{source.name}", decoded, _count_decode_errors))
    plan = _cluster_plan(spec, processes, recovery_dir, keyed_sources)
    use_shard_keys(plan.keys if plan is not None else ())  # the router's and the shards' keys
    merged = op.merge("merge_sources", *readings) if len(readings) > 1 else readings[0]
    merged = op.filter("non_empty", merged, lambda b: len(b.readings) > 0)

    clock = InputClock()

    def count_in(batch: SourceBatch) -> SourceBatch:
        METRICS.add("readings_in", len(batch.readings), source=batch.source)
        clock.advance(int(batch.readings.time_ns.max()))
        return batch

    merged = op.map("count_in", merged, count_in)
    router = Router(spec)
    routed: Stream[RouteResult] = op.map(
        "route", merged, lambda b: router.route(b.readings, b.source, b.twin_type)
    )
    dead.append(op.flat_map("route_errors", routed, lambda r: _count_errors(r.errors, "route")))
    keyed = op.flat_map("split_by_shard", routed, lambda r: r.routed)
    data_dir = spec.data_dir()
    acks: AckSource | None = AckInbox(data_dir) if data_dir is not None else None
    if isinstance(spec.view, KafkaViewSpec) and outputs is None:  # acknowledgements from other hosts
        from dte_stream.connectors.kafka.view_acks import KafkaAckInbox, MergedAcks

        acks = MergedAcks(acks, KafkaAckInbox.open(spec.view, data_dir))
    view = ViewHub(spec, live) if outputs is None else None  # tests and replays leave the view alone
    if view is not None:
        _VIEW_HUBS[id(flow)] = view  # run_flow closes it when the dataflow ends

    def shard_logic(resume: dict[str, Any] | None) -> _ShardLogic:
        incremental = live.spec.engine.snapshots == "incremental" and (processes == 1 or one_host)
        log, resume = SnapshotLog.start(recovery_dir, incremental, resume, processes=processes)
        shard = TwinShard.restore(live.spec, None, resume, clock=clock, acks=acks, live=live)
        if log is not None:
            log.attach(shard)
        return _ShardLogic(shard, view, on_epoch, log)

    updates = op.stateful_batch("twin_bank", keyed, shard_logic)
    keyed_batches = op.flat_map("estimate_batches", updates, _keyed_estimates)
    batches = op.map("unkeyed_batches", keyed_batches, lambda kv: kv[1])
    dead.append(op.flat_map("too_late", updates, lambda kv: _count_errors(kv[1].rejected, "twin_bank")))
    op.inspect("end_to_end_lag", keyed_batches, _observe_lag)
    if live.alert_path:  # alert rules or notifiers: rules and notifiers can then change live
        _alert_outputs(
            spec, op.flat_map("alert_events", updates, lambda kv: kv[1].alerts), outputs is not None, live
        )
    for name, sink_override in (outputs or {}).items():
        op.output(f"sink_{name}", batches, sink_override)
    for sink in [] if outputs is not None else spec.sinks:
        if isinstance(sink, LocalStoreSinkSpec):
            rows = op.map(f"store_rows_{sink.name}", batches, lambda b: ("readings", b))
            store = LocalStoreSink(
                sink.data_dir,
                flush_rows=sink.flush_rows,
                flush_seconds=sink.flush_seconds,
                retention=sink.retention,
                compact_min_files=sink.compact_min_files,
                compact_file_bytes=sink.compact_file_bytes,
                housekeeping_interval=sink.housekeeping_interval,
            )
            op.output(f"sink_{sink.name}", rows, store)
        elif isinstance(sink, InfluxDBSinkSpec):
            sink_letters = DeadLetterOutput(
                spec.dead_letter_path(), max_bytes=spec.dead_letters.max_bytes, keep=spec.dead_letters.keep
            )
            routes = plan.writer_routes if plan is not None else None  # each shard's own worker
            influx = InfluxDBSink(sink, sink_letters).per_epoch(spec.engine.workers * processes, routes)
            op.output(f"sink_{sink.name}", keyed_batches, influx)
        else:
            op.output(f"sink_{sink.name}", batches, _estimate_sink(sink, spec.name))
    letters = op.merge("merge_dead_letters", *dead) if len(dead) > 1 else dead[0]
    op.output("started", op.filter("nothing", letters, lambda _: False), _StartedProbe())
    if dead_letter_output is not None:
        op.output("dead_letters", letters, dead_letter_output)
        return flow
    if spec.dead_letters.writes_file():
        dead_file = DeadLetterSink(
            spec.dead_letter_path(), max_bytes=spec.dead_letters.max_bytes, keep=spec.dead_letters.keep
        )
        op.output("dead_letters", letters, dead_file)
    for i, target in enumerate(spec.dead_letters.sinks):
        op.output(f"dead_letters_{target.kind}_{i}", letters, _dead_letter_sink(target, spec.name))
    return flow


def _cluster_plan(
    spec: DataflowSpec, processes: int, recovery_dir: Path | None, keyed_sources: list[Any]
) -> ClusterPlan | None:
    """Where a cluster's shards and writers go (None for one process: the usual keys)."""
    if processes <= 1:
        return None
    from dte_stream.cluster_plan import cluster_plan

    return cluster_plan(spec, processes, recovery_dir, keyed_sources)


def _alert_outputs(spec: DataflowSpec, events: Stream[AlertEvent], replay: bool, live: LiveSpec) -> None:
    """Alert events to the alert log (local store table ``alerts``, InfluxDB) and the notifiers."""
    from dte_stream.alerts.log import ALERTS_TABLE, AlertRows

    def count(event: AlertEvent) -> AlertEvent:
        METRICS.add(f"alerts_{event.state}")
        return event

    events = op.map("count_alerts", events, count)
    if replay:
        return
    data_dir = spec.data_dir()
    if data_dir is not None:
        # acknowledgements are logged by whoever acknowledges (dte_stream.alerts.store.acknowledge)
        logged = op.filter("alert_log_events", events, lambda e: e.state != "acknowledged")
        rows = op.map("alert_rows", logged, lambda e: (ALERTS_TABLE, AlertRows([e])))
        op.output("alert_log", rows, LocalStoreSink(data_dir, flush_rows=1_000, flush_seconds=1.0))
    for sink in spec.sinks:
        if isinstance(sink, InfluxDBSinkSpec):
            op.output(f"alert_log_{sink.name}", events, InfluxDBAlertSink(sink))
    op.output("alert_notifiers", events, NotifierSink(spec.notifiers, live=live))


def _raw_source(
    spec: FileSourceSpec | KafkaSourceSpec | MqttSourceSpec, flow_name: str, recovery_dir: Path | None
) -> Source[RawBatch]:
    """The Bytewax source of a spec source that delivers payloads to decode."""
    if isinstance(spec, KafkaSourceSpec):
        return KafkaSource(spec)
    if isinstance(spec, MqttSourceSpec):
        return MqttSource(spec, flow_name=flow_name, recovery_dir=recovery_dir)
    return FileSource(spec)


def _estimate_sink(spec: KafkaSinkSpec | MqttSinkSpec, flow_name: str) -> Sink[EstimateBatch]:
    """The Bytewax sink of a spec sink that takes estimate batches."""
    if isinstance(spec, MqttSinkSpec):
        return MqttSink(spec, flow_name=flow_name)
    return KafkaSink(spec)


def _dead_letter_sink(
    spec: KafkaDeadLetterSinkSpec | MqttDeadLetterSinkSpec, flow_name: str
) -> Sink[DeadLetter]:
    if isinstance(spec, MqttDeadLetterSinkSpec):
        return MqttDeadLetterSink(spec, flow_name=flow_name)
    return KafkaDeadLetterSink(spec)


def recovery_config(
    recovery_dir: Path, partitions: int = 1, *, process_id: int | None = None, processes: int = 1
) -> RecoveryConfig:
    """Bytewax recovery in ``recovery_dir``, created (with ``partitions`` stores) on first use.

    The shards' state and every source's position (Kafka offsets, file offsets, simulator
    ticks) are snapshotted there at the end of each epoch; a restart with the same folder
    resumes from the last complete epoch. A process of a cluster keeps its own partition in
    ``recovery_dir/process-I`` (:func:`~dte_stream.cli.cluster.cluster_recovery_dir`).
    """
    if process_id is not None:
        from dte_stream.cli.cluster import cluster_recovery_dir

        return RecoveryConfig(str(cluster_recovery_dir(recovery_dir, process_id, processes)))  # type: ignore[no-untyped-call]
    recovery_dir.mkdir(parents=True, exist_ok=True)
    if not any(recovery_dir.glob("part-*.sqlite3")):
        if any(recovery_dir.glob("process-*")):
            raise ConfigError(
                f"--recovery-dir {recovery_dir} holds the state of a cluster of processes; "
                "run it with as many (--processes), or use a fresh --recovery-dir"
            )
        init_db_dir(recovery_dir, partitions)  # type: ignore[no-untyped-call]  # untyped in bytewax's stub
    return RecoveryConfig(str(recovery_dir))  # type: ignore[no-untyped-call]


def run_flow(
    spec: DataflowSpec,
    flow: Dataflow | None = None,
    recovery_dir: Path | None = None,
    *,
    addresses: list[str] | None = None,
    process_id: int | None = None,
) -> None:
    """Run the dataflow with ``spec.engine.workers`` worker threads; blocks.

    Alone, or as process ``process_id`` of the Bytewax cluster at ``addresses`` (every
    process runs the same spec and connects to the others; see :mod:`dte_stream.cli.cluster`).
    """
    from bytewax.run import cli_main

    from dte_stream.cli.cluster import await_lower_processes, one_host_cluster

    processes = len(addresses) if addresses is not None else 1
    if flow is None:  # built first: a cluster records its shard keys in a fresh recovery folder
        one_host = addresses is None or one_host_cluster(addresses)
        flow = build_flow(spec, processes=processes, one_host=one_host, recovery_dir=recovery_dir)
    recovery = None
    if recovery_dir is not None:
        recovery = recovery_config(recovery_dir, process_id=process_id, processes=processes)
    if addresses is not None and process_id is not None:
        await_lower_processes(addresses, process_id)  # no refused connection, no second lost
    try:
        cli_main(  # type: ignore[no-untyped-call]  # bytewax's stub leaves it unannotated
            flow,
            workers_per_process=spec.engine.workers,
            process_id=process_id,
            addresses=addresses,
            epoch_interval=timedelta(seconds=spec.engine.epoch_seconds),
            recovery_config=recovery,
        )
    finally:
        view = _VIEW_HUBS.pop(id(flow), None)
        if view is not None:
            view.close(wait=False)  # its writer process writes the last changes; the exit waits
