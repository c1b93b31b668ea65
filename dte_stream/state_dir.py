"""A recovery directory read and rewritten without the engine: ``dte-stream state inspect|migrate``.

Bytewax keeps recovery state in SQLite partitions (``part-N.sqlite3``; a cluster's process I
in ``process-I/``). Table ``snaps`` holds one row per (step id, state key, epoch) with the
pickled snapshot, ``commits`` the epoch each partition has committed. A restart resumes each
key from its latest snapshot at or before the committed epoch; those are the rows read here.
The twin shards' snapshots are the rows of step ``<dataflow>.twin_bank``
(:meth:`~dte_stream.twins.shard.TwinShard.snapshot`); other steps hold source positions.

:func:`rewrite_shards` replaces the shard snapshots of every partition without ever leaving a
half-written file: each partition is copied (SQLite's backup), the copy changed and synced,
then renamed over the original; the original is kept beside it as ``part-N.sqlite3.before-migrate``.
The dataflow must be stopped: a partition whose write-ahead log (``-wal``) is still there once
this command has closed it is in use, and is refused.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dte_stream.errors import ConfigError

__all__ = ["SHARD_STEP", "RecoveryState", "SnapRow", "read_recovery", "rewrite_shards"]

#: The step id (after the dataflow's name) of the twin shards' state.
SHARD_STEP = "twin_bank"
BACKUP_SUFFIX = ".before-migrate"


@dataclass(frozen=True, slots=True)
class SnapRow:
    """The snapshot a restart would load for one state key of one step."""

    part: Path
    step_id: str
    state_key: str
    epoch: int
    blob: bytes

    def value(self) -> Any:
        """The unpickled snapshot (the directory is the daemon's own: Bytewax unpickles it too).

        The manifest of an incremental shard snapshot comes back as the full snapshot it stands
        for (:mod:`dte_stream.twins.snapshot_log`); a migration writes that full snapshot back,
        and the next run starts a new chain from it.
        """
        from dte_stream.twins.snapshot_log import is_manifest, restore_snapshot

        try:
            value = pickle.loads(self.blob)
        except Exception as exc:  # a damaged row: say which, never a traceback
            raise ConfigError(
                f"{self.part}: the snapshot of {self.step_id} {self.state_key} (epoch {self.epoch}) "
                f"cannot be read: {type(exc).__name__}: {exc}"
            ) from None
        if not is_manifest(value):
            return value
        folder = self.part.parent
        root = folder.parent if folder.name.startswith("process-") else folder
        return restore_snapshot(root / "twin-state" / self.state_key, value)


@dataclass(frozen=True, slots=True)
class RecoveryState:
    """What a recovery directory holds: partitions, committed epoch, the snapshots a restart loads."""

    directory: Path
    parts: list[Path]
    epoch: int
    rows: list[SnapRow]

    def flow(self) -> str | None:
        """The dataflow's name (the prefix of the shard step's id), None without shard state."""
        for row in self.rows:
            if row.step_id.endswith(f".{SHARD_STEP}"):
                return row.step_id[: -len(SHARD_STEP) - 1]
        return None

    def shard_rows(self) -> list[SnapRow]:
        return [r for r in self.rows if r.step_id.endswith(f".{SHARD_STEP}")]

    def other_rows(self) -> list[SnapRow]:
        return [r for r in self.rows if not r.step_id.endswith(f".{SHARD_STEP}")]


def _parts(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise ConfigError(f"recovery directory {directory} does not exist")
    parts = sorted(directory.glob("part-*.sqlite3")) + sorted(directory.glob("process-*/part-*.sqlite3"))
    if not parts:
        raise ConfigError(
            f"{directory} holds no recovery partitions (part-N.sqlite3); is it a --recovery-dir?"
        )
    return parts


@contextlib.contextmanager
def _connect(path: Path, *, create: bool = False) -> Iterator[sqlite3.Connection]:
    """A connection to an existing partition (read-write, so that closing it folds its WAL in)."""
    uri = f"file:{path}?mode={'rwc' if create else 'rw'}"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise ConfigError(f"{path}: cannot open the recovery partition: {exc}") from None
    try:
        yield conn
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{path}: not a readable recovery partition: {exc}") from None
    finally:
        conn.close()


def read_recovery(directory: Path) -> RecoveryState:
    """Read ``directory``: its partitions, committed epoch, and the latest snapshot of each key."""
    parts = _parts(directory)
    commits: list[int] = []
    rows: dict[tuple[str, str], SnapRow] = {}
    candidates: list[SnapRow] = []
    for part in parts:
        with _connect(part) as conn:
            commits += [int(e) for (e,) in conn.execute("SELECT commit_epoch FROM commits")]
            for step, key, epoch, blob in conn.execute(
                "SELECT step_id, state_key, snap_epoch, ser_change FROM snaps ORDER BY snap_epoch"
            ):
                candidates.append(
                    SnapRow(part, str(step), str(key), int(epoch), bytes(blob) if blob else b"")
                )
    epoch = min(commits) if commits else 0
    for row in candidates:
        if row.epoch <= epoch:
            rows[(row.step_id, row.state_key)] = row  # ordered by epoch: the latest wins
    kept = [r for r in rows.values() if r.blob]  # an empty change: the key was discarded
    return RecoveryState(directory, parts, epoch, sorted(kept, key=lambda r: (r.step_id, r.state_key)))


def rewrite_shards(state: RecoveryState, change: Callable[[SnapRow], dict[str, Any]]) -> int:
    """Replace every shard snapshot by ``change(row)``, partition by partition; rows rewritten.

    Each partition is rewritten into a copy that replaces it by a rename only when complete, so
    an interrupted migration leaves every partition either as it was or fully migrated (run it
    again to finish). ``change`` is called for every row before anything is written.
    """
    new_blobs = {
        (r.part, r.step_id, r.state_key, r.epoch): pickle.dumps(change(r), protocol=pickle.HIGHEST_PROTOCOL)
        for r in state.shard_rows()
    }
    for part in state.parts:
        mine = {k: v for k, v in new_blobs.items() if k[0] == part}
        if not mine:
            continue
        tmp = Path(f"{part}.migrating")
        tmp.unlink(missing_ok=True)
        with _connect(part) as src, _connect(tmp, create=True) as dst:
            src.backup(dst)
            dst.executemany(
                "UPDATE snaps SET ser_change = ? WHERE step_id = ? AND state_key = ? AND snap_epoch = ?",
                [(blob, step, key, epoch) for (_, step, key, epoch), blob in mine.items()],
            )
            dst.commit()
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file to rename
        wal = Path(f"{part}-wal")
        if wal.exists() and wal.stat().st_size > 0:
            tmp.unlink(missing_ok=True)
            raise ConfigError(
                f"{part} is in use (its write-ahead log stays open): stop the dataflow, then migrate"
            )
        fsync_path(tmp)
        backup = Path(f"{part}{BACKUP_SUFFIX}")
        backup.unlink(missing_ok=True)
        os.link(part, backup)
        os.replace(tmp, part)
        fsync_path(part.parent)
    return len(new_blobs)


def fsync_path(path: Path) -> None:
    """Flush a file, or a directory's entries, to disk (a file created or renamed in a directory
    survives a crash only once the directory is flushed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
