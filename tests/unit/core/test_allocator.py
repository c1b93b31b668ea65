"""The allocator setting: applied on glibc, skipped where mallopt is missing or tunables are set."""

from __future__ import annotations

import ctypes
import platform

import pytest

from dte_stream import allocator
from dte_stream.cli.main import tune_allocator


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_the_threshold_is_set_on_glibc() -> None:
    assert allocator.fix_mmap_threshold() is True


def test_without_glibc_nothing_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_libc(name: object) -> object:
        raise OSError("no C library here")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert allocator.fix_mmap_threshold() is False


def test_the_command_leaves_tunables_from_the_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(allocator, "fix_mmap_threshold", lambda: calls.append(1) or True)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    tune_allocator()
    assert calls == []
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    tune_allocator()
    assert calls == [1]
