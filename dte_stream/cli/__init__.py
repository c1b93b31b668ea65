"""The ``dte-stream`` command line."""

from __future__ import annotations

from dte_stream.cli.main import main

__all__ = ["main"]
