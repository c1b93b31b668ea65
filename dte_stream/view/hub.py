"""The twin view of one dataflow process: opened on first use, shared by its shards' publishers.

The SQLite view lives in the spec's data directory (its local store), or ``./dte-data`` when the
spec has none, so that ``--http`` and ``dte-stream serve`` find it in the same place.
"""

from __future__ import annotations

import atexit
import threading
from pathlib import Path

from dte_stream.reload import LiveSpec
from dte_stream.spec.model import DataflowSpec
from dte_stream.spec.view import KafkaViewSpec
from dte_stream.view.publisher import ViewFanOut, ViewPacer, ViewPublisher, ViewWriter
from dte_stream.view.store import TwinView

__all__ = ["DEFAULT_VIEW_DIR", "ViewHub", "view_dir"]

#: Where the view goes when the spec has no local store (the CLI's default data directory).
DEFAULT_VIEW_DIR = Path("dte-data")


def view_dir(spec: DataflowSpec) -> Path:
    """The directory of ``spec``'s twin view."""
    data_dir = spec.data_dir()
    return data_dir if data_dir is not None else DEFAULT_VIEW_DIR


class ViewHub:
    """Opens the view once per process (lazily: building a dataflow touches no files).

    ``spec.view`` decides what: the SQLite file of :func:`view_dir`, a Kafka view topic
    (:class:`~dte_stream.connectors.kafka.view.KafkaViewWriter`, created when the spec's
    ``create_topic`` says how, flushed when the process exits), or both (``local: true``).
    With ``live``, :meth:`follow` stores the twin types again after a reload changed them (the
    API's what-if reads them from the view).
    """

    def __init__(self, spec: DataflowSpec, live: LiveSpec | None = None) -> None:
        self.spec = spec
        self.live = live
        self._generation = 0
        self._lock = threading.Lock()
        self._view: ViewWriter | None = None
        self.pacer = ViewPacer()  # one writing budget for all the shards of this process

    def view(self) -> ViewWriter:
        """The view, opened (and the twin types stored in it) on first use."""
        with self._lock:
            if self._view is None:
                self._view = self._open()
                self._view.put_types([t.model_dump(mode="json") for t in self.spec.twin_types])
            return self._view

    def follow(self) -> None:
        """After a reload: the twin types of the running spec into the view (once per reload)."""
        if self.live is None or self.live.generation == self._generation:
            return
        with self._lock:
            self._generation, spec = self.live.current()
            if self._view is not None:
                self._view.put_types([t.model_dump(mode="json") for t in spec.twin_types])

    def _open(self) -> ViewWriter:
        kind = self.spec.view
        if not isinstance(kind, KafkaViewSpec):
            return TwinView.open(view_dir(self.spec))
        from dte_stream.connectors.kafka.view import KafkaViewWriter

        remote = KafkaViewWriter.open(kind)
        atexit.register(remote.close)  # what is still queued reaches the topic before the process ends
        return ViewFanOut(TwinView.open(view_dir(self.spec)), remote) if kind.local else remote

    def publisher(self) -> ViewPublisher:
        """A publisher for one shard."""
        return ViewPublisher(self.view(), self.pacer)
