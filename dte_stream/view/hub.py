"""The twin view of one dataflow process: opened on first use, shared by its shards' publishers.

The SQLite view lives in the spec's data directory (its local store), or ``./dte-data`` when the
spec has none, so that ``--http`` and ``dte-stream serve`` find it in the same place.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from pathlib import Path

from dte_stream.logs import json_logs
from dte_stream.reload import LiveSpec
from dte_stream.spec.model import DataflowSpec
from dte_stream.spec.view import KafkaViewSpec
from dte_stream.view.process import ViewProcess
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
    The writer runs in a child process (:class:`~dte_stream.view.process.ViewProcess`, using
    at most ``max_share`` of this process's CPU time) unless ``separate_process`` is False.
    With ``live``, :meth:`follow` stores the twin types again after a reload changed them (the
    API's what-if reads them from the view).

    The view ends with the dataflow: each shard's logic :meth:`attach`-es itself, and when every
    attached one has seen the end of the input (:meth:`finished`), or when they are dropped
    without that (a dataflow that raised), the view is closed without waiting: its writer process
    writes the last changes and ends, and a thread of this process reaps it (the exit waits for
    it; the dataflow's end does not, so its throughput does not count the last write).
    ``run_flow`` also closes it, and the writer process ends by itself when this process is gone.
    """

    def __init__(
        self,
        spec: DataflowSpec,
        live: LiveSpec | None = None,
        *,
        separate_process: bool = True,
        max_share: float = 0.05,
    ) -> None:
        self.spec = spec
        self.separate_process = separate_process
        self.max_share = max_share
        self.live = live
        self._generation = 0
        self._lock = threading.Lock()
        self._view: ViewWriter | ViewProcess | None = None
        self._live: set[int] = set()  # the shard logics that publish here (by id)
        self._done: set[int] = set()  # those that saw the end of the input
        self.pacer = ViewPacer()  # one writing budget for all the shards of this process

    def view(self) -> ViewWriter | ViewProcess:
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

    def _open(self) -> ViewWriter | ViewProcess:
        kind = self.spec.view
        if self.separate_process:
            config = {
                "data_dir": str(view_dir(self.spec)),
                "kafka": kind.model_dump(mode="json") if isinstance(kind, KafkaViewSpec) else None,
                "local": isinstance(kind, KafkaViewSpec) and kind.local,
                "log_level": logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower(),
                "log_format": "json" if json_logs() else "text",
            }
            child = ViewProcess.start(config, self.max_share)
            atexit.register(child.close)  # what is queued is written (and delivered) before the end
            return child
        if not isinstance(kind, KafkaViewSpec):
            return TwinView.open(view_dir(self.spec))
        from dte_stream.connectors.kafka.view import KafkaViewWriter

        remote = KafkaViewWriter.open(kind)
        atexit.register(remote.close)  # what is still queued reaches the topic before the process ends
        return ViewFanOut(TwinView.open(view_dir(self.spec)), remote) if kind.local else remote

    def attach(self, logic: object) -> None:
        """A shard's logic now publishes here; when it is dropped, it no longer does."""
        key = id(logic)
        with self._lock:
            self._live.add(key)
        weakref.finalize(logic, self._dropped, key)

    def finished(self, logic: object) -> None:
        """A shard's logic has seen the end of its input (and sent its last changes)."""
        with self._lock:
            self._done.add(id(logic))
            last = self._live <= self._done
        if last:
            self.close(wait=False)

    def _dropped(self, key: int) -> None:
        # May run on any thread (the cyclic GC), the writer's own included: never wait here.
        with self._lock:
            self._live.discard(key)
            self._done.discard(key)
            last = not self._live
        if last:
            self.close(wait=False)

    def close(self, *, wait: bool = True) -> None:
        """Close the view: a writer process writes what it was sent, then ends (``wait``: the
        caller waits for that; else a thread of this process does)."""
        with self._lock:
            view, self._view = self._view, None
        if isinstance(view, ViewProcess) and not wait:
            view.shutdown()  # it writes what it was sent, then ends; a thread reaps it
            threading.Thread(target=view.close, name="dte-view-close", daemon=True).start()
            return
        close = getattr(view, "close", None)
        if close is not None:
            close()

    def publisher(self) -> ViewPublisher:
        """A publisher for one shard."""
        return ViewPublisher(self.view(), self.pacer)
