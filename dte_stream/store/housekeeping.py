"""Keeping the local store's size in bounds while a dataflow runs: compaction and retention.

A local store sink flushes every few seconds, one Parquet file per flush and day; after a week
that is a few hundred thousand small files, and nothing is ever deleted. :class:`Housekeeper`
runs beside one sink (a thread of worker 0, see :class:`~dte_stream.store.sink.LocalStoreSink`)
and every ``interval`` seconds, for every table:

* deletes the day partitions older than ``retention`` (counted back from the newest data the
  sink wrote, so a replay of last year's data is not deleted as it is written);
* merges a day's small files (under ``small_file_bytes``) once there are ``min_files`` of
  them, with :meth:`LocalStore.compact <dte_stream.store.LocalStore.compact>` (safe beside
  writers and readers). Large merged files are left as they are, so the work per run stays
  bounded however large a day grows.

>>> import tempfile, polars as pl
>>> tmp = tempfile.TemporaryDirectory()
>>> store = LocalStore(Path(tmp.name), fsync=False)
>>> day = 86_400 * 10**9
>>> for k in range(4):
...     _ = store.append("readings", pl.DataFrame({"time": [k * day // 2], "twin_id": ["p"],
...                                               "channel": ["t"], "value": [1.0]}))
>>> keeper = Housekeeper(store, retention_ns=day, min_files=2)
>>> result = keeper.run_once(latest_ns=2 * day)
>>> result.expired_days, result.merged_files, len(store.files("readings"))
(1, 2, 1)
>>> tmp.cleanup()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dte_stream.errors import StoreError
from dte_stream.store.local import LocalStore

__all__ = ["Housekeeper", "HousekeepingResult", "housekeeper_for"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HousekeepingResult:
    """What one run did."""

    expired_days: int
    merged_files: int
    seconds: float


class Housekeeper:
    """Compaction and retention of one local store (see the module docs)."""

    def __init__(
        self,
        store: LocalStore,
        *,
        retention_ns: int | None = None,
        min_files: int = 8,  # 0: no compaction
        small_file_bytes: int = 64 * 2**20,
        interval: float = 60.0,
    ) -> None:
        self.store = store
        self.retention_ns = retention_ns
        self.min_files = min_files
        self.small_file_bytes = small_file_bytes
        self.interval = interval
        self._latest_ns: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def saw(self, latest_ns: int) -> None:
        """The newest data time written so far (retention counts back from it)."""
        with self._lock:
            if self._latest_ns is None or latest_ns > self._latest_ns:
                self._latest_ns = latest_ns

    def run_once(self, latest_ns: int | None = None) -> HousekeepingResult:
        """One pass over every table: expire old days, merge small files."""
        started = time.monotonic()
        if latest_ns is not None:
            self.saw(latest_ns)
        with self._lock:
            newest = self._latest_ns
        expired = merged = 0
        for table in self._tables():
            try:
                if self.retention_ns is not None and newest is not None:
                    days = self.store.expire(table, min(newest, time.time_ns()) - self.retention_ns)
                    if days:
                        expired += len(days)
                        log.info("local store %s: deleted %s (retention)", table, _days(days))
                if self.min_files:
                    merged += self.store.compact(
                        table, min_files=self.min_files, max_file_bytes=self.small_file_bytes
                    )
            except StoreError as exc:  # another compaction runs, a file went meanwhile: next time
                log.debug("local store %s: housekeeping skipped: %s", table, exc)
            except FileNotFoundError:
                continue
        return HousekeepingResult(expired, merged, time.monotonic() - started)

    def _tables(self) -> list[str]:
        try:
            return self.store.tables()
        except StoreError:
            return []

    # ------------------------------------------------------------------------ the thread

    def start(self, name: str = "local-store-housekeeping") -> None:
        """Run :meth:`run_once` every ``interval`` seconds in a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception:  # housekeeping must never stop the dataflow
                log.exception(
                    "local store housekeeping in %s failed; trying again later", self.store.data_dir
                )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def _days(days: Sequence[object]) -> str:
    return f"{days[0]}" if len(days) == 1 else f"{len(days)} days ({days[0]} to {days[-1]})"


def housekeeper_for(
    data_dir: Path,
    *,
    retention: float | None,
    min_files: int,
    small_file_bytes: int,
    interval: float,
) -> Housekeeper | None:
    """The housekeeper a local store sink runs, or None when its settings turn both jobs off."""
    if retention is None and min_files == 0:
        return None
    return Housekeeper(
        LocalStore(data_dir),
        retention_ns=None if retention is None else int(retention * 1e9),
        min_files=min_files,
        small_file_bytes=small_file_bytes,
        interval=interval,
    )
