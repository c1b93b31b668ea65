"""InfluxDB out: every time series of the dataflow as line protocol, v1 ``/write`` or v2 API.

:class:`InfluxDBSink` is a Bytewax sink of :class:`~dte_stream.batches.EstimateBatch`
items; :class:`EstimateSerialiser` builds the line protocol in bulk (also usable alone).
Settings: :class:`dte_stream.spec.influxdb.InfluxDBSinkSpec`; guide: docs/connectors/influxdb.md.
Errors are :class:`InfluxDBError` (a :class:`~dte_stream.errors.ConnectorError`).
"""

from __future__ import annotations

from dte_stream.connectors.influxdb.buffer import LineBuffer, PutResult
from dte_stream.connectors.influxdb.errors import (
    InfluxDBError,
    InfluxDBRejected,
    InfluxDBStopped,
    InfluxDBUnavailable,
)
from dte_stream.connectors.influxdb.serialise import FIELDS, TAGS, EstimateSerialiser, SerialisedLines
from dte_stream.connectors.influxdb.sink import InfluxDBEpochSink, InfluxDBSink
from dte_stream.connectors.influxdb.transport import Transport, V1Transport, V2Transport, make_transport

__all__ = [
    "FIELDS",
    "TAGS",
    "EstimateSerialiser",
    "InfluxDBEpochSink",
    "InfluxDBError",
    "InfluxDBRejected",
    "InfluxDBSink",
    "InfluxDBStopped",
    "InfluxDBUnavailable",
    "LineBuffer",
    "PutResult",
    "SerialisedLines",
    "Transport",
    "V1Transport",
    "V2Transport",
    "make_transport",
]
