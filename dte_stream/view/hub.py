"""The twin view of one dataflow process: opened on first use, shared by its shards' publishers.

The view lives in the spec's data directory (its local store), or ``./dte-data`` when the
spec has none, so that ``--http`` and ``dte-stream serve`` find it in the same place.
"""

from __future__ import annotations

import threading
from pathlib import Path

from dte_stream.spec.model import DataflowSpec
from dte_stream.view.publisher import ViewPacer, ViewPublisher
from dte_stream.view.store import TwinView

__all__ = ["DEFAULT_VIEW_DIR", "ViewHub", "view_dir"]

#: Where the view goes when the spec has no local store (the CLI's default data directory).
DEFAULT_VIEW_DIR = Path("dte-data")


def view_dir(spec: DataflowSpec) -> Path:
    """The directory of ``spec``'s twin view."""
    data_dir = spec.data_dir()
    return data_dir if data_dir is not None else DEFAULT_VIEW_DIR


class ViewHub:
    """Opens the view once per process (lazily: building a dataflow touches no files)."""

    def __init__(self, spec: DataflowSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._view: TwinView | None = None
        self.pacer = ViewPacer()  # one writing budget for all the shards of this process

    def view(self) -> TwinView:
        """The view, opened (and the twin types stored in it) on first use."""
        with self._lock:
            if self._view is None:
                self._view = TwinView.open(view_dir(self.spec))
                self._view.put_types([t.model_dump(mode="json") for t in self.spec.twin_types])
            return self._view

    def publisher(self) -> ViewPublisher:
        """A publisher for one shard."""
        return ViewPublisher(self.view(), self.pacer)
