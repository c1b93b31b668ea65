"""The embedded local store: day-partitioned Parquet time series and a dead-letter log.

Used when no InfluxDB is configured; see ``docs/local-store.md``. The Bytewax sinks
(:class:`~dte_stream.store.sink.LocalStoreSink`, :class:`~dte_stream.store.sink.DeadLetterSink`)
live in :mod:`dte_stream.store.sink` so that reading the store does not import Bytewax.
"""

from __future__ import annotations

from dte_stream.store.dead_letters import DeadLetterLog
from dte_stream.store.local import LocalStore, day_of_ns
from dte_stream.store.schema import READINGS_SCHEMA, TABLE_SCHEMAS, TIME_DTYPE

__all__ = [
    "READINGS_SCHEMA",
    "TABLE_SCHEMAS",
    "TIME_DTYPE",
    "DeadLetterLog",
    "LocalStore",
    "day_of_ns",
]
