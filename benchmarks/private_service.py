"""A real service for a benchmark, started and stopped through deploy/services/devservices.py.

Benchmarks run as scripts (``python benchmarks/bench_x.py``), so this module is imported by
name from the benchmarks folder.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def devservices() -> Any:
    """The deploy/services/devservices.py module (deploy/ is not a package)."""
    loaded = sys.modules.get("dte_devservices")
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(
        "dte_devservices", REPO / "deploy" / "services" / "devservices.py"
    )
    if spec is None or spec.loader is None:
        raise RuntimeError("cannot load deploy/services/devservices.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["dte_devservices"] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def private_service(name: str) -> Iterator[Any]:
    """Start the named service (mosquitto, kafka, influxdb, ...) in a temp folder; stop it after."""
    api = devservices()
    with tempfile.TemporaryDirectory(prefix=f"dte-bench-{name}-") as state:
        svc = api.start(name, Path(state) / name)
        try:
            yield svc
        finally:
            api.stop(svc)
