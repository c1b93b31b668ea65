"""The Bytewax sink of alert events: every worker hands its events to one :class:`AlertDispatcher`.

The dispatcher (one per process, created when the first worker builds its partition) delivers
in the background, so a notifier that is down never stalls the dataflow; its failures are
counted per notifier. The last partition to close drains and closes the dispatcher.

With a :class:`~dte_stream.reload.LiveSpec`, a reload that changes the notifiers takes effect
at the next write: a dispatcher for the new notifiers takes over, and the old one drains what
it holds (up to ``close_timeout``) in the background before it closes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from dte_stream.batches import AlertEvent
from dte_stream.connectors.alerting.dispatcher import AlertDispatcher
from dte_stream.errors import ConnectorError
from dte_stream.reload import LiveSpec
from dte_stream.spec.notify import NotifierSpec

__all__ = ["NotifierSink"]


class NotifierSink(DynamicSink[AlertEvent]):
    """Alert events to the spec's notifiers (Alertmanager, webhooks, Slack, MQTT, Kafka)."""

    def __init__(
        self, specs: Sequence[NotifierSpec], close_timeout: float = 10.0, *, live: LiveSpec | None = None
    ) -> None:
        self.specs = list(specs)
        self.close_timeout = close_timeout
        self.live = live
        self._lock = threading.Lock()
        self._dispatcher: AlertDispatcher | None = None
        self._generation = live.generation if live is not None else 0
        self._open = 0

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _NotifierPartition:
        with self._lock:
            if self._dispatcher is None:
                self._dispatcher = AlertDispatcher(self.specs)
            self._open += 1
            return _NotifierPartition(self)

    def dispatcher(self) -> AlertDispatcher:
        """The dispatcher of the current notifiers (swapped after a reload that changed them)."""
        with self._lock:
            if self.live is not None and self.live.generation != self._generation:
                self._generation, spec = self.live.current()
                if list(spec.notifiers) != self.specs:
                    old, self.specs = self._dispatcher, list(spec.notifiers)
                    self._dispatcher = AlertDispatcher(self.specs)
                    if old is not None:
                        threading.Thread(
                            target=old.close,
                            args=(self.close_timeout,),
                            name="dte-notifier-drain",
                            daemon=True,
                        ).start()
            if self._dispatcher is None:
                raise ConnectorError("NotifierSink: written to after its partitions closed")
            return self._dispatcher

    def _release(self) -> None:
        with self._lock:
            self._open -= 1
            if self._open == 0 and self._dispatcher is not None:
                self._dispatcher.close(self.close_timeout)
                self._dispatcher = None


class _NotifierPartition(StatelessSinkPartition[AlertEvent]):
    def __init__(self, sink: NotifierSink) -> None:
        self._sink = sink
        self._closed = False

    def write_batch(self, items: list[AlertEvent]) -> None:
        for item in items:
            if not isinstance(item, AlertEvent):
                raise ConnectorError(f"NotifierSink items must be AlertEvent, got {type(item).__name__}")
        if items:
            self._sink.dispatcher().send(items)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._sink._release()
