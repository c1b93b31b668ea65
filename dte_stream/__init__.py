"""dte-stream: the stream-processing core of a Digital Twin Engine."""

from __future__ import annotations

from dte_stream.errors import ConfigError, ConnectorError, DteStreamError, SpecError, StoreError
from dte_stream.readings import DeadLetter, Reading, ReadingBatch

__all__ = [
    "ConfigError",
    "ConnectorError",
    "DeadLetter",
    "DteStreamError",
    "Reading",
    "ReadingBatch",
    "SpecError",
    "StoreError",
    "__version__",
]

__version__ = "0.1.0"
