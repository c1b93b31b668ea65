"""The InfluxDB sink: estimate batches in, line protocol out, batched by a writer thread per worker.

Per worker partition: ``write_batch`` serialises the incoming
:class:`~dte_stream.batches.EstimateBatch` items in bulk and puts the lines in a bounded
:class:`~dte_stream.connectors.influxdb.buffer.LineBuffer`; a writer thread takes batches of
``batch_size`` lines (or what is there after ``flush_interval``) and sends them through the
v1 or v2 transport, retrying with backoff. See :class:`InfluxDBSink` for the guarantees.

Metrics (:data:`dte_stream.metrics.METRICS`), all counters unless noted:

========================== ===========================================================
influxdb_points_written    points the server stored
influxdb_batches_written   successful write requests
influxdb_bytes_written     request body bytes of those (before gzip)
influxdb_write_failures    attempts that failed for want of a server (no answer, 429, 5xx)
influxdb_retries           attempts repeated after such a failure
influxdb_points_rejected   points in requests the server refused for good (4xx): dead letters
influxdb_points_invalid    rows that cannot be written exactly (bad ids): dead letters
influxdb_points_skipped    rows with no finite field: nothing to write
influxdb_points_dropped    points lost by the drop policy (max_block, max_attempts, close_timeout)
influxdb_blocked_ms        time ``write_batch`` waited for room in a full buffer
influxdb_buffer_lines      gauge: lines waiting, per worker
========================== ===========================================================
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
import zlib
from collections.abc import Callable
from pathlib import Path

import polars as pl
from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)

from dte_stream.batches import DeadLetter, EstimateBatch
from dte_stream.connectors.influxdb.buffer import LineBuffer
from dte_stream.connectors.influxdb.errors import InfluxDBError, InfluxDBRejected, InfluxDBUnavailable
from dte_stream.connectors.influxdb.serialise import EstimateSerialiser
from dte_stream.connectors.influxdb.transport import Transport, make_transport
from dte_stream.connectors.influxdb.writer import (
    MAX_LOGGED_REJECTIONS,
    REPEAT_LOG,
    BatchWriter,
    DeadLetterOut,
    sink_check,
)
from dte_stream.errors import ConnectorError
from dte_stream.metrics import METRICS
from dte_stream.readiness import READINESS
from dte_stream.shutdown import stop_now_requested, stop_requested
from dte_stream.spec.influxdb import InfluxDBSinkSpec
from dte_stream.store.sink import DeadLetterOutput

__all__ = ["InfluxDBEpochSink", "InfluxDBSink", "concat_by_type"]

log = logging.getLogger(__name__)


TransportFactory = Callable[[InfluxDBSinkSpec], Transport]


def concat_by_type(batches: list[EstimateBatch]) -> list[EstimateBatch]:
    """Merge the batches of each twin type into one (in order): fewer, larger serialisations."""
    groups: dict[str, list[EstimateBatch]] = {}
    for batch in batches:
        if len(batch):
            groups.setdefault(batch.twin_type, []).append(batch)
    return [EstimateBatch.concat(group) for group in groups.values()]


class InfluxDBSink(DynamicSink[EstimateBatch]):
    """Write :class:`~dte_stream.batches.EstimateBatch` items to InfluxDB (v1 or v2 API).

    One point per reading (tags ``twin_id``, ``twin_type``, ``channel``, ``unit``; fields
    ``value``, ``estimate``, ``std``, ``innovation``, ``nis``; the reading's time in ns), built
    in bulk by :class:`~dte_stream.connectors.influxdb.serialise.EstimateSerialiser`.

    Delivery: at-least-once for every point that leaves the buffer, and idempotent, so repeats
    are harmless: a point is identified by measurement, tags and time, and writing it again
    overwrites it with the same values. Network errors, timeouts, 429 and 5xx answers are
    retried with exponential backoff and jitter (honouring ``Retry-After``;
    :class:`dte_stream.retry.RetryPolicy`). A full buffer blocks ``write_batch`` and so holds
    the whole dataflow (and a Kafka source's partitions) for as long as the server fails.
    Points are dropped only when the spec allows it: ``max_block`` set and the server failing
    that long with the buffer full (oldest lines first), ``retries.max_attempts`` used up, or
    ``close_timeout`` ending a close; every drop is logged, counted in
    ``influxdb_points_dropped`` and sent with its lines to the dead-letter output. Points the
    server refuses for good (a 4xx other than 429; of a partial write only the refused lines)
    and rows whose ids cannot be written exactly are dead letters too (logged once per reason,
    counted). A graceful stop waits at most ``close_timeout`` for a failing server, then ends
    the dataflow without committing the epoch. Used as is (a dynamic sink), Bytewax counts an
    item as delivered when ``write_batch`` returns, so lines still buffered when the process
    dies abruptly are lost;
    :meth:`per_epoch` makes the sink the dataflow uses: the end of every epoch waits until the
    epoch's lines are written, before Bytewax commits the epoch, so a restart after a crash
    rewrites what was lost (idempotently) and never skips it.

    >>> spec = InfluxDBSinkSpec(kind="influxdb", database="plant")
    >>> InfluxDBSink(spec)
    InfluxDBSink(InfluxDB at http://127.0.0.1:8086 (database 'plant'))
    """

    def __init__(
        self,
        spec: InfluxDBSinkSpec,
        dead_letters: DeadLetterOutput | Path | str | None = None,
        *,
        transport_factory: TransportFactory = make_transport,
    ) -> None:
        self.spec = spec
        if spec.dead_letters is not None:
            dead_letters = spec.dead_letters
        if dead_letters is None:
            dead_letters = DeadLetterOutput.default()
        if not isinstance(dead_letters, DeadLetterOutput):
            dead_letters = DeadLetterOutput(Path(dead_letters))
        #: the dataflow's dead-letter output: counted in ``dead_letters``, written to its file
        self.dead_letters: DeadLetterOut = dead_letters
        self._transport_factory = transport_factory

    def __repr__(self) -> str:
        return f"InfluxDBSink({self.spec.target()})"

    def preflight(self) -> None:
        """The start-up check, before the dataflow starts: the server answers and takes writes.

        Raises :class:`~dte_stream.errors.ConnectorError` with one line naming the cause and
        the fix: not reachable (refused, no such host, TLS), bad credentials, no such database
        or bucket, no permission. Creates the database first when ``create_database`` says so.
        """
        transport = self._transport_factory(self.spec)
        try:
            transport.check()
        except InfluxDBError as exc:
            raise ConnectorError(f"sink {self.spec.name}: {exc}") from None
        finally:
            transport.close()

    def report_start(self) -> None:
        """Check the server answers and tell ``/readyz`` (:func:`sink_check`); never raises.

        A server that does not answer leaves the sink unready until a writer's write works.
        """
        name = sink_check(self.spec)
        transport = self._transport_factory(self.spec)
        try:
            transport.check()
        except InfluxDBError as exc:
            READINESS.failed(name, str(exc))
        else:
            READINESS.ok(name, f"{self.spec.target()} answers")
        finally:
            transport.close()

    def per_epoch(self, partitions: int, routes: dict[str, int] | None = None) -> InfluxDBEpochSink:
        """The sink whose epochs end only once their points are written (see the class docs)."""
        return InfluxDBEpochSink(self, partitions, routes)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _InfluxDBPartition:
        """Build one worker's partition: check the server takes writes, start the writer thread.

        Raises :class:`~dte_stream.errors.ConnectorError` when the settings can never work
        (no such database, bad credentials); a server that does not answer yet is only logged.
        """
        transport = self._transport_factory(self.spec)
        checked = False
        try:
            transport.check()
            checked = True
        except InfluxDBRejected as exc:
            transport.close()
            raise ConnectorError(str(exc)) from None
        except InfluxDBUnavailable as exc:
            log.warning("%s; the sink starts anyway and retries", exc)
        return _InfluxDBPartition(
            self.spec, transport, self.dead_letters, f"{step_id}/{worker_index}", checked=checked
        )


class InfluxDBEpochSink(FixedPartitionedSink[EstimateBatch, None]):
    """:class:`InfluxDBSink` with ``partitions`` writers whose snapshots wait for their lines.

    Items are ``(key, EstimateBatch)`` pairs (the twin bank's shard keys); a key always goes
    to the same partition. Bytewax takes each partition's snapshot at the end of an epoch and
    commits the epoch (and with it the sources' positions) only after every snapshot, so
    :meth:`_InfluxDBPartition.snapshot` flushing the buffer gives at-least-once delivery
    across crashes; InfluxDB's overwrite of identical points makes it effectively once.

    ``routes`` maps a shard key to the partition (a ``part_fn`` value) that writes its
    estimates: in a cluster, one on the shard's own worker, so that estimates never cross
    processes (:func:`dte_stream.placement.writer_routes`); other keys go by their hash.
    """

    def __init__(self, sink: InfluxDBSink, partitions: int, routes: dict[str, int] | None = None) -> None:
        self.sink = sink
        self.partitions = max(1, partitions)
        self.routes = dict(routes or {})
        self._reported = False  # the start-up check went to /readyz (once per process)
        self._reported_lock = threading.Lock()

    @staticmethod
    def part_names(partitions: int) -> list[str]:
        """The partitions of a sink with ``partitions`` writers, as :meth:`list_parts` lists them."""
        return [f"writer-{i}" for i in range(max(1, partitions))]

    def list_parts(self) -> list[str]:
        # Bytewax asks this of every worker as it builds the dataflow, but builds a writer only
        # when its first batch comes: /readyz learns of the sink here, from its start-up check.
        with self._reported_lock:
            if not self._reported:
                self._reported = True
                self.sink.report_start()
        return self.part_names(self.partitions)

    def part_fn(self, item_key: str) -> int:
        routed = self.routes.get(item_key)
        return routed if routed is not None else zlib.crc32(item_key.encode("utf-8"))

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _InfluxDBPartition:
        index = int(for_part.rsplit("-", 1)[1])
        return self.sink.build(step_id, index, self.partitions)


class _InfluxDBPartition(StatelessSinkPartition[EstimateBatch], StatefulSinkPartition[EstimateBatch, None]):
    """One writer: serialise in ``write_batch``, buffer, and hand over to a :class:`BatchWriter`."""

    def __init__(
        self,
        spec: InfluxDBSinkSpec,
        transport: Transport,
        dead_letters: DeadLetterOut,
        key: str,
        *,
        checked: bool,
    ) -> None:
        self._spec = spec
        self._key = key
        self._serialiser = EstimateSerialiser(
            spec.measurement,
            unit=spec.unit,
            escaping=spec.escaping,
            source=spec.name,
            fields=spec.fields,
            tags=spec.tags,
        )
        self._buffer = LineBuffer(
            spec.buffer_lines,
            spec.max_block,
            stop_requested=stop_requested,
            stop_now=stop_now_requested,
            stop_wait=spec.close_timeout,
        )
        self._dead_letters = dead_letters
        self._writer = BatchWriter(spec, transport, self._buffer, dead_letters, key, checked=checked)
        self._last_drop_log = -REPEAT_LOG
        self._dropped_since_log = 0
        self._logged_invalid: set[str] = set()
        self._closed = False
        # A partition Bytewax drops without closing it (an aborted dataflow) stops its writer.
        self._finalizer = weakref.finalize(self, self._writer.abort)
        self._writer.start()

    def write_batch(self, items: list[EstimateBatch]) -> None:
        self._writer.raise_if_failed()
        for item in items:
            if not isinstance(item, EstimateBatch):
                raise ConnectorError(
                    f"InfluxDBSink items must be EstimateBatch, got {type(item).__name__}; "
                    "map (key, batch) pairs to the batch first"
                )
        for batch in concat_by_type(items):
            out = self._serialiser.serialise(batch)
            if out.dead_letters:
                self._dead_letter(out.dead_letters)
            if out.skipped:
                METRICS.add("influxdb_points_skipped", out.skipped)
            if len(out):
                result = self._buffer.put(out.lines)
                if result.blocked:
                    METRICS.add("influxdb_blocked_ms", int(result.blocked * 1000))
                if result.dropped:
                    self._dropped(result.dropped_lines)
        METRICS.set_gauge("influxdb_buffer_lines", self._key, len(self._buffer))

    def snapshot(self) -> None:
        """Wait until every line written so far is stored (the end of an epoch; see the sink)."""
        self._writer.raise_if_failed()
        self._buffer.flush()
        self._writer.raise_if_failed()
        METRICS.set_gauge("influxdb_buffer_lines", self._key, len(self._buffer))

    def _dead_letter(self, letters: list[DeadLetter]) -> None:
        METRICS.add("influxdb_points_invalid", len(letters))
        self._dead_letters(letters)
        for letter in letters:
            reason = letter.reason
            if reason not in self._logged_invalid and len(self._logged_invalid) < MAX_LOGGED_REJECTIONS:
                self._logged_invalid.add(reason)
                log.error(
                    "%s: a row cannot be written and is a dead letter: %s",
                    self._spec.target(),
                    letter.reason,
                )

    def _dropped(self, chunks: tuple[pl.Series, ...]) -> None:
        """Count dropped lines and dead-letter them; say so at once, then at most once a minute."""
        count = sum(c.len() for c in chunks)
        METRICS.add("influxdb_points_dropped", count)
        reason = (
            f"dropped: the server was failing for max_block ({self._spec.max_block} s) with the "
            f"buffer of {self._spec.buffer_lines} lines full"
        )
        source = f"influxdb:{self._spec.name}"
        self._dead_letters([DeadLetter(source, reason, line.encode("utf-8")) for c in chunks for line in c])
        self._dropped_since_log += count
        now = time.monotonic()
        if now - self._last_drop_log >= REPEAT_LOG:
            self._log_drops(now)

    def _log_drops(self, now: float) -> None:
        if self._dropped_since_log:
            outage = self._buffer.outage_since
            since = f" for {now - outage:.0f} s" if outage is not None else ""
            log.error(
                "%s: DROPPING POINTS: the server has been failing%s and the buffer of %d lines is "
                "full; dropped the %d oldest lines (max_block %s s)",
                self._spec.target(),
                since,
                self._spec.buffer_lines,
                self._dropped_since_log,
                self._spec.max_block,
            )
        self._last_drop_log = now
        self._dropped_since_log = 0

    def close(self) -> None:
        """Write what is buffered, waiting at most ``close_timeout``; then end the writer.

        After a stop gave up waiting for the server (the epoch is not committed; see
        :class:`~dte_stream.connectors.influxdb.buffer.LineBuffer`), or after a second signal,
        it waits no more and drops nothing: the lines are left for the restart to write.
        """
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        self._log_drops(time.monotonic())
        try:
            if self._buffer.gave_up or stop_now_requested():
                left = self._writer.abandon()
                log.warning(
                    "%s: stopped without writing %d buffered lines; their epoch is not committed, "
                    "a restart writes them",
                    self._spec.target(),
                    left,
                )
                return
            self._writer.close(self._spec.close_timeout)
        finally:
            METRICS.set_gauge("influxdb_buffer_lines", self._key, 0)
