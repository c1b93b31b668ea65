"""The declarative dataflow spec (YAML validated by pydantic)."""

from __future__ import annotations

from dte_stream.spec.loader import format_validation_error, load_spec, parse_spec
from dte_stream.spec.model import (
    ChannelSpec,
    DataflowSpec,
    DeadLetterSpec,
    EngineSpec,
    FileSourceSpec,
    LocalStoreSinkSpec,
    SimulatedChannelSpec,
    SimulatorSourceSpec,
    SinkSpec,
    SourceSpec,
    TwinTypeSpec,
)

__all__ = [
    "ChannelSpec",
    "DataflowSpec",
    "DeadLetterSpec",
    "EngineSpec",
    "FileSourceSpec",
    "LocalStoreSinkSpec",
    "SimulatedChannelSpec",
    "SimulatorSourceSpec",
    "SinkSpec",
    "SourceSpec",
    "TwinTypeSpec",
    "format_validation_error",
    "load_spec",
    "parse_spec",
]
