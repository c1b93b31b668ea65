"""Graceful stop: the first SIGINT/SIGTERM asks sources to end, the dataflow then drains.

Bytewax turns a signal that arrives while it runs into a panic, skipping the sinks' close and
losing buffered rows. Instead the first signal sets :data:`STOP`; every dte-stream source
checks it in ``next_batch`` and ends its input, so the dataflow finishes normally: the twin
banks apply what is in flight, the sinks flush and close. A sink whose server is down waits
at most its close timeout for it, then ends the dataflow *without committing* the last epoch
(a re-readable source reads it again after a restart; see ``docs/reliability.md``).

A second signal sets :data:`STOP_NOW`: sinks stop waiting at once (again without committing
what they could not write), and if the process is still alive :data:`HARD_EXIT_AFTER`
seconds later it exits with code 130 without unwinding (``os._exit``), which loses nothing
that was committed and prints no engine panic. No exception is ever raised from the signal
handler into the engine.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

__all__ = [
    "HARD_EXIT_AFTER",
    "STOP",
    "STOP_NOW",
    "install_signal_handlers",
    "stop_now_requested",
    "stop_requested",
]

#: Set when a graceful stop was asked for (signal, or programmatically).
STOP = threading.Event()
#: Set by a second signal: stop waiting for anything, at once.
STOP_NOW = threading.Event()
#: Seconds after a second signal before the process exits without unwinding.
HARD_EXIT_AFTER = 10.0


def stop_requested() -> bool:
    """True once a graceful stop was asked for; sources then end their input."""
    return STOP.is_set()


def stop_now_requested() -> bool:
    """True once a second signal asked to stop at once; sinks then stop waiting for servers."""
    return STOP_NOW.is_set()


def _exit_later(seconds: float) -> None:
    """Exit with 130 after ``seconds`` unless the process has ended by then."""

    def run() -> None:
        threading.Event().wait(seconds)
        print(
            f"dte-stream: still running {seconds:g} s after the second signal: exiting now "
            "(nothing uncommitted is lost: it is read again after a restart)",
            file=sys.stderr,
            flush=True,
        )
        os._exit(130)

    threading.Thread(target=run, name="dte-hard-exit", daemon=True).start()


def _handle(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    if STOP_NOW.is_set():
        return  # already stopping at once; the hard exit follows
    if STOP.is_set():
        STOP_NOW.set()
        print(
            f"\ndte-stream: {name} received again: stopping at once (what is not written yet is "
            "not committed either)",
            file=sys.stderr,
            flush=True,
        )
        _exit_later(HARD_EXIT_AFTER)
        return
    STOP.set()
    print(f"\ndte-stream: {name} received: draining (send it again to stop at once)", file=sys.stderr)


def install_signal_handlers() -> None:
    """Route SIGINT and SIGTERM to a graceful stop (only from the main thread).

    Python leaves SIGINT ignored when the parent ignored it (a shell's background jobs) and
    does nothing on SIGTERM; both are handled here, as systemd and containers send SIGTERM.
    """
    STOP.clear()
    STOP_NOW.clear()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _handle)
        signal.signal(signal.SIGINT, _handle)
