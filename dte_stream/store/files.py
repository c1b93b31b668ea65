"""The store's file primitives: whole-or-nothing writes, directory fsync, sizes, error texts.

:func:`write_atomic` writes through a hidden temporary name, flushes it to disk and renames it
into place, so a reader or a crash never sees half a file; :class:`~dte_stream.store.LocalStore`
writes its Parquet files and its compaction journals through it.

>>> import tempfile
>>> tmp = tempfile.TemporaryDirectory()
>>> target = Path(tmp.name) / "note.txt"
>>> write_atomic(target, lambda p: p.write_text("whole"), fsync=False)
>>> target.read_text(), file_size(target), sorted(p.name for p in Path(tmp.name).iterdir())
('whole', 5, ['note.txt'])
>>> tmp.cleanup()
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import polars as pl

from dte_stream.state_dir import fsync_path as fsync_dir

__all__ = ["READ_ERRORS", "file_size", "first_line", "fsync_dir", "write_atomic"]

#: What reading a broken or vanished Parquet file raises.
READ_ERRORS = (pl.exceptions.PolarsError, pl.exceptions.PanicException, OSError)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (polars errors run to many lines), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def file_size(path: Path) -> int:
    """The size of ``path`` in bytes; 0 when it is gone (a compaction may delete it meanwhile)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def write_atomic(final: Path, write: Callable[[Path], object], *, fsync: bool) -> None:
    """Write through ``write(tmp_path)`` and rename to ``final``; never leave a temp file."""
    tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        fsync_dir(final.parent)
