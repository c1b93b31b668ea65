"""Errors of the InfluxDB sink, all under :class:`~dte_stream.errors.ConnectorError`::

    ConnectorError
    └── InfluxDBError               the server could not be reached or refused a request
        ├── InfluxDBUnavailable     retry later: network error, timeout, 429, 5xx
        ├── InfluxDBRejected        permanent for this request: another 4xx (bad line, no such
        │                           database, no permission); retrying would fail again
        └── InfluxDBStopped         a graceful stop gave up waiting for the server: the epoch
                                    with unwritten lines is not committed

Messages name the server and what it said, never a password or token. influxdb-client,
urllib3 and http.client exceptions are converted where they are caught (the transports).
"""

from __future__ import annotations

from dte_stream.errors import ConnectorError

__all__ = ["InfluxDBError", "InfluxDBRejected", "InfluxDBStopped", "InfluxDBUnavailable"]


class InfluxDBError(ConnectorError):
    """A write to InfluxDB failed; ``status`` is the HTTP status, 0 when there was no answer."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class InfluxDBUnavailable(InfluxDBError):  # noqa: N818 - reads as a state, like ConnectionRefused
    """The server did not take the request now; the same request may succeed later.

    ``retry_after`` is the server's ``Retry-After`` in seconds, when it sent one.
    """

    def __init__(self, message: str, status: int = 0, retry_after: float | None = None) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class InfluxDBRejected(InfluxDBError):  # noqa: N818 - reads as a state
    """The server refused the request for good (a 4xx other than 429); ``status`` says which."""


class InfluxDBStopped(InfluxDBError):  # noqa: N818 - reads as a state
    """A graceful stop waited long enough for a failing server; ``unwritten`` lines were not stored.

    Raised into the dataflow on purpose: Bytewax then ends without committing the epoch, so
    the source's position stays before the unwritten points and a restart writes them.
    """

    def __init__(self, message: str, unwritten: int) -> None:
        super().__init__(message)
        self.unwritten = unwritten
