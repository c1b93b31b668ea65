"""The view's writer in a process of its own, so that the dataflow pays only for numpy gathers.

Building a record is Python work per twin (dicts, lists, JSON) and SQLite or Kafka takes time
besides; in the dataflow's process all of it holds the GIL the shards need (about 20 us per
twin: 0.2 s for 10,000 twins, measured in docs/benchmarks.md). So a dataflow process starts
one child (``python -m dte_stream.view.process``) that owns the view writer (the SQLite
:class:`~dte_stream.view.store.TwinView`, a Kafka view topic, or both) and the shards' publishers
send it :class:`~dte_stream.view.records.ViewColumns`: the changed twins' state as a few
arrays, pickled on a sender thread and written to the child's stdin.

- **One message in flight, of bounded size.** A publisher sends only while the child has no
  message to write (:meth:`ViewProcess.busy`), and at most
  :data:`~dte_stream.view.publisher.MAX_TWINS_PER_WRITE` twins in one; meanwhile the banks keep
  marking the twins that change, so a slow child means fewer, larger writes (up to that bound),
  never a queue that grows. The child builds and writes a message's records
  :data:`~dte_stream.view.records.RECORD_CHUNK` twins at a time, so its memory does not grow
  with the twins that changed either.
- **The child spends at most a share of what the dataflow spends** (:class:`CpuBudget`): it
  reports the CPU time each write took, and publishers send only while the child's CPU time
  stays within ``max_share`` of the dataflow process's own (plus a trickle of wall time, so an
  idle dataflow's few changes still go at once). On a loaded machine, where every CPU second
  the child takes is one the dataflow does not get, the view costs the dataflow at most about
  that share; with 10,000 busy twins the view is then refreshed every few seconds. At the end
  of the input the last changes go at once, and :meth:`close` waits for the child to write them.
- Twins whose Kafka records were not delivered come back with the acknowledgement, and their
  shard publishes them again with their state of then.
- **The child ends with its dataflow**, after writing what it was sent and waiting for Kafka's
  deliveries: when its stdin closes (the dataflow called :meth:`close`, or its process ended),
  or when its parent process is gone (killed, crashed: the child looks every
  :data:`PARENT_CHECK_S`, so a pipe that another process still holds open does not keep it
  alive). It ignores SIGINT and SIGTERM: Ctrl-C and a service manager's stop reach the dataflow,
  which drains and then closes the view. A dataflow run in-process (``run_main`` in tests)
  closes its view when its shards reach the end of the input or are dropped
  (:class:`~dte_stream.view.hub.ViewHub`). If the child dies, the error is logged once and the
  view is no longer updated (the dataflow goes on).

Frames are an 8-byte big-endian length and a pickle, both ways. Only a dataflow process
starts the child, with its own interpreter, and reads what it sends back.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from dte_stream.errors import StoreError

__all__ = ["ViewProcess"]

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">Q")
#: How long :meth:`ViewProcess.start` waits for the child to open its writer (Kafka may be slow).
START_TIMEOUT_S = 120.0


def _write_frame(stream: IO[bytes], obj: object) -> None:
    data = pickle.dumps(obj, protocol=5)
    stream.write(_LENGTH.pack(len(data)))
    stream.write(data)
    stream.flush()


def _read_frame(stream: IO[bytes]) -> Any:
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)  # frames come only from our own parent or child


def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


class CpuBudget:
    """The child's CPU allowance: ``share`` of this process's CPU time plus ``trickle`` of wall
    time, saved up to ``cap`` seconds; each write's CPU time is taken from it.

    >>> budget = CpuBudget(share=0.1, trickle=0.0, cap=1.0, cpu=lambda: 0.0, wall=lambda: 0.0)
    >>> budget.allows(), budget.spend(0.2), budget.allows()
    (True, None, False)
    """

    def __init__(
        self,
        share: float = 0.05,
        trickle: float = 0.01,
        cap: float = 1.0,
        *,
        cpu: Callable[[], float] = time.process_time,
        wall: Callable[[], float] = time.monotonic,
    ) -> None:
        self.share, self.trickle, self.cap = share, trickle, cap
        self._cpu, self._wall = cpu, wall
        self._last_cpu, self._last_wall = cpu(), wall()
        self.tokens = 0.0
        self.spent = 0.0

    def allows(self) -> bool:
        """Whether a write may start: the allowance is not overdrawn."""
        cpu, wall = self._cpu(), self._wall()
        earned = self.share * (cpu - self._last_cpu) + self.trickle * (wall - self._last_wall)
        self._last_cpu, self._last_wall = cpu, wall
        self.tokens = min(self.cap, self.tokens + earned)
        return self.tokens >= 0

    def spend(self, cost: float) -> None:
        self.tokens -= cost
        self.spent += cost


class ViewProcess:
    """The parent's end: sends the child what to write, knows which publishers wait for it.

    A :class:`~dte_stream.view.publisher.ViewWriter` (twin types, removals, records) and a column
    writer (:meth:`put_columns`, :meth:`busy`, :meth:`take_undelivered`); thread-safe.
    """

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._outstanding: dict[int, int] = {}
        self.budget = CpuBudget()
        self._undelivered: dict[int, set[str]] = {}
        self._dead = False
        self._closed = False
        self._sender = threading.Thread(target=self._send_loop, name="dte-view-sender", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name="dte-view-acks", daemon=True)

    @classmethod
    def start(
        cls, config: dict[str, Any], max_share: float = 0.05, timeout: float = START_TIMEOUT_S
    ) -> ViewProcess:
        """Start the child with ``config`` (see :func:`_open_writer`); raises :class:`StoreError`
        with the child's reason when it cannot open the view."""
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # the dte_stream this process runs
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        config = {**config, "parent_pid": os.getpid()}
        proc = subprocess.Popen(
            [sys.executable, "-m", "dte_stream.view.process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
        if proc.stdin is None or proc.stdout is None:
            raise StoreError("the twin view's writer process has no pipes")
        try:
            _write_frame(proc.stdin, config)
        except OSError as exc:
            proc.kill()
            raise StoreError(f"the twin view's writer process did not start: {exc}") from None
        answer: list[Any] = []
        reader = threading.Thread(target=lambda: answer.append(_read_frame(proc.stdout)), daemon=True)  # type: ignore[arg-type]
        reader.start()
        reader.join(timeout)
        if not answer or answer[0] is None or answer[0][0] != "ready" or answer[0][1] is not None:
            reason = answer[0][1] if answer and answer[0] is not None else "it did not answer"
            proc.kill()
            proc.wait()
            _close_pipes(proc)
            raise StoreError(f"cannot open the twin view: {reason}")
        view = cls(proc)
        view.budget = CpuBudget(max_share)
        view._sender.start()
        view._reader.start()
        return view

    # -- what publishers call -------------------------------------------------------------------

    def busy(self, tag: int) -> bool:
        """Whether the child still writes a message (of any publisher: its CPU time is counted
        only once it is done), its allowance is overdrawn, or it is gone."""
        with self._lock:
            if self._dead or self._closed or any(self._outstanding.values()):
                return True
            return not self.budget.allows()

    def put_columns(
        self, tag: int, columns: Sequence[Any], now_ns: int, alerts: Sequence[dict[str, Any]]
    ) -> None:
        """Have the child build and write the records of ``columns`` (and the alert rows)."""
        with self._lock:
            if self._dead or self._closed:
                return
            self._outstanding[tag] = self._outstanding.get(tag, 0) + 1
        self._queue.put(("columns", tag, now_ns, list(columns), list(alerts)))

    def take_undelivered(self, tag: int) -> list[str]:
        """Twins of publisher ``tag`` whose Kafka records were not delivered (forgotten here)."""
        with self._lock:
            return sorted(self._undelivered.pop(tag, set()))

    def wait_idle(self, tag: int, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until publisher ``tag``'s messages are written."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._dead and self._outstanding.get(tag, 0) > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return not self._dead

    # -- the ViewWriter interface ------------------------------------------------------------------

    def put(
        self, records: Sequence[dict[str, Any]], now_ns: int | None, alerts: Iterable[dict[str, Any]] = ()
    ) -> int:
        self._queue.put(("records", list(records), now_ns, list(alerts)))
        return 0

    def remove(self, twin_ids: Sequence[str]) -> None:
        if twin_ids:
            self._queue.put(("remove", list(twin_ids)))

    def put_types(self, specs: Sequence[dict[str, Any]]) -> None:
        self._queue.put(("types", list(specs)))

    def shutdown(self) -> None:
        """Send what is queued and tell the child to end once it has written it; does not wait."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)

    def close(self, timeout: float = 60.0) -> None:
        """:meth:`shutdown`, then wait (at most ``timeout`` s) for the child to end."""
        self.shutdown()
        self._sender.join(timeout)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("the twin view's writer process did not end within %.0f s: stopped", timeout)
            self._proc.kill()
            self._proc.wait()
        self._reader.join(5.0)
        _close_pipes(self._proc)

    # -- threads ----------------------------------------------------------------------------------

    def _send_loop(self) -> None:
        stdin = self._proc.stdin
        if stdin is None:
            return
        try:
            while (item := self._queue.get()) is not None:
                _write_frame(stdin, item)
        except (OSError, ValueError):
            self._gone()
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def _read_loop(self) -> None:
        stdout = self._proc.stdout
        if stdout is None:
            return
        while (frame := _read_frame(stdout)) is not None:
            _, tag, undelivered, cost = frame
            with self._changed:
                self._outstanding[tag] = max(0, self._outstanding.get(tag, 0) - 1)
                self.budget.spend(cost)
                if undelivered:
                    self._undelivered.setdefault(tag, set()).update(undelivered)
                self._changed.notify_all()
        if not self._closed:
            self._gone()

    def _gone(self) -> None:
        with self._changed:
            first, self._dead = not self._dead, True
            self._changed.notify_all()
        if first and not self._closed:
            code = self._proc.poll()
            log.error(
                "the twin view's writer process ended (exit code %s): the view is no longer updated "
                "(the dataflow goes on; restart it to publish the view again)",
                code,
            )


# -- the child ----------------------------------------------------------------------------------


def _open_writer(config: dict[str, Any]) -> Any:
    """The writer ``config`` asks for: ``data_dir`` (SQLite), ``kafka`` (a KafkaViewSpec as JSON)
    and ``local`` (both)."""
    from dte_stream.view.publisher import ViewFanOut
    from dte_stream.view.store import TwinView

    if config.get("kafka") is None:
        return TwinView.open(config["data_dir"])
    from dte_stream.connectors.kafka.view import KafkaViewWriter
    from dte_stream.spec.view import KafkaViewSpec

    remote = KafkaViewWriter.open(KafkaViewSpec.model_validate(config["kafka"]))
    return ViewFanOut(TwinView.open(config["data_dir"]), remote) if config.get("local") else remote


#: The child's cyclic garbage collection runs once every this many frames (see :func:`_child`).
GC_EVERY = 50
#: How often the child looks whether its parent is still there while no frame comes (seconds).
PARENT_CHECK_S = 0.5
#: Once the parent is gone: how long the child still takes frames already on their way (seconds).
DRAIN_S = 1.0


def _frames(stdin: IO[bytes]) -> queue.Queue[Any]:
    """The frames of ``stdin``, read on a thread (None after the last): the main loop can look at
    its parent meanwhile, and is not stuck in a read when another process holds the pipe open."""
    frames: queue.Queue[Any] = queue.Queue()

    def read() -> None:
        try:
            while (frame := _read_frame(stdin)) is not None:
                frames.put(frame)
        except (OSError, ValueError, pickle.UnpicklingError):
            pass
        frames.put(None)

    threading.Thread(target=read, name="dte-view-frames", daemon=True).start()
    return frames


def _next_frame(frames: queue.Queue[Any], parent: int | None) -> Any:
    """The next frame; None when the parent closed the pipe, or is gone (then whatever frames
    still arrive within :data:`DRAIN_S` first: they were sent before it went)."""
    while True:
        try:
            return frames.get(timeout=PARENT_CHECK_S)
        except queue.Empty:
            if parent is not None and os.getppid() != parent:
                break
    log.warning("the dataflow process that started the twin view's writer is gone: writing what it sent")
    try:
        return frames.get(timeout=DRAIN_S)
    except queue.Empty:
        return None


def _child(stdin: IO[bytes], stdout: IO[bytes]) -> int:
    """Write what the parent sends until it closes the pipe or ends (crashed, killed), then close
    the writer (Kafka: its deliveries are waited for) and end."""
    from dte_stream.errors import DteStreamError
    from dte_stream.logs import configure
    from dte_stream.view.publisher import EPOCH_FLUSH_S, AsyncViewWriter
    from dte_stream.view.records import record_chunks

    config = _read_frame(stdin)
    if config is None:
        return 1
    configure(config.get("log_level", "warning"), config.get("log_format", "text"))
    parent = config.get("parent_pid")
    if parent is not None and os.getppid() != parent:
        return 1  # the parent went before the writer was open: nobody to write for
    try:
        writer = _open_writer(config)
    except DteStreamError as exc:
        _write_frame(stdout, ("ready", str(exc)))
        return 1
    _write_frame(stdout, ("ready", None))
    is_async = isinstance(writer, AsyncViewWriter)
    frames = _frames(stdin)
    answering = True
    # A write makes and drops hundreds of thousands of small objects (the records' dicts and
    # lists) that hold no cycles; the cyclic collector ran over them dozens of times per write
    # and took half of build_records' time (28-31 -> 10-11 us per twin measured without it). So
    # it runs here only every GC_EVERY frames, between writes, when little is alive.
    gc.disable()
    done = 0
    while (frame := _next_frame(frames, parent)) is not None:
        done += 1
        if done % GC_EVERY == 0:
            gc.collect()
        kind, tag = frame[0], frame[1]
        start = time.process_time()
        undelivered: list[str] = []
        try:
            if kind == "columns":
                now_ns, columns, alerts = frame[2:]
                frame = None  # the columns go chunk by chunk below: drop them as they are written
                written: list[str] = []
                while columns:
                    cols = columns.pop(0)
                    if cols.removed:
                        writer.remove(cols.removed)
                    for records in record_chunks(cols):
                        writer.put(records, now_ns, alerts)  # the alert rows with the first chunk
                        alerts = []
                        if is_async:
                            written += [r["twin_id"] for r in records]
                    del cols
                if alerts:
                    writer.put([], now_ns, alerts)
                if is_async:
                    writer.flush(EPOCH_FLUSH_S)
                    undelivered = writer.take_undelivered(written)
            elif kind == "records":
                writer.put(frame[1], frame[2], frame[3])
            elif kind == "remove":
                writer.remove(frame[1])
            elif kind == "types":
                writer.put_types(frame[1])
        except DteStreamError as exc:
            log.error("twin view: %s", exc)
        if kind == "columns" and answering:
            try:
                _write_frame(stdout, ("ack", tag, undelivered, time.process_time() - start))
            except (OSError, ValueError):
                answering = False  # the parent is gone: write what it sent all the same
    close = getattr(writer, "close", None)
    if close is not None:
        close()
    return 0


if __name__ == "__main__":
    from dte_stream import allocator

    # Frames of a few hundred kB to 1 MB are freed after each write: with glibc's rising mmap
    # threshold they would come from the heap and stay (see dte_stream.allocator).
    allocator.tune()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the dataflow decides when the view ends
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _frames_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, never into the frames
    _code = _child(sys.stdin.buffer, _frames_out)
    logging.shutdown()
    sys.stderr.flush()
    # Not sys.exit: the frame reader thread may still be blocked reading a pipe that another
    # process holds open, and the interpreter's shutdown would wait for its lock; the writer is
    # closed by now.
    os._exit(_code)
