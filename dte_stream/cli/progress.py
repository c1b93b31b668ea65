"""Live progress of a running dataflow on stderr, and the summary at the end."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from dte_stream.metrics import METRICS, Metrics

__all__ = ["Progress"]


class Progress:
    """Prints readings/s, totals, twins and dead letters while a dataflow runs.

    On a terminal the line is redrawn every ``interval`` seconds; otherwise (CI, a log file)
    one line is printed every ``log_interval`` seconds.
    """

    def __init__(
        self,
        metrics: Metrics = METRICS,
        stream: TextIO | None = None,
        interval: float = 1.0,
        log_interval: float = 5.0,
    ) -> None:
        self.metrics = metrics
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval if self.tty else log_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dte-progress", daemon=True)
        self.started = time.monotonic()
        self.peak_rate = 0.0

    def __enter__(self) -> Progress:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def line(self, rate: float) -> str:
        m = self.metrics
        elapsed = time.monotonic() - self.started
        return (
            f"[{elapsed:6.1f}s] {rate:>11,.0f} readings/s | {m.get('readings_processed'):>12,} readings"
            f" | {m.gauge('twins'):>8,} twins | {m.get('dead_letters'):>6,} dead letters"
        )

    def _loop(self) -> None:
        last_n = self.metrics.get("readings_processed")
        last_t = time.monotonic()
        while not self._stop.wait(self.interval):
            n = self.metrics.get("readings_processed")
            t = time.monotonic()
            rate = (n - last_n) / max(t - last_t, 1e-9)
            self.peak_rate = max(self.peak_rate, rate)
            last_n, last_t = n, t
            text = self.line(rate)
            if self.tty:
                self.stream.write("\r" + text)
            else:
                self.stream.write(text + "\n")
            self.stream.flush()
