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
starts the child, with its own interpreter, and reads what it sends back. This module is the
parent's end; the child's (what ``python -m dte_stream.view.process`` runs) is
:mod:`dte_stream.view.process_child`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from dte_stream.errors import StoreError
from dte_stream.view.process_child import main
from dte_stream.view.process_child import read_frame as _read_frame
from dte_stream.view.process_child import write_frame as _write_frame

__all__ = ["ViewProcess"]

log = logging.getLogger(__name__)

#: How long :meth:`ViewProcess.start` waits for the child to open its writer (Kafka may be slow).
START_TIMEOUT_S = 120.0


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
        """Start the child with ``config`` (see :mod:`~dte_stream.view.process_child`); raises
        :class:`StoreError` with the child's reason when it cannot open the view."""
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


if __name__ == "__main__":
    main()
