"""Pacing of the view writes: soon enough for live pages, cheap enough for the dataflow.

A :class:`ViewPublisher` per shard takes every update (:meth:`~ViewPublisher.note`) and writes
the changed twins to its :class:`ViewWriter` (the SQLite :class:`~dte_stream.view.store.TwinView`,
a Kafka view topic, or both) when
:meth:`~ViewPublisher.publish` is called and

- its last write is at least ``min_interval_s`` ago (live pages see a reading within about
  that long), and
- the process's :class:`ViewPacer` allows a write: writing costs time in proportion to the
  twins that changed, so the pacer measures each write (wall time: CPU, I/O and waits alike)
  and keeps all the shards of the process together to at most ``max_share`` of the time. With
  thousands of busy twins the view is refreshed less often instead of slowing the dataflow;
- or its changes have waited ``max_wait_s`` (the view is never staler than that).

``force=True`` (the end of an epoch) writes whenever the pacer allows, whatever the interval,
and waits (at most :data:`EPOCH_FLUSH_S`) for an asynchronous writer's deliveries; twins whose
records a Kafka writer could not deliver are published again, with their state of then.
Engine-free: the Bytewax adapter calls it from its stateful logic.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from dte_stream.times import NS_PER_S
from dte_stream.view.records import ViewColumns, alert_row, build_records, gather, rows_of
from dte_stream.view.store import TwinView

if TYPE_CHECKING:
    from dte_stream.alerts.rules import AlertEngine
    from dte_stream.twins.bank import BankUpdate, TwinBank

__all__ = ["AsyncViewWriter", "ColumnWriter", "ViewFanOut", "ViewPacer", "ViewPublisher", "ViewWriter"]


@runtime_checkable
class ViewWriter(Protocol):
    """Where a publisher writes: the SQLite :class:`TwinView`, a Kafka view topic, or both."""

    def put(
        self, records: Sequence[dict[str, Any]], now_ns: int | None, alerts: Iterable[dict[str, Any]] = ()
    ) -> int: ...
    def remove(self, twin_ids: Sequence[str]) -> None: ...
    def put_types(self, specs: Sequence[dict[str, Any]]) -> None: ...


@runtime_checkable
class AsyncViewWriter(ViewWriter, Protocol):
    """A writer whose writes complete later (Kafka): the publisher flushes it at each epoch's end
    and publishes again the twins whose records were not delivered."""

    def flush(self, timeout: float) -> int: ...
    def take_undelivered(self, twin_ids: Iterable[str]) -> list[str]: ...


class ViewFanOut:
    """The SQLite view of this host and a Kafka view topic, written alike (``view.local``)."""

    def __init__(self, local: TwinView, remote: AsyncViewWriter) -> None:
        self.local = local
        self.remote = remote

    def put(
        self, records: Sequence[dict[str, Any]], now_ns: int | None, alerts: Iterable[dict[str, Any]] = ()
    ) -> int:
        rows = list(alerts)
        seq = self.local.put(records, now_ns, rows)
        self.remote.put(records, now_ns, rows)
        return seq

    def remove(self, twin_ids: Sequence[str]) -> None:
        self.local.remove(twin_ids)
        self.remote.remove(twin_ids)

    def put_types(self, specs: Sequence[dict[str, Any]]) -> None:
        self.local.put_types(specs)
        self.remote.put_types(specs)

    def flush(self, timeout: float) -> int:
        return self.remote.flush(timeout)

    def take_undelivered(self, twin_ids: Iterable[str]) -> list[str]:
        return self.remote.take_undelivered(twin_ids)

    def close(self) -> None:
        close = getattr(self.remote, "close", None)
        if close is not None:
            close()
        self.local.close()


#: At most this many twins per write (:class:`ViewPublisher`): what a write holds, here (the
#: gathered columns, pickled for a writer process) and in the writer, does not grow with the
#: twins that changed; the others stay marked in the bank and go with the next writes, with their
#: state of then (a twin that changed twice is written once, as it is now).
MAX_TWINS_PER_WRITE = 5_000

#: At the end of the input, how long each of several writes waits for the writer process to
#: take the one before (seconds).
FINISH_WAIT_S = 60.0

#: How long the end of an epoch waits for an asynchronous writer's deliveries (seconds).
EPOCH_FLUSH_S = 2.0

#: Which process wrote a record (host and process id): a cluster's processes each write their twins.
_WRITER = f"{socket.gethostname()}:{os.getpid()}"


class ViewPacer:
    """The view-writing budget of one process, shared by its shards' publishers.

    >>> pacer = ViewPacer(max_share=0.1)
    >>> pacer.ready(0), pacer.spent(end_ns=10**9, cost_s=0.2), pacer.ready(2 * 10**9), pacer.ready(3 * 10**9)
    (True, None, False, True)
    """

    def __init__(self, max_share: float = 0.05) -> None:
        self.max_share = max_share
        self._next_ns = 0
        self._lock = threading.Lock()
        self.writes = 0
        self.write_seconds = 0.0

    def ready(self, now_ns: int) -> bool:
        """Whether a write may start now."""
        with self._lock:
            return now_ns >= self._next_ns

    def next_ns(self) -> int:
        with self._lock:
            return self._next_ns

    def spent(self, end_ns: int, cost_s: float) -> None:
        """A write that ended at ``end_ns`` took ``cost_s``: the next may start after ``cost / share``."""
        with self._lock:
            self.writes += 1
            self.write_seconds += cost_s
            self._next_ns = max(self._next_ns, end_ns + round(cost_s * (1 / self.max_share - 1) * NS_PER_S))


@runtime_checkable
class ColumnWriter(Protocol):
    """A writer that builds the records itself, elsewhere (:class:`~dte_stream.view.process.ViewProcess`):
    it takes the gathered columns, one message in flight per publisher (``tag``)."""

    def busy(self, tag: int) -> bool: ...
    def put_columns(
        self, tag: int, columns: Sequence[ViewColumns], now_ns: int, alerts: Sequence[dict[str, Any]]
    ) -> None: ...
    def take_undelivered(self, tag: int) -> list[str]: ...
    def remove(self, twin_ids: Sequence[str]) -> None: ...
    def wait_idle(self, tag: int, timeout: float) -> bool: ...


class ViewPublisher:
    """Changes of one shard's twin bank, written to the view at a measured pace.

    Which twins changed, the bank knows (:meth:`~dte_stream.twins.bank.TwinBank.take_changed`:
    a flag per twin, so nothing per reading is kept here); :meth:`note` only remembers that
    something changed and the alert events. A write gathers the changed twins' state
    (:func:`~dte_stream.view.records.gather`) and either builds the records here (a
    synchronous writer) or hands the columns to a :class:`ColumnWriter` that builds and writes
    them in another process; such a writer takes one message per publisher at a time, and the
    twins that change meanwhile wait in the bank for the next.
    """

    def __init__(
        self,
        view: ViewWriter | ColumnWriter,
        pacer: ViewPacer | None = None,
        *,
        min_interval_s: float = 0.25,
        max_wait_s: float = 60.0,
        max_twins: int = MAX_TWINS_PER_WRITE,
    ) -> None:
        self.view = view
        self.max_twins = max_twins
        self.pacer = pacer if pacer is not None else ViewPacer()
        self.min_interval_ns = round(min_interval_s * NS_PER_S)
        self.max_wait_ns = round(max_wait_s * NS_PER_S)
        self.last_ns = -(2**62)  # never written: the first write may happen at once
        self.pending_since: int | None = None  # wall time of the oldest change not yet written
        self._touched: set[str] = set()  # twins to write besides the bank's changed ones
        self._alerts: dict[str, dict[str, Any]] = {}
        self._tag = id(self)

    def note(self, update: BankUpdate) -> None:
        """Remember that ``update`` changed something, and its alert events (cheap; nothing is written)."""
        if not len(update.estimates) and not update.alerts:
            return
        if self.pending_since is None:
            self.pending_since = time.time_ns()
        for event in update.alerts:
            self._touched.add(event.twin_id)
            self._alerts[event.alert_id] = alert_row(event)

    def due_ns(self) -> int | None:
        """Wall-clock time from which a write may happen, when changes wait for one; else None."""
        if self.pending_since is None:
            return None
        paced = max(self.last_ns + self.min_interval_ns, self.pacer.next_ns())
        view = self.view
        if isinstance(view, ColumnWriter) and view.busy(self._tag):  # look again a little later
            return max(paced, time.time_ns() + self.min_interval_ns)
        return min(paced, self.pending_since + self.max_wait_ns)

    def publish(
        self,
        bank: TwinBank,
        alerts: AlertEngine | None,
        now_ns: int,
        *,
        force: bool = False,
        paced: bool = True,
    ) -> bool:
        """Write the changed twins if there are any and it is time; True if written.

        ``paced=False`` (the end of the input) ignores the pacing, and a column writer takes
        the message even while this publisher's last one is on its way.
        """
        view = self.view
        columnar = view if isinstance(view, ColumnWriter) else None
        if columnar is not None:
            again = columnar.take_undelivered(self._tag)
        elif isinstance(view, AsyncViewWriter):
            again = view.take_undelivered(bank.index.ids)
        else:
            again = []
        if again:  # not delivered: publish their current state again
            self._touched.update(again)
            if self.pending_since is None:
                self.pending_since = now_ns
        if self.pending_since is None:
            return False
        if columnar is not None and paced and columnar.busy(self._tag):
            return False  # its last message is still being written: the bank keeps the changes
        overdue = now_ns - self.pending_since >= self.max_wait_ns
        interval_over = force or now_ns - self.last_ns >= self.min_interval_ns
        if paced and not overdue and not (interval_over and self.pacer.ready(now_ns)):
            return False
        start = time.perf_counter()  # wall time: what a write takes from the shard (CPU, I/O, waits)
        if self._touched:  # they wait in the bank with the changed ones (evicted ones are gone)
            bank.mark_changed(rows_of(bank, self._touched))
        rows, removed = bank.take_changed(self.max_twins)
        columns = gather(bank, rows, alerts, removed)
        columns.written_by = _WRITER
        alert_rows = list(self._alerts.values())
        self._touched, self._alerts = set(), {}
        # twins left for the next write (more changed than max_twins) wait as a fresh change
        self.pending_since = now_ns if bank.has_changed() else None
        if columnar is not None:
            columnar.put_columns(self._tag, [columns], now_ns, alert_rows)
        elif isinstance(view, ViewWriter):
            if removed:
                view.remove(removed)
            records = build_records(columns)
            if records or alert_rows:
                view.put(records, now_ns, alert_rows)
            if force and isinstance(view, AsyncViewWriter):
                view.flush(EPOCH_FLUSH_S)
        cost = time.perf_counter() - start
        self.last_ns = now_ns
        self.pacer.spent(now_ns + round(cost * NS_PER_S), cost)
        return True

    def finish(self, bank: TwinBank, alerts: AlertEngine | None, now_ns: int) -> None:
        """The input ended: write what is left now, whatever the pace (closing the view waits for it)."""
        self.pending_since = self.pending_since if self.pending_since is not None else now_ns
        columnar = self.view if isinstance(self.view, ColumnWriter) else None
        while self.publish(bank, alerts, now_ns, force=True, paced=False) and self.pending_since is not None:
            # more changed twins than one write takes: the next ones once the writer process has
            # the last (no queue of every changed twin's columns; a writer that is gone is not waited for)
            if columnar is not None:
                columnar.wait_idle(self._tag, FINISH_WAIT_S)

    def evicted(self, twin_ids: list[str]) -> None:
        """Twins dropped from the view at once (the bank's own evictions come with :meth:`publish`)."""
        if twin_ids:
            self._touched -= set(twin_ids)
            self.view.remove(twin_ids)
