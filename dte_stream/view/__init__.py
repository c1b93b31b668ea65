"""The twin state view: what readers (HTTP API, dashboard, what-if) know of the twins.

Shards publish the state of the twins that changed (:class:`ViewCollector` builds the records,
:class:`ViewPublisher` paces the writes); :class:`TwinView` is the SQLite file (WAL mode) in the
data directory that every process of a dataflow writes and readers read. See docs/api.md.
"""

from dte_stream.view.publisher import ViewPacer, ViewPublisher
from dte_stream.view.records import ViewCollector, alert_row
from dte_stream.view.store import VIEW_FILE, AlertQuery, TwinPage, TwinQuery, TwinView

__all__ = [
    "VIEW_FILE",
    "AlertQuery",
    "TwinPage",
    "TwinQuery",
    "TwinView",
    "ViewCollector",
    "ViewPacer",
    "ViewPublisher",
    "alert_row",
]
