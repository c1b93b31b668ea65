"""The compaction journal: which files a merged file replaces, so a day never shows twice.

:meth:`LocalStore.compact <dte_stream.store.LocalStore.compact>` writes
``.compact-<merged>.json`` (``{"merged": name, "replaces": [names]}``) into the day
directory *before* it renames the merged file into place, and removes it after deleting the
replaced files. Readers list a day with :func:`live_files`: while the journal and the merged
file are both visible, the replaced files are left out. A crash at any step therefore leaves
either the old files or the merged file visible, never both; :func:`finish_journals`
(run by the next compaction) completes or rolls back what a crash interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from dte_stream.errors import StoreError

__all__ = ["finish_journals", "live_files"]

#: Temporary files older than this are debris of a crashed writer; compaction removes them.
_STALE_TMP_SECONDS = 3600.0


def _journals(day_dir: Path, names: Sequence[str]) -> list[tuple[Path, dict[str, object]]]:
    found = []
    for name in names:
        if name.startswith(".compact-") and name.endswith(".json"):
            path = day_dir / name
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # removed meanwhile, or never whole: the temp+rename makes this rare
            if isinstance(record, dict):
                found.append((path, record))
    return found


def live_files(day_dir: Path) -> list[Path]:
    """The visible data files of a day: ``part-*.parquet`` minus those a compaction replaced."""
    try:
        names = os.listdir(day_dir)
    except OSError as exc:
        raise StoreError(f"cannot list {day_dir}: {exc.strerror or exc}") from None
    parts = {n for n in names if n.startswith("part-") and n.endswith(".parquet")}
    for _path, record in _journals(day_dir, names):
        replaces = record.get("replaces")
        if record.get("merged") in parts and isinstance(replaces, list):
            parts.difference_update(str(n) for n in replaces)
    return [day_dir / n for n in sorted(parts)]


def finish_journals(day_dir: Path) -> None:
    """Complete or roll back compactions a crash interrupted, and remove stale temp files."""
    names = os.listdir(day_dir)
    for path, record in _journals(day_dir, names):
        replaces = record.get("replaces")
        if record.get("merged") in names and isinstance(replaces, list):
            for name in replaces:
                if isinstance(name, str) and name.startswith("part-"):
                    with contextlib.suppress(FileNotFoundError):
                        (day_dir / name).unlink()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    now = time.time()
    for name in names:
        if name.startswith(".") and name.endswith(".tmp"):
            tmp = day_dir / name
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
                    tmp.unlink()
