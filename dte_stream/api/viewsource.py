"""Which twin view the API reads: the SQLite view of the data directory, or a Kafka view topic.

With a Kafka view (``serve --view kafka://HOST:PORT/TOPIC``, or a spec whose ``view`` is kafka
without ``local``) the API reads a private copy of the topic that a
:class:`~dte_stream.connectors.kafka.view_reader.KafkaViewReader` builds from the beginning and
keeps current (a SQLite file in a temporary directory, removed at exit). ``/readyz`` is not
ready until that copy holds the view as of start.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from dte_stream.readiness import Readiness
from dte_stream.spec.model import DataflowSpec
from dte_stream.spec.view import KafkaViewSpec, SqliteViewSpec
from dte_stream.view.store import TwinView

__all__ = ["open_view", "view_of"]

#: Where rejected view records go, in the API's data directory.
VIEW_DEAD_LETTERS = "view_dead_letters.jsonl"


def view_of(spec: DataflowSpec | None, chosen: KafkaViewSpec | SqliteViewSpec | None) -> KafkaViewSpec | None:
    """The Kafka view to follow: ``chosen`` (``serve --view``) if given, else the spec's unless
    its processes also write the SQLite view of this host (``local: true``); None: SQLite."""
    if chosen is not None:
        return chosen if isinstance(chosen, KafkaViewSpec) else None
    kind = spec.view if spec is not None else None
    return kind if isinstance(kind, KafkaViewSpec) and not kind.local else None


def open_view(data_dir: Path, kafka: KafkaViewSpec | None, readiness: Readiness) -> TwinView:
    """The view the API reads (with a Kafka view, its reader is started here and stopped at exit)."""
    if kafka is None:
        return TwinView.open(data_dir)
    from dte_stream.connectors.kafka.view_reader import KafkaViewReader
    from dte_stream.store.sink import DeadLetterOutput

    copy_dir = Path(tempfile.mkdtemp(prefix="dte-view-"))
    view = TwinView.open(copy_dir)
    reader = KafkaViewReader(
        kafka, view, readiness=readiness, dead_letters=DeadLetterOutput(data_dir / VIEW_DEAD_LETTERS)
    ).start()

    def close() -> None:
        reader.stop()
        view.close()
        shutil.rmtree(copy_dir, ignore_errors=True)

    atexit.register(close)
    return view
