"""The spool side of the MQTT source: a thread that writes received messages to the disk spool.

With ``spool`` set, paho's network thread queues each new message as usual; :class:`SpoolPump`
(its own thread, so it works while a sink holds the dataflow thread) takes what is queued in
batches, appends it to the :class:`~dte_stream.connectors.mqtt._spool.Spool` with one fsync,
marks it spooled in the ledger and acknowledges it to the broker (PUBACKs, then a PINGREQ whose
PINGRESP confirms them, as without a spool). When the spool is full it stops taking: the queue
fills, paho stops reading (TCP backpressure), nothing more is acknowledged, and the broker
keeps the rest in the session. A write that fails (disk full, I/O error) is retried; what
was not written is not acknowledged.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from dte_stream.batches import DeadLetter, RawBatch
from dte_stream.connectors.mqtt._client import LOG
from dte_stream.connectors.mqtt._ledger import AckLedger, digest
from dte_stream.connectors.mqtt._routing import DEAD_LETTER_RAW_BYTES, Ack, Message
from dte_stream.connectors.mqtt._spool import RECORD_OVERHEAD, Damaged, Position, Spool, SpoolRecord
from dte_stream.errors import ConnectorError
from dte_stream.metrics import METRICS
from dte_stream.spec.mqtt import MqttSourceSpec

__all__ = ["AckSender", "SpoolPump", "SpooledInput", "dropped_batch", "open_spool", "unread_messages"]

#: Messages per append (one fsync) at most.
_BATCH = 10_000
#: How long the pump sleeps when there is nothing to do, or no room (s).
_IDLE = 0.005
_FULL_WAIT = 0.05
#: How long after a failed write the pump tries again (s).
_RETRY = 1.0


def _raw(topic: str) -> bytes:
    return topic.encode("utf-8", "surrogatepass")


class SpoolPump:
    """Moves messages from ``queue`` into ``spool`` and has them acknowledged.

    ``due`` is the partition's list of acknowledgements to send, ``acknowledge``/``confirm``
    its methods that send them and forget the confirmed ones: from :meth:`start` to
    :meth:`stop`, only this thread calls them. ``queue_lock`` is held by whoever appends to
    ``queue`` (paho's network thread) while this thread copies its head: iterating a deque
    that another thread appends to raises RuntimeError ("deque mutated during iteration").
    """

    def __init__(
        self,
        *,
        who: str,
        key: str,
        queue: deque[Message],
        queue_lock: threading.Lock,
        spool: Spool,
        ledger: AckLedger,
        due: list[Ack],
        acknowledge: Callable[[], None],
        confirm: Callable[[], None],
        pending_acks: Callable[[], bool],
    ) -> None:
        self._who = who
        self._key = key
        self._queue = queue
        self._queue_lock = queue_lock
        self._spool = spool
        self._ledger = ledger
        self._due = due
        self._acknowledge = acknowledge
        self._confirm = confirm
        self._pending_acks = pending_acks
        self._stop = threading.Event()
        self.arrived = threading.Event()
        self._full = False
        self._failing = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"dte-spool-{key}", daemon=True)

    def start(self) -> None:
        METRICS.set_gauge("mqtt_spool_bytes", self._key, self._spool.used_bytes)
        self._thread.start()

    def stop(self) -> None:
        """End the thread after its current append; then send the acknowledgements still due."""
        self._stop.set()
        self.arrived.set()
        self._thread.join()
        if self._pending_acks():
            self._acknowledge()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # the dataflow thread raises it (check), never a silent stall
            self.error = exc
            LOG.error("%s: the spool thread failed: %s", self._who, exc)

    def check(self) -> None:
        """Raise what ended the thread, in the dataflow thread."""
        if self.error is not None:
            raise ConnectorError(f"{self._who}: the spool {self._spool.path} failed: {self.error}")

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._pending_acks():
                self._acknowledge()
            else:
                self._confirm()
            if not self._queue:
                self.arrived.wait(_IDLE * 20)
                self.arrived.clear()
                continue
            if not self._spool_some():
                self._stop.wait(_RETRY if self._failing else _FULL_WAIT)

    def _spool_some(self) -> bool:
        """Append what is queued (up to a batch) and queue its acks; False when it cannot."""
        queue = self._queue
        count = min(len(queue), _BATCH)
        free = self._spool.free_bytes()
        budget = self._spool.segment_bytes  # a batch never makes a segment much longer than that
        with self._queue_lock:  # the head is only ever removed by this thread (below)
            head = list(itertools.islice(queue, count))
        messages: list[Message] = []
        for message in head:
            size = len(message[0]) + len(message[1]) + RECORD_OVERHEAD
            if messages and (size > free or size > budget):
                break
            if not messages and size > free and self._spool.used_bytes:
                break  # an empty spool takes any one message
            free -= size
            budget -= size
            messages.append(message)
        if not messages:
            self._note_full()
            return False
        records = [
            SpoolRecord(topic, payload, received, mid, qos, digest(_raw(topic), payload))
            for topic, payload, received, mid, qos, _session in messages
        ]
        mids = [m[3] for m in messages if m[4]]
        try:
            self._spool.append(records, lambda: self._ledger.spooled(mids))
        except OSError as exc:
            if not self._failing:
                LOG.error(
                    "%s: cannot write the spool %s (%s); nothing more is acknowledged until it can "
                    "(the broker keeps the messages); retrying every %.0f s",
                    self._who,
                    self._spool.path,
                    exc.strerror or exc,
                    _RETRY,
                )
            self._failing = True
            METRICS.add("mqtt_spool_write_errors")
            return False
        if self._failing:
            LOG.info("%s: writing the spool %s again", self._who, self._spool.path)
            self._failing = False
        for _ in range(len(messages)):
            queue.popleft()
        self._due.extend((m[3], m[5]) for m in messages if m[4])
        self._acknowledge()
        METRICS.add("mqtt_spooled", len(messages))
        METRICS.set_gauge("mqtt_spool_bytes", self._key, self._spool.used_bytes)
        if self._full:
            self._full = False
            LOG.info("%s: the spool has room again; acknowledging again", self._who)
        return True

    def _note_full(self) -> None:
        if not self._full:
            self._full = True
            METRICS.add("mqtt_spool_full")
            LOG.warning(
                "%s: the spool %s holds its max_bytes=%d; nothing more is acknowledged until the "
                "dataflow reads from it: the broker keeps further messages in the session, up to its "
                "own limits (Mosquitto: max_queued_messages), and drops what is beyond them",
                self._who,
                self._spool.path,
                self._spool.max_bytes,
            )


def open_spool(
    path: Path, max_bytes: int, committed: Position | None, ledger: AckLedger, who: str
) -> tuple[Spool, Position]:
    """Open a client's spool; the position to read on from (``committed``, or the oldest kept).

    The records from there on were applied in no committed epoch, so they are emitted again.
    Any of them may have been acknowledged, so the broker must not hand one over as new: their
    ids and digests join the ledger (as acknowledged by an earlier process).
    """
    spool = Spool(path, max_bytes)
    if spool.cut_bytes:
        LOG.info("%s: cut %d bytes of a record the last run did not finish writing", who, spool.cut_bytes)
    start = committed if committed is not None else spool.first()
    latest: dict[int, int] = {}  # message id -> digest of its latest record (ids are reused)
    at, count = start, 0
    while True:
        records, at, _damaged = spool.read(at, 100_000)  # damaged ones are dropped when read for real
        if not records:
            break
        count += len(records)
        latest.update((r.mid, r.digest) for r in records if r.qos)
    ledger.restore(latest.items())
    if count:
        LOG.info("%s: %d spooled messages are read first (%s)", who, count, path)
    return spool, start


def unread_messages(path: Path, position: Position) -> int:
    """How many records the spool in ``path`` holds from ``position`` on (damaged ones too)."""
    spool = Spool(path, max_bytes=1 << 62)
    try:
        count = 0
        while True:
            records, position, damaged = spool.read(position, 100_000)
            if not records and not damaged:
                return count
            count += len(records) + len(damaged)
    finally:
        spool.close()


def dropped_batch(spec: MqttSourceSpec, who: str, damaged: list[Damaged]) -> RawBatch:
    """Spool records that cannot be read back: dead letters with their bytes, counted as dropped."""
    METRICS.add("mqtt_spool_dropped", len(damaged))
    LOG.error(
        "%s: dropped %d damaged records of the spool (dead letters with their bytes), e.g. %s: %s",
        who,
        len(damaged),
        damaged[0].where,
        damaged[0].reason,
    )
    now = time.time_ns()
    letters = [
        DeadLetter(f"{who} spool {d.where}", f"{d.reason}: dropped", d.raw[:DEAD_LETTER_RAW_BYTES], now)
        for d in damaged
    ]
    sub = spec.subscriptions[0]
    return RawBatch(spec.name, sub.codec, [], sub.twin_type or spec.twin_type, letters)


class AckSender(Protocol):
    """What :class:`SpooledInput` uses of the source partition: its ledger and acknowledgements."""

    _who: str
    _queue: deque[Message]
    _queue_lock: threading.Lock
    _ledger: AckLedger
    _due: list[Ack]
    _reack: deque[int]

    @property
    def client_id(self) -> str: ...

    def _acknowledge(self) -> None: ...

    def _confirm(self) -> None: ...


class SpooledInput:
    """A client's spool as the source partition sees it: filled by a :class:`SpoolPump`, read
    by the dataflow from :attr:`position`, released an epoch after it was committed.

    ``committed`` is the position of the resume state (None: from the oldest record kept).
    """

    def __init__(self, path: Path, max_bytes: int, committed: Position | None, owner: AckSender) -> None:
        self.spool, self.position = open_spool(path, max_bytes, committed, owner._ledger, owner._who)
        self._committed = self.position  # the position of the previous snapshot
        self._key = owner.client_id
        self._pump = SpoolPump(
            who=owner._who,
            key=self._key,
            queue=owner._queue,
            queue_lock=owner._queue_lock,
            spool=self.spool,
            ledger=owner._ledger,
            due=owner._due,
            acknowledge=owner._acknowledge,
            confirm=owner._confirm,
            pending_acks=lambda: bool(owner._due or owner._reack),
        )
        self.arrived = self._pump.arrived
        self._started = False
        self._closed = False

    def start(self) -> None:
        self._pump.start()
        self._started = True

    def read(self, count: int) -> tuple[list[SpoolRecord], list[Damaged]]:
        """Up to ``count`` durable records from :attr:`position` on (and damaged ones)."""
        self._pump.check()
        records, self.position, damaged = self.spool.read(self.position, count)
        return records, damaged

    def unread(self) -> bool:
        """True when durable records wait after :attr:`position`."""
        return self.position < self.spool.end()

    def commit(self) -> Position:
        """End of an epoch: the position to resume from. Segments read before the previous
        epoch's end are deleted: no restart needs them."""
        if not self._closed:
            self.spool.release(self._committed)
            METRICS.set_gauge("mqtt_spool_bytes", self._key, self.spool.used_bytes)
        self._committed = self.position
        return self.position

    def close(self) -> None:
        """Stop the pump (it sends the acknowledgements still due) and close the files."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            self._pump.stop()
        self.spool.close()
