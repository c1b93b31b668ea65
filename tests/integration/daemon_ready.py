"""Wait for a daemon by its ``/readyz`` instead of for a fixed time.

A fixed wait is a guess that a loaded machine (three test processes on two cores) proves
wrong: an MQTT source that has not subscribed yet misses what is published, and the test
fails for a reason that is not the product's.
"""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Any

import httpx


def free_port() -> int:
    """A free loopback port (for ``--http``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_ready(port: int, daemon: subprocess.Popen[Any], timeout: float = 90.0) -> dict[str, Any]:
    """Poll ``http://127.0.0.1:PORT/readyz`` until it says ready; its answer.

    Fails at once when ``daemon`` has exited, and after ``timeout`` with the last answer (its
    reasons name what is not ready).
    """
    deadline = time.monotonic() + timeout
    last: Any = "no answer"
    while time.monotonic() < deadline:
        assert daemon.poll() is None, f"the daemon exited with {daemon.returncode} before it was ready"
        try:
            answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()
        except (httpx.TransportError, ValueError) as exc:
            last = exc  # not listening yet
        else:
            if answer.get("ready"):
                return dict(answer)
            last = answer.get("reasons")
        time.sleep(0.1)
    raise AssertionError(f"the daemon was not ready within {timeout:.0f} s (last: {last!r})")


def wait_subscribed(clients: int = 1, timeout: float = 60.0) -> None:
    """Wait until ``clients`` MQTT connections of a source in this process have their SUBACK
    (their ``/readyz`` checks are ok): a message published before reaches no subscription."""
    from dte_stream.readiness import READINESS

    deadline = time.monotonic() + timeout
    while sum(c.ok for c in READINESS.status().checks if c.name.startswith("mqtt: ")) < clients:
        assert time.monotonic() < deadline, f"the source did not subscribe within {timeout:.0f} s"
        time.sleep(0.02)
