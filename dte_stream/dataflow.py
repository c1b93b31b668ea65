"""The Bytewax wiring: a dataflow spec becomes a Bytewax ``Dataflow``.

This is the one module that knows Bytewax operators (sources and sinks implement Bytewax's
contracts in their own modules). The graph, with stable step ids (they are recovery keys)::

    source_<name> ─▶ [decode_<name>] ─▶ merge_sources ─▶ route ─▶ split_by_shard
        ─▶ twin_bank (stateful_batch, key = twin type/shard) ─▶ estimate_batches ─▶ sink_<name>
    source, decode and route errors, readings too late for a twin ─▶ dead_letters (file) /
        dead_letters_<kind>_<i>

The twin bank also wakes on a timer (stale sensors, idle-twin eviction).

Readings travel as columnar batches; each twin bank shard applies a micro-batch with one
vectorised step per round (see :mod:`dte_stream.twins.bank`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink
from bytewax.recovery import RecoveryConfig, init_db_dir

from dte_stream.alerts.rules import AlertEngine
from dte_stream.batches import AlertEvent, EstimateBatch, RawBatch, SourceBatch
from dte_stream.codecs import get_codec
from dte_stream.connectors.alerting.sink import NotifierSink
from dte_stream.connectors.file.source import FileSource
from dte_stream.connectors.influxdb import InfluxDBSink
from dte_stream.connectors.influxdb.alerts import InfluxDBAlertSink
from dte_stream.connectors.kafka import KafkaDeadLetterSink, KafkaSink, KafkaSource
from dte_stream.connectors.mqtt import MqttDeadLetterSink, MqttSink, MqttSource
from dte_stream.connectors.simulator.source import SimulatorSource
from dte_stream.errors import SpecError
from dte_stream.metrics import METRICS
from dte_stream.readings import DeadLetter
from dte_stream.spec.influxdb import InfluxDBSinkSpec
from dte_stream.spec.kafka import KafkaDeadLetterSinkSpec, KafkaSinkSpec, KafkaSourceSpec
from dte_stream.spec.model import (
    DataflowSpec,
    FileSourceSpec,
    LocalStoreSinkSpec,
    SimulatorSourceSpec,
)
from dte_stream.spec.mqtt import MqttDeadLetterSinkSpec, MqttSinkSpec, MqttSourceSpec
from dte_stream.spec.twins import TwinTypeSpec
from dte_stream.store.sink import DeadLetterSink, LocalStoreSink
from dte_stream.times import NS_PER_S, now_ns
from dte_stream.twins.bank import BankUpdate, TwinBank
from dte_stream.twins.routing import Router, RouteResult, TypedBatch, shard_key, shard_of

NEVER = -(2**63)

log = logging.getLogger(__name__)

__all__ = ["build_flow", "run_flow"]


def _decode(raw: RawBatch) -> tuple[SourceBatch, list[DeadLetter]]:
    result = get_codec(raw.codec).decode_many(raw.payloads)
    METRICS.add("payloads_in", len(raw.payloads))
    return SourceBatch(raw.source, result.readings, raw.twin_type), [*raw.errors, *result.errors]


class EventClock:
    """The latest event time seen by any worker of this process: the twin clock of event-time runs.

    One per dataflow, advanced as batches enter (before routing), so a shard whose twins went
    quiet still sees time pass. Thread-safe; each process keeps its own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._now = NEVER

    def advance(self, time_ns: int) -> None:
        with self._lock:
            self._now = max(self._now, time_ns)

    def now(self) -> int:
        with self._lock:
            return self._now


class _BankLogic(StatefulBatchLogic[TypedBatch, BankUpdate, dict[str, Any]]):
    """Keyed state of one (twin type, shard): a :class:`TwinBank`; snapshots are compact arrays.

    Besides the batches it also wakes on a timer (Bytewax ``notify_at``), so that sensors that
    stop sending are reported stale and idle twins are evicted even when nothing arrives. The
    twin clock is the wall clock, or with ``engine.clock: event`` the latest event time seen
    (replays), in which case the checks run after each batch instead.
    """

    def __init__(
        self, spec: DataflowSpec, resume: dict[str, Any] | None, clock: EventClock, acks: AckInbox | None
    ) -> None:
        self.spec = spec
        self.clock = clock
        self.bank: TwinBank | None = None
        self.gauge_key = ""
        self.event_clock = spec.engine.clock == "event"
        self.watermark = NEVER
        self.next_eviction = 0
        self.alerts: AlertEngine | None = None
        self.acks = acks
        self.next_ack_poll = 0
        if resume:  # an empty snapshot is a shard that never saw a reading
            twin_type = resume.get("twin_type", "?")
            try:
                type_spec = spec.twin_type(twin_type)
            except KeyError:
                raise SpecError(
                    spec.name,
                    [
                        f"the recovery state holds twin type {twin_type!r}, which this spec does not "
                        "declare; restore it in the spec or use a fresh --recovery-dir"
                    ],
                ) from None
            try:
                self.bank = TwinBank.restore(type_spec, resume)
            except (KeyError, ValueError) as exc:
                raise SpecError(
                    spec.name,
                    [
                        f"the recovery state does not fit this spec: {exc}; "
                        "use the old spec or a fresh --recovery-dir"
                    ],
                ) from None
            self.watermark = int(resume.get("watermark", NEVER))
            clock.advance(self.watermark)
            self._start_alerts(type_spec, resume.get("alerts"))

    def _start_alerts(self, type_spec: TwinTypeSpec, saved: dict[str, Any] | None) -> None:
        if not type_spec.alerts.rules:
            return
        channels = type_spec.channel_names()
        if saved:
            try:
                self.alerts = AlertEngine.restore(type_spec.name, channels, type_spec.alerts, saved)
                return
            except (KeyError, ValueError, TypeError) as exc:
                log.warning(
                    "alert state of twin type %r not restored (%s); alerts start afresh", type_spec.name, exc
                )
        self.alerts = AlertEngine(type_spec.name, channels, type_spec.alerts)

    def _now(self) -> int:
        return max(self.watermark, self.clock.now()) if self.event_clock else now_ns()

    def on_batch(self, values: list[TypedBatch]) -> tuple[Iterable[BankUpdate], bool]:
        batch = TypedBatch.concat(values)
        if self.bank is None:
            self.bank = TwinBank(self.spec.twin_type(batch.twin_type))
            self._start_alerts(self.bank.spec, None)
        if not self.gauge_key:
            first = str(batch.readings.twin_id[0])
            self.gauge_key = shard_key(batch.twin_type, shard_of(first, self.spec.engine.shards))
        self.watermark = max(self.watermark, int(batch.readings.time_ns.max()))
        update = self.bank.update(batch, self._now())
        if self.alerts is not None:
            events = self._acknowledged() + self.alerts.update(update.estimates, self._now())
            update = BankUpdate(update.estimates, update.rejected, events)
        out = [update]
        METRICS.add("readings_processed", len(batch))
        if self.event_clock:
            out += self._timers()
        METRICS.set_gauge("twins", self.gauge_key, len(self.bank))
        return out, StatefulBatchLogic.RETAIN

    def _timers(self) -> list[BankUpdate]:
        if self.bank is None:
            return []
        now = self._now()
        out = []
        stale = self.bank.due(now)
        if stale is not None:
            METRICS.add("stale_sensors", len(stale))
            events = self.alerts.update(stale, now) if self.alerts is not None else []
            out.append(BankUpdate(stale, [], events))
        if self.alerts is not None:
            events = self.alerts.due(now) + self._acknowledged()
            if events:
                out.append(BankUpdate(_no_rows(self.bank.spec.name), [], events))
        if self.bank.spec.ttl is not None and now >= self.next_eviction:
            evicted = self.bank.evict_idle(now)
            if evicted:
                METRICS.add("twins_evicted", len(evicted))
                if self.alerts is not None:
                    self.alerts.forget(evicted)
            self.next_eviction = now + _EVICTION_CHECK_NS
        return out

    def _acknowledged(self) -> list[AlertEvent]:
        """Acknowledgements recorded in the data dir since the last look (at most once a second)."""
        if self.alerts is None or self.acks is None or self.bank is None:
            return []
        wall = now_ns()
        if wall < self.next_ack_poll:
            return []
        self.next_ack_poll = wall + NS_PER_S
        events = []
        for ack in self.acks.new_for(self.bank.spec.name):
            event = self.alerts.acknowledge(str(ack["alert_id"]), str(ack["by"]), wall)
            if event is not None:
                events.append(event)
        return events

    def on_notify(self) -> tuple[Iterable[BankUpdate], bool]:
        if self.bank is None:
            return [], StatefulBatchLogic.RETAIN
        return self._timers(), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[BankUpdate], bool]:
        """The input ended (a replay, a finite file): a last look at stale sensors by the final clock."""
        if self.bank is None or not self.event_clock:
            return [], StatefulBatchLogic.RETAIN
        return self._timers(), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self.bank is None:
            return None
        if self.event_clock:  # other shards move the clock: look again soon
            return datetime.fromtimestamp((now_ns() + _EVENT_TIMER_NS) / NS_PER_S, tz=UTC)
        due = self.bank.next_due_ns()
        if self.alerts is not None:
            alert_due = self.alerts.next_due_ns()
            if alert_due is not None:
                due = alert_due if due is None else min(due, alert_due)
            if self.acks is not None:  # look for acknowledgements now and then
                poll = now_ns() + _ACK_POLL_NS
                due = poll if due is None else min(due, poll)
        if self.bank.spec.ttl is not None:
            due = self.next_eviction if due is None else min(due, self.next_eviction)
        if due is None:
            return None
        due = max(due, now_ns() + _MIN_TIMER_NS)
        return datetime.fromtimestamp(due / NS_PER_S, tz=UTC)

    def snapshot(self) -> dict[str, Any]:
        if self.bank is None:
            return {}
        snap = self.bank.snapshot()
        snap["watermark"] = self.watermark
        snap["alerts"] = self.alerts.snapshot() if self.alerts is not None else None
        return snap


#: How often idle twins are looked for (twin clock), and the shortest timer (wall clock).
_EVICTION_CHECK_NS = 60 * NS_PER_S
_MIN_TIMER_NS = NS_PER_S // 2
_EVENT_TIMER_NS = NS_PER_S
_ACK_POLL_NS = 2 * NS_PER_S


def _no_rows(twin_type: str) -> EstimateBatch:
    """An estimate batch without rows (an update that only carries alert events)."""
    f, t = np.empty(0), np.empty(0, dtype=np.str_)
    return EstimateBatch(twin_type, t, t, np.empty(0, dtype=np.int64), f, t, f, f, f, f)


class AckInbox:
    """Acknowledgements that ``dte-stream alerts ack`` (or the API) wrote to the data dir.

    One per dataflow process; each bank asks for the new acknowledgements of its twin type's
    alerts (an acknowledgement for an alert another shard owns is simply not found there).
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._lock = threading.Lock()
        self._offset = 0
        self._pending: list[dict[str, Any]] = []
        self._seen: dict[str, int] = {}  # twin type -> how many of _pending it has seen

    def new_for(self, twin_type: str) -> list[dict[str, Any]]:
        from dte_stream.alerts.store import read_acks

        with self._lock:
            acks, self._offset = read_acks(self.data_dir, self._offset)
            self._pending += acks
            start = self._seen.get(twin_type, 0)
            self._seen[twin_type] = len(self._pending)
            return self._pending[start:]


def _count_errors(letters: list[DeadLetter]) -> list[DeadLetter]:
    if letters:
        METRICS.add("dead_letters", len(letters))
    return letters


def build_flow(
    spec: DataflowSpec,
    *,
    inputs: dict[str, Source[SourceBatch]] | None = None,
    outputs: dict[str, Sink[EstimateBatch]] | None = None,
    dead_letter_output: Sink[DeadLetter] | None = None,
) -> Dataflow:
    """Build the Bytewax dataflow of ``spec``. Connects to nothing until it runs.

    ``inputs``, ``outputs`` and ``dead_letter_output`` replace the spec's sources, sinks and
    dead-letter targets (by step name): a replay feeds a file through the same twin banks
    and collects what comes out.
    """
    flow = Dataflow(spec.name)
    readings: list[Stream[SourceBatch]] = []
    dead: list[Stream[DeadLetter]] = []
    for name, source_override in (inputs or {}).items():
        readings.append(op.input(f"source_{name}", flow, source_override))
    for source in [] if inputs is not None else spec.sources:
        if isinstance(source, SimulatorSourceSpec):
            channels = spec.twin_type(source.twin_type).channel_names()
            readings.append(op.input(f"source_{source.name}", flow, SimulatorSource(source, channels)))
        else:
            raw = op.input(f"source_{source.name}", flow, _raw_source(source, spec.name))
            decoded = op.map(f"decode_{source.name}", raw, _decode)
            readings.append(op.map(f"decoded_{source.name}", decoded, lambda d: d[0]))
            dead.append(op.flat_map(f"decode_errors_{source.name}", decoded, lambda d: _count_errors(d[1])))
    merged = op.merge("merge_sources", *readings) if len(readings) > 1 else readings[0]
    merged = op.filter("non_empty", merged, lambda b: len(b.readings) > 0)

    clock = EventClock()

    def count_in(batch: SourceBatch) -> SourceBatch:
        METRICS.add("readings_in", len(batch.readings))
        clock.advance(int(batch.readings.time_ns.max()))
        return batch

    merged = op.map("count_in", merged, count_in)
    router = Router(spec)
    routed: Stream[RouteResult] = op.map(
        "route", merged, lambda b: router.route(b.readings, b.source, b.twin_type)
    )
    dead.append(op.flat_map("route_errors", routed, lambda r: _count_errors(r.errors)))
    keyed = op.flat_map("split_by_shard", routed, lambda r: r.routed)
    data_dir = spec.data_dir()
    acks = AckInbox(data_dir) if data_dir is not None else None
    updates = op.stateful_batch("twin_bank", keyed, lambda resume: _BankLogic(spec, resume, clock, acks))
    keyed_batches = op.filter(
        "estimate_batches",
        op.map("estimates", updates, lambda kv: (kv[0], kv[1].estimates)),
        lambda kv: len(kv[1]) > 0,
    )
    batches = op.map("unkeyed_batches", keyed_batches, lambda kv: kv[1])
    dead.append(op.flat_map("too_late", updates, lambda kv: _count_errors(kv[1].rejected)))
    if any(t.alerts.rules for t in spec.twin_types):
        _alert_outputs(
            spec, op.flat_map("alert_events", updates, lambda kv: kv[1].alerts), outputs is not None
        )
    for name, sink_override in (outputs or {}).items():
        op.output(f"sink_{name}", batches, sink_override)
    for sink in [] if outputs is not None else spec.sinks:
        if isinstance(sink, LocalStoreSinkSpec):
            rows = op.map(f"store_rows_{sink.name}", batches, lambda b: ("readings", b))
            store = LocalStoreSink(
                sink.data_dir, flush_rows=sink.flush_rows, flush_seconds=sink.flush_seconds
            )
            op.output(f"sink_{sink.name}", rows, store)
        elif isinstance(sink, InfluxDBSinkSpec):
            dead_file = spec.dead_letter_path() if spec.dead_letters.writes_file() else None
            influx = InfluxDBSink(sink, dead_file).per_epoch(spec.engine.workers)
            op.output(f"sink_{sink.name}", keyed_batches, influx)
        else:
            op.output(f"sink_{sink.name}", batches, _estimate_sink(sink, spec.name))
    letters = op.merge("merge_dead_letters", *dead) if len(dead) > 1 else dead[0]
    if dead_letter_output is not None:
        op.output("dead_letters", letters, dead_letter_output)
        return flow
    if spec.dead_letters.writes_file():
        op.output("dead_letters", letters, DeadLetterSink(spec.dead_letter_path()))
    for i, target in enumerate(spec.dead_letters.sinks):
        op.output(f"dead_letters_{target.kind}_{i}", letters, _dead_letter_sink(target, spec.name))
    return flow


def _alert_outputs(spec: DataflowSpec, events: Stream[AlertEvent], replay: bool) -> None:
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
    if spec.notifiers:
        op.output("alert_notifiers", events, NotifierSink(spec.notifiers))


def _raw_source(spec: FileSourceSpec | KafkaSourceSpec | MqttSourceSpec, flow_name: str) -> Source[RawBatch]:
    """The Bytewax source of a spec source that delivers payloads to decode."""
    if isinstance(spec, KafkaSourceSpec):
        return KafkaSource(spec)
    if isinstance(spec, MqttSourceSpec):
        return MqttSource(spec, flow_name=flow_name)
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


def recovery_config(recovery_dir: Path, partitions: int = 1) -> RecoveryConfig:
    """Bytewax recovery in ``recovery_dir``, created (with ``partitions`` stores) on first use.

    The twin banks' state and every source's position (Kafka offsets, file offsets, simulator
    ticks) are snapshotted there at the end of each epoch; a restart with the same folder
    resumes from the last complete epoch.
    """
    recovery_dir.mkdir(parents=True, exist_ok=True)
    if not any(recovery_dir.glob("part-*.sqlite3")):
        init_db_dir(recovery_dir, partitions)  # type: ignore[no-untyped-call]  # untyped in bytewax's stub
    return RecoveryConfig(str(recovery_dir))  # type: ignore[no-untyped-call]


def run_flow(spec: DataflowSpec, flow: Dataflow | None = None, recovery_dir: Path | None = None) -> None:
    """Run the dataflow in this process with ``spec.engine.workers`` worker threads; blocks."""
    from bytewax.run import cli_main

    cli_main(  # type: ignore[no-untyped-call]  # bytewax's stub leaves it unannotated
        flow if flow is not None else build_flow(spec),
        workers_per_process=spec.engine.workers,
        epoch_interval=timedelta(seconds=spec.engine.epoch_seconds),
        recovery_config=None if recovery_dir is None else recovery_config(recovery_dir),
    )
