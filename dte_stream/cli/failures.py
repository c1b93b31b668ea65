"""How a failed command reports itself: one line with the cause and the fix, never a panic.

An error raised inside a running dataflow reaches the command wrapped by the engine (Bytewax
wraps it in its own runtime errors, one per layer, and its Rust side prints a panic with a
backtrace to stderr). :func:`root_cause` finds the error that dte-stream raised on purpose
(a :class:`~dte_stream.errors.DteStreamError`, whose message already names the cause and the
fix) in the chain; :func:`one_line` says it in one line; :func:`quiet_engine_panics` keeps the
engine's panic text off stderr while everything else written there passes through. ``--debug``
shows all of it.

>>> from dte_stream.errors import ConnectorError
>>> try:
...     try:
...         raise ConnectorError("InfluxDB at http://127.0.0.1:8086: authentication failed")
...     except ConnectorError as inner:
...         raise RuntimeError("(src/worker.rs:428:34): error building DynamicSink") from inner
... except RuntimeError as outer:
...     print(one_line(outer))
InfluxDB at http://127.0.0.1:8086: authentication failed
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

from dte_stream.errors import DteStreamError
from dte_stream.redaction import redact

__all__ = ["exit_code", "one_line", "quiet_engine_panics", "root_cause"]

#: Lines of a Rust panic report (the engine's), as the default panic hook prints them.
_PANIC_START = re.compile(rb"^thread '[^']*' panicked at ")
_PANIC_BODY = re.compile(
    rb"^(Box<dyn Any>|stack backtrace:|\s+\d+: |\s+at |note: (run with `RUST_BACKTRACE|Some details))"
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def root_cause(exc: BaseException) -> BaseException:
    """The error that explains ``exc``: the first DteStreamError in its chain, else the innermost."""
    chain = list(_chain(exc))
    for error in chain:
        if isinstance(error, DteStreamError):
            return error
    return chain[-1]


def one_line(exc: BaseException) -> str:
    """``exc`` as one line: the cause (and the fix, for dte-stream's own errors), no password."""
    return redact(_one_line(root_cause(exc)))


def _one_line(cause: BaseException) -> str:
    text = str(cause).strip()
    if isinstance(cause, DteStreamError):
        return text or type(cause).__name__
    if isinstance(cause, OSError) and cause.strerror:
        where = f" ({cause.filename})" if cause.filename else ""
        return f"{cause.strerror}{where}"
    first = text.splitlines()[0] if text else ""
    return f"unexpected {type(cause).__name__}{': ' + first if first else ''} (run with --debug for details)"


def exit_code(exc: BaseException) -> int:
    """2 for dte-stream's own errors (settings, services), 1 for anything unexpected."""
    return 2 if isinstance(root_cause(exc), DteStreamError) else 1


@contextlib.contextmanager
def quiet_engine_panics(enabled: bool = True) -> Iterator[None]:
    """Drop the engine's Rust panic reports from stderr (file descriptor 2); pass the rest.

    The panic report only repeats, at length, an error that the command reports in one line.
    stderr is replaced by a pipe that a thread copies back to the real stderr, leaving out the
    lines of a panic report. No-op when not ``enabled`` (``--debug``).
    """
    if not enabled:
        yield
        return
    os.environ.setdefault("RUST_BACKTRACE", "0")
    if os.environ["RUST_BACKTRACE"] not in ("0", ""):
        os.environ["RUST_BACKTRACE"] = "0"
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    copier = threading.Thread(target=_copy, args=(read_end, real), name="dte-stderr", daemon=True)
    copier.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)  # closes the pipe's last write end: the copier sees EOF
        copier.join(5)
        os.close(real)


def _copy(read_end: int, out: int) -> None:
    """Copy lines from ``read_end`` to ``out``, without the lines of panic reports."""
    in_panic = False
    pending = b""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while True:
            data = pipe.read(65536)
            if not data:
                break
            pending += data
            *lines, pending = pending.split(b"\n")
            kept = []
            for line in lines:
                if _PANIC_START.match(line):
                    in_panic = True
                    continue
                if in_panic and (_PANIC_BODY.match(line) or not line.strip()):
                    continue
                in_panic = False
                kept.append(line + b"\n")
            if kept:
                _write_all(out, b"".join(kept))
    if pending and not _PANIC_START.match(pending):
        _write_all(out, pending)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
