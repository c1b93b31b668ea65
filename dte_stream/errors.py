"""The exception hierarchy of dte-stream.

Every error dte-stream raises on purpose is a :class:`DteStreamError`; driver exceptions
(paho-mqtt, confluent-kafka, influxdb-client, polars) are converted where they enter::

    DteStreamError
    ├── SpecError          the dataflow spec is unreadable or invalid
    ├── ConfigError        a setting or command-line argument is invalid
    ├── StoreError         the local store cannot be read or written
    └── ConnectorError     a source or sink cannot reach or talk to its service

Bad *input data* (payloads, readings) is not an exception: decoders return dead letters.
"""

from __future__ import annotations

__all__ = ["ConfigError", "ConnectorError", "DteStreamError", "SpecError", "StoreError"]


class DteStreamError(Exception):
    """Root of every error that dte-stream raises on purpose."""


class SpecError(DteStreamError):
    """The dataflow spec cannot be read or does not validate.

    ``problems`` lists one human-readable line per problem, each naming the field path.
    """

    def __init__(self, source: str, problems: list[str]) -> None:
        from dte_stream.redaction import redact  # a value that failed validation may hold a password

        self.source = source
        self.problems = [redact(p) for p in problems]
        problems = self.problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid dataflow spec {source}:\n{lines}")


class ConfigError(DteStreamError):
    """A setting or argument is invalid; the message names it and what is allowed."""


class StoreError(DteStreamError):
    """The local store could not be read or written."""


class ConnectorError(DteStreamError):
    """A source or sink could not reach or talk to its service."""
