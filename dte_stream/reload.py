"""Live reload: a running daemon takes a changed spec without a restart and without losing state.

:class:`LiveSpec` is the hand-over between the thread that reads the spec file and the worker
threads that run the twins. It holds the process's running spec and a *generation* that grows
with every accepted change. :meth:`LiveSpec.offer` checks a new spec
(:func:`~dte_stream.spec.compat.live_problems`): a change the running dataflow or its state
cannot take is refused with the reasons and the old spec stays; an accepted one becomes
current. Readers never block on a reload: each twin shard compares the generation at its next
batch or timer and reconfigures itself (:meth:`~dte_stream.twins.shard.TwinShard.follow`),
the notifier sink swaps its dispatcher at its next write.

:class:`SpecWatcher` (a thread of ``dte-stream run``) reloads the spec file on SIGHUP and when
the file changes (its modification time or size, looked at every ``interval`` seconds), and
logs one line per reload; reloads are counted in ``dte_spec_reloads_total{result}``.

>>> from dte_stream.spec import parse_spec
>>> doc = {"name": "x", "sources": [{"kind": "simulator", "twin_type": "pump"}],
...     "twin_types": [{"name": "pump", "channels": {"temp": {}},
...                     "alerts": {"rules": [{"kind": "threshold", "name": "hot", "above": 90}]}}],
...     "sinks": [{"kind": "local_store"}]}
>>> live = LiveSpec(parse_spec(doc))
>>> doc["twin_types"][0]["alerts"]["rules"][0]["above"] = 80
>>> live.offer(parse_spec({**doc, "version": 2})).applied, live.generation
(True, 1)
>>> doc["twin_types"][0]["channels"]["flow"] = {}
>>> live.offer(parse_spec({**doc, "version": 3})).problems
["twin type 'pump': channels added: flow (the saved state has no place for them)"]
>>> live.spec.version
2
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dte_stream.errors import DteStreamError, SpecError
from dte_stream.metrics import METRICS
from dte_stream.spec.compat import changed_sections, live_problems
from dte_stream.spec.model import DataflowSpec

__all__ = ["POLL_SECONDS", "LiveSpec", "ReloadResult", "SpecWatcher"]

#: How often the spec file's modification time is looked at.
POLL_SECONDS = 2.0

log = logging.getLogger("dte_stream.reload")


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did: applied (with the sections that changed) or refused (with the reasons)."""

    applied: bool
    version: int
    changed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def line(self, old_version: int) -> str:
        """The one log line of this reload."""
        if self.problems:
            return f"spec reload refused, still running version {old_version}: " + "; ".join(self.problems)
        if not self.changed:
            return f"spec reloaded: nothing changed (version {self.version})"
        return f"spec reloaded: version {old_version} -> {self.version}; changed: {', '.join(self.changed)}"


class LiveSpec:
    """The running spec of this process, replaced by accepted reloads (thread-safe).

    ``alert_path``: whether the running dataflow has alert outputs (see
    :func:`~dte_stream.spec.compat.live_problems`).
    """

    def __init__(self, spec: DataflowSpec, *, alert_path: bool | None = None) -> None:
        self._lock = threading.Lock()
        self._spec = spec
        self._generation = 0
        self.alert_path = (
            alert_path
            if alert_path is not None
            else any(t.alerts.rules for t in spec.twin_types) or bool(spec.notifiers)
        )
        METRICS.set_gauge("spec_version", "", spec.version)

    @property
    def spec(self) -> DataflowSpec:
        with self._lock:
            return self._spec

    @property
    def generation(self) -> int:
        with self._lock:
            return self._generation

    def current(self) -> tuple[int, DataflowSpec]:
        """The generation and the spec, read together."""
        with self._lock:
            return self._generation, self._spec

    def offer(self, new: DataflowSpec) -> ReloadResult:
        """Check ``new`` against the running spec; make it current when the daemon can take it."""
        with self._lock:
            old = self._spec
            problems = live_problems(old, new, alert_path=self.alert_path)
            if problems:
                return ReloadResult(False, old.version, problems=problems)
            changed = changed_sections(old, new)
            if changed:
                self._spec = new
                self._generation += 1
        METRICS.set_gauge("spec_version", "", new.version)
        return ReloadResult(True, new.version, changed=changed)


class SpecWatcher:
    """Reloads the spec file into a :class:`LiveSpec` on SIGHUP and when the file changes.

    ``load`` reads the file as the command did at start (with its command-line overrides);
    its errors (a spec that does not validate) refuse the reload with their message. Use as a
    context manager: the thread runs while the dataflow does; :meth:`install_sighup` (main
    thread only) routes SIGHUP here.
    """

    def __init__(
        self,
        path: Path,
        live: LiveSpec,
        load: Callable[[Path], DataflowSpec],
        *,
        interval: float = POLL_SECONDS,
    ) -> None:
        self.path = path
        self.live = live
        self.load = load
        self.interval = interval
        self._hup = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stamp = self._file_stamp()
        self._digest = self._file_digest()

    def install_sighup(self) -> None:
        """SIGHUP asks for a reload (Python would otherwise end the process)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, lambda signum, frame: self.request())

    def request(self) -> None:
        """Ask for a reload now (what SIGHUP does)."""
        self._hup.set()

    def __enter__(self) -> SpecWatcher:
        self._thread = threading.Thread(target=self._run, name="dte-spec-watcher", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._hup.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def check(self, *, asked: bool = False) -> ReloadResult | None:
        """Reload if asked to or if the file changed; the result, or None when nothing happened."""
        stamp = self._file_stamp()
        if not asked and stamp == self._stamp:
            return None
        self._stamp = stamp
        digest = self._file_digest()
        if not asked and digest == self._digest:
            return None  # touched, not changed
        self._digest = digest
        return self.reload(why="SIGHUP" if asked else "the file changed")

    def reload(self, why: str = "asked") -> ReloadResult:
        """Read the file and offer it; logs one line and counts the result."""
        old_version = self.live.spec.version
        try:
            new = self.load(self.path)
        except SpecError as exc:
            result = ReloadResult(False, old_version, problems=[f"invalid spec: {'; '.join(exc.problems)}"])
        except DteStreamError as exc:
            result = ReloadResult(False, old_version, problems=[str(exc)])
        else:
            result = self.live.offer(new)
        METRICS.add("spec_reloads", result="applied" if result.applied else "refused")
        line = f"{result.line(old_version)} ({why}: {self.path})"
        log.log(logging.INFO if result.applied else logging.WARNING, "%s", line)
        return result

    def _run(self) -> None:
        while not self._stop.is_set():
            asked = self._hup.wait(self.interval)
            if self._stop.is_set():
                return
            self._hup.clear()
            try:
                self.check(asked=asked)
            except Exception:  # never let the watcher die: the daemon runs on
                log.exception("spec reload failed; still running version %d", self.live.spec.version)

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _file_digest(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None
