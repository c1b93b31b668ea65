"""Logging of a dte-stream process, configured in one place: text or JSON lines, one level.

``--log-format text|json`` and ``--log-level`` (``run``, ``demo``, ``serve``) end up in
:func:`configure`, which puts one handler on the root logger, so dte-stream, Bytewax, uvicorn
and the drivers all log the same way. Text is for a person at a terminal; JSON (one object
per line: ``time``, ``level``, ``logger``, ``message``, and ``error`` with the traceback) is
for journald, Docker and Kubernetes log collectors.

Repeats are kept down in two ways:

* :class:`RepeatFilter` (installed by :func:`configure`) lets the first of a run of records
  with the same logger, level and message template through, holds back the repeats for
  ``interval`` seconds, and then passes the next one with ``(N more like this in T s)``
  appended: a flood of the same warning becomes one line a minute.
* :class:`Outage` is for a connector that fails and retries: one warning when the failure
  starts, a reminder with the attempt count now and then, and one line when it works again
  ("once per outage, then a count").

>>> import io
>>> stream = io.StringIO()
>>> configure("info", "json", stream=stream)
>>> logging.getLogger("dte_stream.example").warning("sink %s is slow", "influx")
>>> record = json.loads(stream.getvalue())
>>> record["level"], record["logger"], record["message"]
('WARNING', 'dte_stream.example', 'sink influx is slow')
>>> configure("warning", "text")
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import threading
import time
from datetime import UTC, datetime
from typing import TextIO

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JsonFormatter",
    "Outage",
    "RepeatFilter",
    "add_logging_arguments",
    "configure",
    "json_logs",
]

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")

#: Seconds during which repeats of one message are held back.
REPEAT_INTERVAL = 60.0

_HANDLER_NAME = "dte-stream"
_PLACEHOLDER = re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[sdifrgxXeEc%]")
_json_mode = False


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (RFC 3339, UTC), level, logger, message[, error]."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return datetime.fromtimestamp(record.created, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the ``sys.stderr`` of the moment (tests and tools swap it), or a given stream."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__(stream if stream is not None else sys.stderr)
        self._follow = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        if self._follow:
            self.stream = sys.stderr
        super().emit(record)


class RepeatFilter(logging.Filter):
    """Pass the first record of a kind, hold back its repeats for ``interval`` s, then say how many.

    A kind is (logger, level, message template): ``"%s: write failed"`` with different
    arguments is one kind; a template that is little more than placeholders (``"%s"``) is
    judged by its formatted message instead. Thread-safe.
    """

    def __init__(self, interval: float = REPEAT_INTERVAL, clock: object = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self._clock = clock if callable(clock) else time.monotonic
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        template = str(record.msg)
        if len(_PLACEHOLDER.sub("", template).strip()) < 8:
            template = record.getMessage()
        key = (record.name, record.levelno, template)
        now = float(self._clock())
        with self._lock:
            first, held = self._seen.get(key, (None, 0))
            if first is not None and now - first < self.interval:
                self._seen[key] = (first, held + 1)
                return False
            self._seen[key] = (now, 0)
            if len(self._seen) > 10_000:  # bounded: forget the oldest kinds
                for old in sorted(self._seen, key=lambda k: self._seen[k][0])[:5_000]:
                    del self._seen[old]
        if held and first is not None:
            record.msg = f"{record.msg} ({held} more like this in {now - first:.0f} s)"
        return True


class Outage:
    """Log a failing dependency once per outage, then a count, and its recovery.

    >>> import io
    >>> log = logging.getLogger("dte_stream.doc.outage")
    >>> outage = Outage(log, "InfluxDB at http://127.0.0.1:8086", remind_every=3600)
    >>> outage.failed("connection refused")   # a warning
    >>> outage.failed("connection refused")   # counted, debug only
    >>> outage.failing, outage.attempts
    (True, 2)
    >>> outage.recovered()                    # a warning with the count
    >>> outage.failing
    False
    """

    def __init__(self, logger: logging.Logger, what: str, *, remind_every: float = REPEAT_INTERVAL) -> None:
        self.log = logger
        self.what = what
        self.remind_every = remind_every
        self.attempts = 0
        self._started: float | None = None
        self._reminded = 0.0

    @property
    def failing(self) -> bool:
        return self._started is not None

    def failed(self, reason: str) -> None:
        now = time.monotonic()
        self.attempts += 1
        if self._started is None:
            self._started = self._reminded = now
            self.log.warning("%s fails: %s; retrying", self.what, reason)
        elif now - self._reminded >= self.remind_every:
            self._reminded = now
            self.log.warning(
                "%s still fails after %.0f s and %d attempts: %s",
                self.what,
                now - self._started,
                self.attempts,
                reason,
            )
        else:
            self.log.debug("%s fails (attempt %d): %s", self.what, self.attempts, reason)

    def recovered(self) -> None:
        if self._started is None:
            return
        self.log.warning(
            "%s works again after %.1f s and %d failed attempts",
            self.what,
            time.monotonic() - self._started,
            self.attempts,
        )
        self._started = None
        self.attempts = 0


def configure(level: str = "info", fmt: str = "text", *, stream: TextIO | None = None) -> None:
    """Send every logger's records at ``level`` and above to ``stream`` (stderr) as ``fmt``."""
    global _json_mode  # noqa: PLW0603 - one process-wide setting, set by the entry point
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(handler)
    handler = _StderrHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else _TextFormatter())
    handler.addFilter(RepeatFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's own loggers propagate to the root once log_config=None; its access log stays off
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    _json_mode = fmt == "json"


def json_logs() -> bool:
    """True when the process logs JSON: then the CLI's own lines go through logging too."""
    return _json_mode


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--log-format`` and ``--log-level`` to a command."""
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text (default) for a terminal, json for journald/Docker/Kubernetes collectors",
    )
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, default="info", help="least severe level logged (default info)"
    )
