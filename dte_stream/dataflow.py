"""The Bytewax wiring: a dataflow spec becomes a Bytewax ``Dataflow``.

This is the one module that wires Bytewax operators (sources and sinks implement Bytewax's
contracts in their own modules). The graph, with stable step ids (they are recovery keys)::

    source_<name> ─▶ [decode_<name>] ─▶ merge_sources ─▶ count_in ─▶ route ─▶ split_by_shard
        ─▶ twin_bank (stateful_batch, key = shard, a TwinShard) ─▶ estimate_batches ─▶ sink_<name>
    source, decode and route errors, readings too late for a twin ─▶ dead_letters (file) /
        dead_letters_<kind>_<i>
    alert events ─▶ alert_log (local store), alert_log_<influxdb sink>, alert_notifiers

Everything about twins, alerts and time is in :class:`~dte_stream.twins.shard.TwinShard`;
:class:`~dte_stream.shard_logic.ShardLogic` only translates Bytewax's stateful-logic calls into
the shard's, and :mod:`dte_stream.flow_steps` holds the small steps between (decode, error counts,
lag) and the connector each spec entry becomes.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.outputs import Sink
from bytewax.recovery import RecoveryConfig, init_db_dir

from dte_stream.alerts.store import AckInbox, ack_record, acknowledge
from dte_stream.batches import AlertEvent, DeadLetter, EstimateBatch, SourceBatch
from dte_stream.connectors.alerting.sink import NotifierSink
from dte_stream.connectors.influxdb import InfluxDBSink
from dte_stream.connectors.influxdb.alerts import InfluxDBAlertSink
from dte_stream.connectors.simulator.source import SimulatorSource
from dte_stream.errors import ConfigError
from dte_stream.flow_steps import (
    StartedProbe,
    count_decode_errors,
    count_errors,
    dead_letter_sink,
    decode,
    estimate_sink,
    keyed_estimates,
    observe_lag,
    raw_source,
)
from dte_stream.metrics import METRICS
from dte_stream.placement import ClusterPlan
from dte_stream.reload import LiveSpec
from dte_stream.shard_logic import EpochHook, ShardLogic
from dte_stream.spec.influxdb import InfluxDBSinkSpec
from dte_stream.spec.kafka import KafkaSourceSpec
from dte_stream.spec.model import DataflowSpec, LocalStoreSinkSpec, SimulatorSourceSpec
from dte_stream.spec.view import KafkaViewSpec
from dte_stream.store.sink import DeadLetterOutput, DeadLetterSink, LocalStoreSink
from dte_stream.twins.routing import Router, RouteResult, use_shard_keys
from dte_stream.twins.shard import AckSource, InputClock, TwinShard
from dte_stream.twins.snapshot_log import SnapshotLog
from dte_stream.view.hub import ViewHub

__all__ = ["build_flow", "recovery_config", "run_flow"]

#: The twin view of each dataflow built here (by ``id``), closed by :func:`run_flow` at its end.
_VIEW_HUBS: dict[int, ViewHub] = {}


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
            connector = raw_source(source, spec.name, recovery_dir)
            if isinstance(source, KafkaSourceSpec) and source.key_is_twin_id:
                keyed_sources.append(connector)
            raw = op.input(f"source_{source.name}", flow, connector)
            decoded = op.map(f"decode_{source.name}", raw, decode)
            readings.append(op.map(f"decoded_{source.name}", decoded, lambda d: d[0]))
            dead.append(op.flat_map(f"decode_errors_{source.name}", decoded, count_decode_errors))
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
    dead.append(op.flat_map("route_errors", routed, lambda r: count_errors(r.errors, "route")))
    keyed = op.flat_map("split_by_shard", routed, lambda r: r.routed)
    data_dir = spec.data_dir()
    acks: AckSource | None = AckInbox(data_dir) if data_dir is not None else None
    if isinstance(spec.view, KafkaViewSpec) and outputs is None:  # acknowledgements from other hosts
        from dte_stream.connectors.kafka.view_acks import KafkaAckInbox, MergedAcks

        acks = MergedAcks(acks, KafkaAckInbox.open(spec.view, ack_record, acknowledge, data_dir))
    view = ViewHub(spec, live) if outputs is None else None  # tests and replays leave the view alone
    if view is not None:
        _VIEW_HUBS[id(flow)] = view  # run_flow closes it when the dataflow ends

    def shard_logic(resume: dict[str, Any] | None) -> ShardLogic:
        incremental = live.spec.engine.snapshots == "incremental" and (processes == 1 or one_host)
        log, resume = SnapshotLog.start(recovery_dir, incremental, resume, processes=processes)
        shard = TwinShard.restore(live.spec, None, resume, clock=clock, acks=acks, live=live)
        if log is not None:
            log.attach(shard)
        return ShardLogic(shard, view, on_epoch, log)

    updates = op.stateful_batch("twin_bank", keyed, shard_logic)
    keyed_batches = op.flat_map("estimate_batches", updates, keyed_estimates)
    batches = op.map("unkeyed_batches", keyed_batches, lambda kv: kv[1])
    dead.append(op.flat_map("too_late", updates, lambda kv: count_errors(kv[1].rejected, "twin_bank")))
    op.inspect("end_to_end_lag", keyed_batches, observe_lag)
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
            op.output(f"sink_{sink.name}", batches, estimate_sink(sink, spec.name))
    letters = op.merge("merge_dead_letters", *dead) if len(dead) > 1 else dead[0]
    op.output("started", op.filter("nothing", letters, lambda _: False), StartedProbe())
    if dead_letter_output is not None:
        op.output("dead_letters", letters, dead_letter_output)
        return flow
    if spec.dead_letters.writes_file():
        dead_file = DeadLetterSink(
            spec.dead_letter_path(), max_bytes=spec.dead_letters.max_bytes, keep=spec.dead_letters.keep
        )
        op.output("dead_letters", letters, dead_file)
    for i, target in enumerate(spec.dead_letters.sinks):
        op.output(f"dead_letters_{target.kind}_{i}", letters, dead_letter_sink(target, spec.name))
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
