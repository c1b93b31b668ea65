"""The twin view's writer process, the child's end: it writes what its dataflow process sends.

:class:`~dte_stream.view.process.ViewProcess` (the parent's end) starts it as
``python -m dte_stream.view.process`` (whose ``__main__`` is :func:`main` here) and sends it
frames: an 8-byte big-endian length and a pickle, both ways (:func:`write_frame`,
:func:`read_frame`). The child opens the writer its config asks for (SQLite, a Kafka view topic
or both), builds and writes the records of each message, answers each with the CPU time it took
and the twins Kafka did not take, and ends when the pipe closes or its parent is gone.

>>> import io
>>> pipe = io.BytesIO()
>>> write_frame(pipe, ("ack", 1, [], 0.5))
>>> _ = pipe.seek(0)
>>> read_frame(pipe), read_frame(pipe)
(('ack', 1, [], 0.5), None)
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import queue
import signal
import struct
import sys
import threading
import time
from typing import IO, Any

__all__ = ["DRAIN_S", "GC_EVERY", "PARENT_CHECK_S", "main", "read_frame", "run_child", "write_frame"]

log = logging.getLogger("dte_stream.view.process")

_LENGTH = struct.Struct(">Q")


def write_frame(stream: IO[bytes], obj: object) -> None:
    """Send ``obj`` as one frame."""
    data = pickle.dumps(obj, protocol=5)
    stream.write(_LENGTH.pack(len(data)))
    stream.write(data)
    stream.flush()


def read_frame(stream: IO[bytes]) -> Any:
    """The next frame's object; None at the end of the stream (or a frame cut short)."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)  # frames come only from our own parent or child


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


#: The child's cyclic garbage collection runs once every this many frames (see :func:`run_child`).
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
            while (frame := read_frame(stdin)) is not None:
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


def run_child(stdin: IO[bytes], stdout: IO[bytes]) -> int:
    """Write what the parent sends until it closes the pipe or ends (crashed, killed), then close
    the writer (Kafka: its deliveries are waited for) and end."""
    from dte_stream.errors import DteStreamError
    from dte_stream.logs import configure
    from dte_stream.view.publisher import EPOCH_FLUSH_S, AsyncViewWriter
    from dte_stream.view.records import record_chunks

    config = read_frame(stdin)
    if config is None:
        return 1
    configure(config.get("log_level", "warning"), config.get("log_format", "text"))
    parent = config.get("parent_pid")
    if parent is not None and os.getppid() != parent:
        return 1  # the parent went before the writer was open: nobody to write for
    try:
        writer = _open_writer(config)
    except DteStreamError as exc:
        write_frame(stdout, ("ready", str(exc)))
        return 1
    write_frame(stdout, ("ready", None))
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
                write_frame(stdout, ("ack", tag, undelivered, time.process_time() - start))
            except (OSError, ValueError):
                answering = False  # the parent is gone: write what it sent all the same
    close = getattr(writer, "close", None)
    if close is not None:
        close()
    return 0


def main() -> None:
    """The child process's entry point (``python -m dte_stream.view.process``)."""
    from dte_stream import allocator

    # Frames of a few hundred kB to 1 MB are freed after each write: with glibc's rising mmap
    # threshold they would come from the heap and stay (see dte_stream.allocator).
    allocator.tune()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the dataflow decides when the view ends
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    frames_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, never into the frames
    code = run_child(sys.stdin.buffer, frames_out)
    logging.shutdown()
    sys.stderr.flush()
    # Not sys.exit: the frame reader thread may still be blocked reading a pipe that another
    # process holds open, and the interpreter's shutdown would wait for its lock; the writer is
    # closed by now.
    os._exit(code)
