"""Pacing of the view writes of one shard: soon enough for live pages, cheap enough for the dataflow.

A :class:`ViewPublisher` takes every update of its shard (:meth:`note`) and writes the changed
twins to the :class:`~dte_stream.view.store.TwinView` when :meth:`publish` is called and the
last write is at least ``min_interval_s`` ago (live pages see a reading within about that long),
and always at the end of an epoch (``force=True``, from the engine's snapshot). Writing costs
time proportional to the twins that changed; the publisher measures it and stretches the
interval so that writes take at most ``max_share`` of the shard's wall time: with thousands of
busy twins per shard the view is refreshed less often instead of slowing the dataflow.
Engine-free: the Bytewax adapter calls it from its stateful logic.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from dte_stream.times import NS_PER_S
from dte_stream.view.records import ViewCollector
from dte_stream.view.store import TwinView

if TYPE_CHECKING:
    from dte_stream.alerts.rules import AlertEngine
    from dte_stream.twins.bank import BankUpdate, TwinBank

__all__ = ["ViewPublisher"]


class ViewPublisher:
    """Changes of one shard's twin bank, written to the view at a measured pace."""

    def __init__(self, view: TwinView, min_interval_s: float = 0.25, max_share: float = 0.05) -> None:
        self.view = view
        self.min_interval_ns = round(min_interval_s * NS_PER_S)
        self.max_share = max_share
        self.collector = ViewCollector()
        self.next_ns = 0
        self.writes = 0
        self.write_seconds = 0.0

    def note(self, update: BankUpdate) -> None:
        """Remember what ``update`` changed (cheap; nothing is written)."""
        self.collector.note(update)

    def due_ns(self) -> int | None:
        """Wall-clock time of the next write when changes wait for one, else None."""
        return self.next_ns if self.collector else None

    def publish(
        self, bank: TwinBank, alerts: AlertEngine | None, now_ns: int, *, force: bool = False
    ) -> bool:
        """Write the changed twins if there are any and it is time (or ``force``); True if written."""
        if not self.collector or (not force and now_ns < self.next_ns):
            return False
        start = time.perf_counter()
        records, alert_rows = self.collector.records(bank, alerts)
        if records or alert_rows:
            self.view.put(records, now_ns, alert_rows)
        cost = time.perf_counter() - start
        self.writes += 1
        self.write_seconds += cost
        self.next_ns = now_ns + max(self.min_interval_ns, round(cost / self.max_share * NS_PER_S))
        return True

    def evicted(self, twin_ids: list[str]) -> None:
        """Twins the bank evicted (TTL): dropped from the view."""
        if twin_ids:
            self.collector.forget(twin_ids)
            self.view.remove(twin_ids)
