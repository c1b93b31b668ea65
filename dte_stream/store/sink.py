"""Bytewax sinks of the local store: table frames to Parquet, dead letters to JSON lines.

:class:`LocalStoreSink` takes ``(table, frame)`` items, buffers them per worker and writes
them with :meth:`LocalStore.append` in large files; :class:`DeadLetterSink` takes
:class:`~dte_stream.readings.DeadLetter` items and appends them to a :class:`DeadLetterLog`.

>>> import tempfile
>>> import bytewax.operators as op
>>> from bytewax.dataflow import Dataflow
>>> from bytewax.testing import TestingSource, run_main
>>> tmp = tempfile.TemporaryDirectory()
>>> frame = pl.DataFrame({"time": [1_000], "twin_id": ["pump-1"], "channel": ["temp"],
...                       "value": [20.5]})
>>> flow = Dataflow("store_example")
>>> frames = op.input("frames", flow, TestingSource([("readings", frame)]))
>>> op.output("store", frames, LocalStoreSink(Path(tmp.name)))
>>> run_main(flow)
>>> LocalStore(Path(tmp.name)).query("readings")["value"].to_list()
[20.5]
>>> tmp.cleanup()
"""

from __future__ import annotations

import math
import os
import secrets
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import polars as pl
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from dte_stream.errors import ConfigError, StoreError
from dte_stream.metrics import METRICS
from dte_stream.readings import DeadLetter
from dte_stream.store.dead_letters import DEFAULT_KEEP, DEFAULT_MAX_BYTES, DeadLetterLog
from dte_stream.store.housekeeping import Housekeeper, housekeeper_for
from dte_stream.store.local import LocalStore

__all__ = [
    "DEFAULT_DEAD_LETTER_PATH",
    "ColumnarBatch",
    "DeadLetterOutput",
    "DeadLetterSink",
    "LocalStoreSink",
    "TableFrame",
]

#: The dead-letter file when nothing says where: in the default data directory, never the
#: working directory itself (which is often a repository).
DEFAULT_DEAD_LETTER_PATH = Path("dte-data") / "dead_letters.jsonl"


@runtime_checkable
class ColumnarBatch(Protocol):
    """Rows kept as numpy columns until written (for example the twin bank's estimates).

    Converting each small batch to a polars frame costs about a millisecond whatever its
    size; the sink buffers such batches as they are and converts a whole buffer with one
    ``frame_of`` call when it flushes.
    """

    def __len__(self) -> int: ...

    @staticmethod
    def frame_of(batches: list[Any]) -> pl.DataFrame: ...


#: The items :class:`LocalStoreSink` consumes: a table name and the rows for it.
TableFrame = tuple[str, pl.DataFrame | ColumnarBatch]


class LocalStoreSink(DynamicSink[TableFrame]):
    """Write ``(table, frame)`` items to a :class:`LocalStore` under ``data_dir``.

    Each worker buffers frames per table and writes them (one :meth:`LocalStore.append` per
    table) when the buffered rows reach ``flush_rows``, when the oldest buffered frame is
    ``flush_seconds`` old (checked on every batch and by a timer, so an idle stream is still
    written), and when the dataflow closes. Larger buffers make fewer, larger files; run
    :meth:`LocalStore.compact` now and then if flushes are frequent.

    Delivery: at-least-once with Bytewax recovery, for the rows on disk. A resumed dataflow
    replays the epochs after its last snapshot, so rows can be written twice (files are
    never overwritten; queries then return the duplicates). Bytewax counts an item as
    delivered once ``write_batch`` returns, so rows still in the buffer when the process dies
    abruptly (at most ``flush_seconds`` worth) are lost if their epoch was already
    snapshotted; ``flush_rows=1`` writes on every batch and closes that gap at the price of
    many small files. Buffered rows are always written on a clean close.

    Each worker writes under its own writer id (process id, worker index, random suffix),
    so any number of workers and processes can share one data directory.

    Housekeeping (off unless asked for): worker 0 runs a
    :class:`~dte_stream.store.housekeeping.Housekeeper` every ``housekeeping_interval``
    seconds that deletes day partitions older than ``retention`` seconds and merges a day's
    small files once there are ``compact_min_files`` of them.
    """

    def __init__(
        self,
        data_dir: Path | str,
        flush_rows: int = 100_000,
        flush_seconds: float = 2.0,
        *,
        fsync: bool = True,
        retention: float | None = None,
        compact_min_files: int = 0,
        compact_file_bytes: int = 64 * 2**20,
        housekeeping_interval: float = 60.0,
    ) -> None:
        if flush_rows < 1:
            raise ConfigError(f"flush_rows must be >= 1, got {flush_rows}")
        if not flush_seconds > 0:
            raise ConfigError(f"flush_seconds must be > 0, got {flush_seconds}")
        self.data_dir = Path(data_dir)
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.fsync = fsync
        self.retention = retention
        self.compact_min_files = compact_min_files
        self.compact_file_bytes = compact_file_bytes
        self.housekeeping_interval = housekeeping_interval

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _LocalStorePartition:
        """Build the partition of one worker, with a writer id unique to it."""
        writer_id = f"{os.getpid()}_w{worker_index}_{secrets.token_hex(4)}"
        store = LocalStore(self.data_dir, writer_id=writer_id, fsync=self.fsync)
        keeper = None
        if worker_index == 0:
            keeper = housekeeper_for(
                self.data_dir,
                retention=self.retention,
                min_files=self.compact_min_files,
                small_file_bytes=self.compact_file_bytes,
                interval=self.housekeeping_interval,
            )
            if keeper is not None:
                keeper.start(f"{step_id}-housekeeping")
        return _LocalStorePartition(store, self.flush_rows, self.flush_seconds, step_id, keeper)


class _LocalStorePartition(StatelessSinkPartition[TableFrame]):
    """One worker's buffer; written by ``write_batch``, the flush timer thread and ``close``."""

    def __init__(
        self,
        store: LocalStore,
        flush_rows: int,
        flush_seconds: float,
        step_id: str,
        housekeeper: Housekeeper | None = None,
    ) -> None:
        self._store = store
        self._housekeeper = housekeeper
        self._flush_rows = flush_rows
        self._flush_seconds = flush_seconds
        self._buffers: dict[str, list[pl.DataFrame | ColumnarBatch]] = {}
        self._rows = 0
        self._oldest: float | None = None  # time.monotonic() of the oldest buffered frame
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._timer: threading.Thread | None = None
        if math.isfinite(flush_seconds):
            # The thread holds only a weak reference: a partition Bytewax drops without
            # closing it (an aborted dataflow) is collected and its thread ends.
            self._timer = threading.Thread(
                target=_flush_on_time,
                args=(weakref.ref(self), self._stop, min(flush_seconds / 4, 1.0)),
                name=f"{step_id}-flush",
                daemon=True,
            )
            self._timer.start()

    def write_batch(self, items: list[TableFrame]) -> None:
        self._raise_timer_error()
        prepared: list[tuple[str, pl.DataFrame | ColumnarBatch]] = []
        for item in items:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
                raise StoreError(
                    f"LocalStoreSink items must be (table, polars.DataFrame) tuples, "
                    f"got {type(item).__name__}"
                )
            table, rows = item
            if isinstance(rows, pl.DataFrame):
                prepared.append((table, self._store.prepare(table, rows)))
            elif hasattr(rows, "frame_of"):  # a ColumnarBatch (isinstance on a Protocol is slow)
                prepared.append((table, rows))
            else:
                raise StoreError(
                    f"LocalStoreSink rows must be a polars.DataFrame or a columnar batch, "
                    f"got {type(rows).__name__}"
                )
        with self._lock:
            for table, rows in prepared:
                height = rows.height if isinstance(rows, pl.DataFrame) else len(rows)
                if height == 0:
                    continue
                buffered = self._buffers.setdefault(table, [])
                if (
                    isinstance(rows, pl.DataFrame)
                    and buffered
                    and isinstance(buffered[0], pl.DataFrame)
                    and buffered[0].schema != rows.schema
                ):
                    raise StoreError(
                        f"table {table}: frame columns {rows.schema} differ from the frames "
                        f"before it {buffered[0].schema}; register a schema for the table"
                    )
                buffered.append(rows)
                self._rows += height
                if self._oldest is None:
                    self._oldest = time.monotonic()
            if self._rows >= self._flush_rows or self._is_due():
                self._flush_locked()

    def close(self) -> None:
        self._stop.set()
        if self._housekeeper is not None:
            self._housekeeper.stop()
        if self._timer is not None:
            self._timer.join()
        self._raise_timer_error()
        with self._lock:
            self._flush_locked()

    def _is_due(self) -> bool:
        return self._oldest is not None and time.monotonic() - self._oldest >= self._flush_seconds

    def _flush_locked(self) -> None:
        buffers, self._buffers = self._buffers, {}
        self._rows = 0
        self._oldest = None
        for table, buffered in buffers.items():
            frames = [b for b in buffered if isinstance(b, pl.DataFrame)]
            by_kind: dict[type[ColumnarBatch], list[Any]] = {}
            for b in buffered:
                if not isinstance(b, pl.DataFrame):
                    by_kind.setdefault(type(b), []).append(b)
            for kind, batches in by_kind.items():
                frames.append(self._store.prepare(table, kind.frame_of(batches)))
                outputs_of = getattr(kind, "outputs_frame_of", None)  # a twin bank's optional outputs
                extra = outputs_of(batches) if outputs_of is not None else None
                if extra is not None:
                    self._store.append("outputs", self._store.prepare("outputs", extra))
            frame = frames[0] if len(frames) == 1 else pl.concat(frames)
            self._store.append(table, frame)
            if self._housekeeper is not None and frame.height:
                latest = frame.get_column("time").cast(pl.Int64).max()
                if isinstance(latest, int):
                    self._housekeeper.saw(latest)

    def _flush_if_due(self) -> bool:
        """Flush when the oldest frame is due; False once a flush failed (the timer stops)."""
        with self._lock:
            if self._error is not None:
                return False
            if self._is_due():
                try:
                    self._flush_locked()
                except BaseException as exc:  # raised on the dataflow thread, see write_batch
                    self._error = exc
                    return False
        return True

    def _raise_timer_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _flush_on_time(
    partition: weakref.ref[_LocalStorePartition], stop: threading.Event, interval: float
) -> None:
    """Body of the flush timer thread: flush the partition's due buffers until stopped."""
    while not stop.wait(interval):
        part = partition()
        if part is None or not part._flush_if_due():
            return
        del part


class DeadLetterOutput:
    """The dataflow's dead-letter file for letters that arise outside the stream (in a sink).

    A sink cannot put items back into the dataflow, so the InfluxDB sink hands the points it
    refuses or drops to this object: they are counted in the ``dead_letters`` metric (the run's
    summary shows it) and appended to the same file as the dataflow's other dead letters, with
    the same size-based rotation.

    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> out = DeadLetterOutput(Path(tmp.name) / "dead_letters.jsonl")
    >>> out([DeadLetter("influxdb:influxdb", "refused by the server (400): bad line", b"m x=")])
    >>> [d.reason for d in out.log.read()]
    ['refused by the server (400): bad line']
    >>> tmp.cleanup()
    """

    def __init__(
        self, path: Path | str, *, max_bytes: int | None = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP
    ) -> None:
        self.log = DeadLetterLog(path, max_bytes=max_bytes, keep=keep)

    @classmethod
    def default(cls) -> DeadLetterOutput:
        """The output used when nothing says where: :data:`DEFAULT_DEAD_LETTER_PATH`."""
        return cls(DEFAULT_DEAD_LETTER_PATH)

    def __repr__(self) -> str:
        return f"DeadLetterOutput({str(self.log.path)!r})"

    def __call__(self, letters: list[DeadLetter]) -> None:
        if letters:
            METRICS.add("dead_letters", len(letters))
            self.log.append(letters)


class DeadLetterSink(DynamicSink[DeadLetter]):
    """Append :class:`~dte_stream.readings.DeadLetter` items to the JSON-lines file ``path``.

    Every batch is written and flushed before ``write_batch`` returns, so with Bytewax
    recovery delivery is at-least-once (a replay can repeat lines). All workers of the
    process share the file safely; give each process its own file. The file rotates at
    ``max_bytes`` (see :class:`~dte_stream.store.dead_letters.DeadLetterLog`).
    """

    def __init__(
        self, path: Path | str, *, max_bytes: int | None = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeadLetterPartition:
        """Build the partition of one worker; they all append to the same file."""
        return _DeadLetterPartition(DeadLetterLog(self.path, max_bytes=self.max_bytes, keep=self.keep))


class _DeadLetterPartition(StatelessSinkPartition[DeadLetter]):
    def __init__(self, log: DeadLetterLog) -> None:
        self._log = log

    def write_batch(self, items: list[DeadLetter]) -> None:
        for item in items:
            if not isinstance(item, DeadLetter):
                raise StoreError(f"DeadLetterSink items must be DeadLetter, got {type(item).__name__}")
        self._log.append(items)
