"""Upkeep of a :class:`~dte_stream.store.LocalStore`'s day partitions: compaction and retention.

:func:`compact_table` merges the small files of each day into one file sorted by time, under a
journal (:mod:`dte_stream.store.journal`) so that readers never see a day twice;
:func:`expire_days` deletes whole days older than a cut-off. Both are reached through
:meth:`LocalStore.compact <dte_stream.store.LocalStore.compact>` and
:meth:`LocalStore.expire <dte_stream.store.LocalStore.expire>`; the automatic housekeeping
(:mod:`dte_stream.store.housekeeping`) calls those.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from dte_stream.errors import StoreError
from dte_stream.store.files import READ_ERRORS, file_size, first_line, write_atomic
from dte_stream.store.journal import finish_journals, live_files

if TYPE_CHECKING:
    from dte_stream.store.local import LocalStore

__all__ = ["DAY_DIR", "EPOCH_DAY", "NS_PER_DAY", "compact_table", "expire_days"]

NS_PER_DAY = 86_400 * 1_000_000_000
EPOCH_DAY = date(1970, 1, 1)
#: The name of a day partition's directory.
DAY_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")


def expire_days(store: LocalStore, table: str, before_ns: int) -> list[date]:
    """Delete the days of ``table`` that end at or before ``before_ns``; returns those days."""
    gone = []
    table_dir = store._table_dir(table)
    for day_dir in sorted(table_dir.iterdir()):
        match = DAY_DIR.match(day_dir.name)
        if match is None or not day_dir.is_dir():
            continue
        day = date.fromisoformat(match.group(1))
        day_end_ns = ((day - EPOCH_DAY).days + 1) * NS_PER_DAY
        if day_end_ns > before_ns:
            break  # sorted: the later days are younger still
        for path in sorted(day_dir.iterdir()):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        with contextlib.suppress(OSError):  # a writer may have put a file in meanwhile
            day_dir.rmdir()
        gone.append(day)
    return gone


def compact_table(store: LocalStore, table: str, *, min_files: int, max_file_bytes: int | None) -> int:
    """Merge each day's files of ``table`` into one (see :meth:`LocalStore.compact`); files merged away."""
    removed = 0
    table_dir = store._table_dir(table)
    with open(table_dir / ".compact.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"another compaction of {table_dir} is running") from None
        for day_dir in sorted(table_dir.iterdir()):
            if DAY_DIR.match(day_dir.name) and day_dir.is_dir():
                removed += _compact_day(store, table, day_dir, min_files, max_file_bytes)
    return removed


def _compact_day(
    store: LocalStore, table: str, day_dir: Path, min_files: int, max_file_bytes: int | None
) -> int:
    finish_journals(day_dir)
    files = live_files(day_dir)
    if max_file_bytes is not None:
        files = [f for f in files if file_size(f) < max_file_bytes]
    if len(files) < max(min_files, 2):
        return 0
    schema = store._table_schema(table, files)
    try:
        merged = pl.scan_parquet(files, schema=schema, missing_columns="insert").collect()
    except READ_ERRORS as exc:
        raise store._read_error(table, files, exc) from None
    keys = [c for c in ("time", "twin_id", "channel") if c in merged.columns]
    merged = merged.sort(keys, maintain_order=True)
    target = day_dir / store._next_name()
    journal = day_dir / f".compact-{target.stem}.json"
    record = {"merged": target.name, "replaces": [f.name for f in files]}
    try:
        write_atomic(journal, lambda tmp: tmp.write_text(json.dumps(record)), fsync=store.fsync)
        write_atomic(target, lambda tmp: merged.write_parquet(tmp, compression="zstd"), fsync=store.fsync)
    except (OSError, pl.exceptions.PolarsError) as exc:
        with contextlib.suppress(OSError):
            journal.unlink()
        raise StoreError(f"cannot compact {day_dir}: {first_line(exc)}") from None
    finish_journals(day_dir)
    return len(files)
