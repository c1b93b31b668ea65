"""Connectors consume the data types of :mod:`dte_stream.batches` and import no kernel package.

The twin bank (``dte_stream.twins``), the alert engine and log (``dte_stream.alerts``), the
what-if simulations and the Bytewax wiring may import connectors, never the other way round:
a connector is a way in or out, and what it needs of a kernel (an acknowledgement recorder, for
example) is handed to it by the dataflow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CONNECTORS = Path(__file__).resolve().parents[3] / "connectors"
KERNELS = (
    "dte_stream.twins",
    "dte_stream.alerts",
    "dte_stream.whatif",
    "dte_stream.dataflow",
    "dte_stream.shard_logic",
    "dte_stream.replay",
)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, anywhere in it (functions included), with its line."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _sources() -> list[Path]:
    return sorted(CONNECTORS.rglob("*.py"))


def test_there_are_connectors_to_check() -> None:
    assert len(_sources()) > 20


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(CONNECTORS)))
def test_a_connector_imports_no_kernel_package(path: Path) -> None:
    wrong = [
        f"line {line}: {module}"
        for line, module in _imports(path)
        if any(module == kernel or module.startswith(kernel + ".") for kernel in KERNELS)
    ]
    assert wrong == [], f"{path.relative_to(CONNECTORS.parent)} imports a kernel package: {wrong}"
