"""Fixtures of the local store tests: a store in a temporary directory and frame factories."""

from __future__ import annotations

from pathlib import Path

import pytest
from store_helpers import ReadingsFactory, make_readings

from dte_stream.store import LocalStore


@pytest.fixture
def readings() -> ReadingsFactory:
    """The :func:`make_readings` factory."""
    return make_readings


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(data_dir: Path) -> LocalStore:
    """A store without fsync (fast); durability is tested separately."""
    return LocalStore(data_dir, fsync=False)
