"""Every docstring example in dte_stream and connectors runs, as a test of the suite.

One test per module with examples (``pytest --doctest-modules`` would only see them when asked
for the package folders; this way ``pytest tests/unit`` runs them as well).
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from types import ModuleType

import pytest

import dte_stream


def _modules() -> list[str]:
    names = [dte_stream.__name__]
    for info in pkgutil.walk_packages(dte_stream.__path__, prefix="dte_stream."):
        if info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return sorted(names)


def _examples(module: ModuleType) -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [t for t in finder.find(module, module.__name__) if t.examples]


MODULES = _modules()


def test_the_packages_have_examples() -> None:
    assert len(MODULES) > 100
    with_examples = [m for m in MODULES if _examples(importlib.import_module(m))]
    assert len(with_examples) >= 40, with_examples


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    for test in _examples(module):
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(report)
