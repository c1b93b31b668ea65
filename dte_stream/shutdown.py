"""Graceful stop: the first SIGINT/SIGTERM asks sources to end, the dataflow then drains.

Bytewax turns a signal that arrives while it runs into a panic, skipping the sinks' close and
losing buffered rows. Instead the first signal sets :data:`STOP`; every dte-stream source
checks it in ``next_batch`` and ends its input, so the dataflow finishes normally: the twin
banks apply what is in flight, the sinks flush and close. A second signal stops at once.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

__all__ = ["STOP", "install_signal_handlers", "stop_requested"]

#: Set when a graceful stop was asked for (signal, or programmatically).
STOP = threading.Event()


def stop_requested() -> bool:
    """True once a graceful stop was asked for; sources then end their input."""
    return STOP.is_set()


def _handle(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    if STOP.is_set():
        raise KeyboardInterrupt(name)
    STOP.set()
    print(f"\ndte-stream: {name} received: draining (send it again to stop at once)", file=sys.stderr)


def install_signal_handlers() -> None:
    """Route SIGINT and SIGTERM to a graceful stop (only from the main thread).

    Python leaves SIGINT ignored when the parent ignored it (a shell's background jobs) and
    does nothing on SIGTERM; both are handled here, as systemd and containers send SIGTERM.
    """
    STOP.clear()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _handle)
        signal.signal(signal.SIGINT, _handle)
