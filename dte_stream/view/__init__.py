"""The twin state view: what readers (HTTP API, dashboard, what-if) know of the twins.

Shards publish the state of the twins that changed (:class:`ViewCollector` builds the records,
:class:`ViewPublisher` paces the writes to a :class:`ViewWriter`); :class:`TwinView` is the SQLite
file (WAL mode) in the data directory that every process of a dataflow on one host writes and
readers read; across hosts the records go to a compacted Kafka topic
(:mod:`dte_stream.view.messages`, :mod:`dte_stream.connectors.kafka.view`). See docs/api.md.
"""

from dte_stream.view.publisher import ViewFanOut, ViewPacer, ViewPublisher, ViewWriter
from dte_stream.view.records import ViewCollector, alert_row
from dte_stream.view.store import VIEW_FILE, AlertQuery, TwinPage, TwinQuery, TwinView

__all__ = [
    "VIEW_FILE",
    "AlertQuery",
    "TwinPage",
    "TwinQuery",
    "TwinView",
    "ViewCollector",
    "ViewFanOut",
    "ViewPacer",
    "ViewPublisher",
    "ViewWriter",
    "alert_row",
]
