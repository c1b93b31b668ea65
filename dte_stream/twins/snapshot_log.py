"""Incremental shard snapshots: a base file, one part file per epoch, a small manifest for Bytewax.

A full shard snapshot holds every twin (about 2 kB per twin for a 3-channel type), and Bytewax
writes the state of every awoken key at every epoch's end: 200 MB per epoch at 100,000 twins
even when 100 twins changed. A :class:`SnapshotLog` writes instead, per shard, into its own
folder (``<recovery dir>/twin-state/<shard key>/``):

- a **base**: the full snapshot (:meth:`~dte_stream.twins.shard.TwinShard.snapshot`), when the
  log starts and whenever the parts since the base reach half its size (compaction);
- at each later snapshot, a **part**: the state of the twins that changed since the previous
  one (:attr:`~dte_stream.twins.bank.TwinBank.dirty`), and the order of the twins when twins
  came or went;

and hands Bytewax a **manifest**: the shard's small state (watermark, alert rules' state) and
the names of the base and parts it is made of. Files are written whole, flushed to disk and
renamed into place *before* the manifest is returned, and never rewritten (their names carry a
run id), so any manifest Bytewax commits finds its files: a restart restores exactly the state
of the last committed epoch (:func:`restore_snapshot` merges base and parts,
:func:`~dte_stream.twins.checkpoint.merge_bank_snapshots`).

Files no manifest can need any more are deleted. Bytewax resumes from the latest committed
snapshot of each key, and keeps it (and any newer) in its recovery partitions: the log reads
the manifests of its key from every partition (read-only, in a child process: see
:func:`_read_snapshot_rows`), keeps the files they, its own not-yet-visible manifests and the
manifest it resumed from name, and deletes the rest. When not every partition can be read (not
yet, or one is missing) it deletes nothing.

A cluster of processes on one host works the same way (:func:`~dte_stream.dataflow.build_flow`):
process I keeps its partition in ``process-I/part-I.sqlite3`` under the recovery folder, and
Bytewax stores a key's snapshots in the partition its hash picks, which may be another
process's, so the log reads the ``process-*`` partitions of all ``processes`` and deletes
nothing unless it finds that many. The shard files live in the folder every process shares, named
by a run id, so a shard finds its chain whichever process runs it after a restart, and no two
processes write one name. Processes on several hosts snapshot in full: another host's partitions
are on its own disk.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dte_stream.errors import ConfigError
from dte_stream.twins.checkpoint import bank_snapshot, merge_bank_snapshots
from dte_stream.twins.shard_state import shard_header

if TYPE_CHECKING:
    from dte_stream.twins.bank import TwinBank
    from dte_stream.twins.shard import TwinShard

__all__ = ["LOG_FORMAT", "SnapshotLog", "is_manifest", "restore_snapshot"]

#: Version of the manifest layout.
LOG_FORMAT = 1

#: The parts since the base may reach this share of the base's bytes before a new base is written.
COMPACT_SHARE = 0.5
#: Twins per type in one pickle of a part file: a part of every twin of a busy shard is made and
#: written this many twins at a time, so its copy of the state stays small (a base is pickled
#: from views of the banks' arrays, with no copy). Measured on a shard of 25,000 twins that all
#: changed (tracemalloc): 5.7 MiB above the state at 2,000 twins per pickle, 36.7 MiB as one pickle.
PART_CHUNK = 2_000
#: Look for files to delete every this many snapshots (and after every new base).
GC_EVERY = 10

log = logging.getLogger(__name__)


def is_manifest(snap: object) -> bool:
    """Whether a resume state is a :class:`SnapshotLog` manifest (else a full shard snapshot)."""
    return isinstance(snap, dict) and "incremental" in snap


def restore_snapshot(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The full shard snapshot a manifest stands for: its base, with its parts laid over in order.

    Raises :class:`~dte_stream.errors.ConfigError` naming the file when one is missing.
    """
    if manifest.get("incremental") != LOG_FORMAT:
        raise ConfigError(
            f"incremental snapshot format {manifest.get('incremental')!r}, this version reads {LOG_FORMAT}"
        )
    base = _read(folder, manifest["base"])[0]
    parts = [part for name in manifest["parts"] for part in _read(folder, name)]
    banks: dict[str, Any] = dict(base["banks"])
    for name in sorted({t for p in parts for t in p}):
        mine = [p[name] for p in parts if name in p]
        order = next((m["order"] for m in reversed(mine) if m["order"] is not None), None)
        start = banks.get(name)
        if start is None:  # a twin type that first reported after the base
            start, mine = mine[0]["bank"], mine[1:]
        if order is None:
            order = list(start["twin_ids"])
        banks[name] = merge_bank_snapshots(start, [m["bank"] for m in mine], order)
    return {**manifest["shard"], "banks": banks}


def _read(folder: Path, name: str) -> list[Any]:
    """The pickles of a file, in order (a base is one; a part one per :data:`PART_CHUNK` twins)."""
    path = folder / name
    out: list[Any] = []
    try:
        with open(path, "rb") as f:
            while f.peek(1):
                out.append(pickle.load(f))  # our own files, in the recovery folder
    except FileNotFoundError:
        raise ConfigError(
            f"the recovery state names {path}, which is missing: the recovery folder is incomplete "
            "(restore it whole, or use a fresh --recovery-dir)"
        ) from None
    return out


@dataclass
class _Written:
    seq: int
    files: frozenset[str]


@dataclass
class SnapshotLog:
    """The incremental snapshots of one shard, in ``root/twin-state/<key>``; see the module docstring.

    ``recovery_root`` is the recovery folder: its ``part-*.sqlite3`` partitions (one process), or
    ``processes`` folders ``process-I`` with one partition each (a cluster on this host). Start one
    with :meth:`start` from the state Bytewax hands back.
    """

    recovery_root: Path
    key: str = ""
    processes: int = 1
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    seq: int = 0
    base: str | None = None
    base_bytes: int = 0
    parts: list[str] = field(default_factory=list)
    parts_bytes: int = 0
    banks: dict[str, TwinBank] = field(default_factory=dict)  # the banks the chain describes
    counts: dict[str, int] = field(default_factory=dict)  # twins and evictions at the last snapshot
    returned: list[_Written] = field(default_factory=list)
    last_written: int = 0  # bytes of the last snapshot's file (0: none)

    @classmethod
    def start(
        cls,
        recovery_root: Path | None,
        incremental: bool,
        snap: dict[str, Any] | None,
        *,
        processes: int = 1,
    ) -> tuple[SnapshotLog | None, dict[str, Any] | None]:
        """The log of a shard resuming from ``snap`` (what Bytewax handed back), and its full snapshot.

        A manifest continues its chain (even when ``incremental`` is now off: the next snapshots
        are then full ones); a full snapshot or none starts a new chain at the next snapshot.
        There is no log (None) when ``incremental`` is off or there is no recovery folder.
        ``processes``: the size of the cluster whose partitions are under ``recovery_root``.
        """
        if snap is None or not is_manifest(snap):
            if not incremental or recovery_root is None:
                return None, snap
            return cls(recovery_root, processes=processes), snap
        if recovery_root is None:
            raise ConfigError("the recovery state is an incremental snapshot: run with its --recovery-dir")
        out = cls(recovery_root, key=str(snap["shard"].get("key", "")), processes=processes)
        full = restore_snapshot(out.folder(), snap)
        if not incremental:
            return None, full
        out.seq = int(snap["seq"]) + 1
        out.base, out.base_bytes = snap["base"], int(snap["base_bytes"])
        out.parts, out.parts_bytes = list(snap["parts"]), int(snap["parts_bytes"])
        out.returned.append(_Written(int(snap["seq"]), frozenset(_files(snap))))  # kept until superseded
        return out, full

    def attach(self, shard: TwinShard) -> None:
        """After a restore: the shard's banks are the ones the resumed chain describes."""
        self.banks = dict(shard.banks)
        self.counts = {name: _count(bank) for name, bank in shard.banks.items()}

    def folder(self) -> Path:
        return self.recovery_root / "twin-state" / self.key

    def snapshot(self, shard: TwinShard) -> dict[str, Any]:
        """The manifest of ``shard``'s state now; writes the base or the part it needs first."""
        if not shard.banks:
            return {}
        self.key = self.key or shard.key
        # views of the banks' arrays, pickled into the file below before the shard changes: the
        # base costs no second copy of the shard's state (at 100,000 twins in 4 shards, 40 MB)
        full = shard.snapshot(copy=False) if self._needs_base(shard) else None
        if full is not None:
            name, size = self._write("base", [full])
            self.base, self.base_bytes, self.parts, self.parts_bytes = name, size, [], 0
            header = {k: v for k, v in full.items() if k != "banks"}
        else:
            name, size = self._write("part", self._part(shard))
            self.parts.append(name)
            self.parts_bytes += size
            header = _header(shard)
        for bank in shard.banks.values():
            bank.dirty[:] = False
        self.banks = dict(shard.banks)
        self.counts = {t: _count(bank) for t, bank in shard.banks.items()}
        manifest = {
            "incremental": LOG_FORMAT,
            "run": self.run,
            "seq": self.seq,
            "base": self.base,
            "base_bytes": self.base_bytes,
            "parts": list(self.parts),
            "parts_bytes": self.parts_bytes,
            "shard": header,
        }
        self.returned.append(_Written(self.seq, frozenset(_files(manifest))))
        if full is not None or self.seq % GC_EVERY == 0:
            self.collect()
        self.seq += 1
        self.last_written = size
        return manifest

    def _needs_base(self, shard: TwinShard) -> bool:
        if self.base is None or self.parts_bytes >= COMPACT_SHARE * self.base_bytes:
            return True
        # a bank the chain does not describe (replaced by a live reload): start again
        return any(self.banks.get(t, bank) is not bank for t, bank in shard.banks.items())

    def _part(self, shard: TwinShard) -> Iterator[dict[str, Any]]:
        """The twins changed since the last snapshot, as one or more pickles of at most
        :data:`PART_CHUNK` twins per type (made one after the other as they are written)."""
        rows = {t: np.flatnonzero(bank.dirty[: len(bank)]) for t, bank in shard.banks.items()}
        chunks = max(1, *(-(-r.shape[0] // PART_CHUNK) for r in rows.values()))
        for c in range(chunks):
            part: dict[str, Any] = {}
            for t, bank in shard.banks.items():
                mine = rows[t][c * PART_CHUNK : (c + 1) * PART_CHUNK]
                if c and not mine.size:
                    continue
                moved = self.counts.get(t) != _count(bank) or t not in self.banks
                part[t] = {
                    "bank": bank_snapshot(bank, mine, copy=False),  # views: pickled at once
                    "order": bank.twin_ids if moved and not c else None,
                }
            yield part

    def _write(self, kind: str, values: Iterable[object]) -> tuple[str, int]:
        """``values`` pickled one after the other into a new file: one at a time in memory."""
        folder = self.folder()
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{kind}-{self.seq:09d}-{self.run}.pkl"
        tmp = folder / f".{name}.tmp"
        with open(tmp, "wb") as f:  # pickled into the file: no second copy of the state in memory
            for value in values:
                pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
            size = f.tell()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / name)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return name, size

    # -- deleting files no manifest needs -------------------------------------------------------

    def collect(self) -> list[str]:
        """Delete the files of this shard that no resumable manifest names; returns their names."""
        visible = self._visible()
        if not visible:
            return []
        oldest = min(seq for seq, _ in visible)
        self.returned = [w for w in self.returned if w.seq >= oldest]
        keep = set().union(*(files for _, files in visible), *(w.files for w in self.returned))
        gone = []
        for path in self.folder().glob("*.pkl"):
            if path.name not in keep:
                path.unlink(missing_ok=True)
                gone.append(path.name)
        return gone

    def partitions(self) -> list[Path] | None:
        """Every recovery partition of the run, or None while not all of them are there."""
        root = self.recovery_root
        if self.processes == 1:
            found = sorted(root.glob("part-*.sqlite3"))
            return found or None
        found = sorted(root.glob("process-*/part-*.sqlite3"))
        return found if len(found) == self.processes else None

    def _visible(self) -> list[tuple[int, frozenset[str]]]:
        """(seq, files) of every manifest of this key in the recovery partitions (all of them, or none)."""
        partitions = self.partitions()
        if partitions is None:
            return []
        blobs = _read_snapshot_rows(partitions, self.key)
        if blobs is None:
            return []
        out: list[tuple[int, frozenset[str]]] = []
        for blob in blobs:
            try:
                value = pickle.loads(blob)  # Bytewax's own pickles of our manifests
            except Exception:  # another step's state that we cannot load: not ours
                continue
            if is_manifest(value):
                out.append((int(value["seq"]), frozenset(_files(value))))
        return out


#: Run by :func:`_read_snapshot_rows` in a child process: argv = key, partitions; stdout = the
#: pickled list of the snapshot blobs of that key in every partition.
_READER = """
import pickle, sqlite3, sys
key, blobs = sys.argv[1], []
for path in sys.argv[2:]:
    conn = sqlite3.connect("file:" + path + "?mode=ro", uri=True, timeout=5)
    try:
        blobs += [b for (b,) in conn.execute("SELECT ser_change FROM snaps WHERE state_key = ?", (key,)) if b]
    finally:
        conn.close()
sys.stdout.buffer.write(pickle.dumps(blobs))
"""


def _read_snapshot_rows(partitions: list[Path], key: str) -> list[bytes] | None:
    """The snapshot blobs of ``key`` in ``partitions``, read by a child process (None: unreadable).

    Not read in this process: Bytewax links its own copy of SQLite, and a second SQLite library
    in the process that holds a partition open breaks SQLite's locks (POSIX locks belong to the
    process; closing our file releases Bytewax's, and our connection, seeing no other process
    on the WAL index, resets it under Bytewax's memory map: SIGBUS, seen in a 2-process run).
    """
    command = [sys.executable, "-I", "-S", "-c", _READER, key, *map(str, partitions)]
    try:
        done = subprocess.run(command, capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning(
            "incremental snapshots of %s: cannot read the recovery partitions (%s); nothing deleted", key, exc
        )
        return None
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        log.warning(
            "incremental snapshots of %s: cannot read the recovery partitions (%s); nothing deleted",
            key,
            reason[0],
        )
        return None
    blobs: list[bytes] = pickle.loads(done.stdout)  # written by _READER just now
    return blobs


def _files(manifest: dict[str, Any]) -> list[str]:
    return [manifest["base"], *manifest["parts"]]


def _count(bank: TwinBank) -> int:
    """Changes whenever twins come or go: the twins held plus the evictions so far."""
    return len(bank) * 1_000_003 + bank.counters["evicted_twins"]


def _header(shard: TwinShard) -> dict[str, Any]:
    """What :meth:`~dte_stream.twins.shard.TwinShard.snapshot` holds besides the banks."""
    return shard_header(shard.spec, shard.key, shard.watermark, shard.alert_engines)
