"""Freed memory goes back to the system: glibc's malloc with a fixed mmap threshold.

glibc serves an allocation of 128 KiB or more with its own ``mmap`` and unmaps it when it is
freed, but it raises that threshold to the size of the largest such block freed so far (up to
32 MiB). A process that holds 100,000 twins frees blocks of several MB whenever a twin bank's
arrays grow (the old arrays) or an epoch's snapshot copies are dropped; after that, blocks of
that size come from the heap, and freed heap memory mostly stays with the process. Measured on
one shard of 100,000 twins (``python benchmarks/bench_snapshot.py --memory``): the resident set
grew by 2,345 B per twin with the raised threshold and by 1,748 B with a fixed one, against
1,646 B of live allocations.

:func:`fix_mmap_threshold` sets the threshold, which also turns the raising off (``mallopt``,
as the ``MALLOC_MMAP_THRESHOLD_`` environment variable would). The ``dte-stream`` command and the
twin view's writer process call it at start (:func:`tune`) unless the environment already sets
glibc's malloc tunables. Elsewhere than on glibc it does nothing.

>>> isinstance(fix_mmap_threshold(), bool)
True
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["DEFAULT_THRESHOLD", "MALLOC_TUNABLES", "fix_mmap_threshold", "tune"]

#: glibc malloc settings from the environment: when any is set, the user decides.
MALLOC_TUNABLES = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

#: glibc's own initial threshold: blocks from 128 KiB up are mapped and unmapped on their own.
DEFAULT_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def fix_mmap_threshold(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; True when it was set (glibc only)."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (present in glibc only: musl has a no-op mallopt)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, int(threshold)))


def tune() -> bool:
    """:func:`fix_mmap_threshold`, unless the environment sets glibc's malloc tunables; True when set."""
    if any(name in os.environ for name in MALLOC_TUNABLES):
        return False
    return fix_mmap_threshold()
