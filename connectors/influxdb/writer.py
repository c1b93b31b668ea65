"""The writer thread of one sink partition: take a batch from the buffer, send it, retry, repeat.

A :class:`BatchWriter` owns its transport (one connection, used by this thread only) and reads
the partition's :class:`~dte_stream.connectors.influxdb.buffer.LineBuffer`. Each batch is sent
until the server stores it, refuses it for good (dead letters), or the drop policy gives it up
(``retries.max_attempts``, ``close_timeout``); it reports every failure and success to the
buffer, which decides from them whether a full buffer may drop (``max_block``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import polars as pl

from dte_stream.batches import DeadLetter
from dte_stream.connectors.influxdb.buffer import LineBuffer
from dte_stream.connectors.influxdb.errors import InfluxDBRejected, InfluxDBUnavailable
from dte_stream.connectors.influxdb.serialise import join_lines
from dte_stream.connectors.influxdb.transport import Transport
from dte_stream.errors import ConnectorError
from dte_stream.metrics import METRICS
from dte_stream.readiness import READINESS
from dte_stream.retry import RetryPolicy
from dte_stream.spec.influxdb import InfluxDBSinkSpec

__all__ = ["BatchWriter", "DeadLetterOut", "stored_lag"]

#: Where the writer's dead letters go: the dataflow's dead-letter output (counts and stores them).
DeadLetterOut = Callable[[list[DeadLetter]], None]

log = logging.getLogger(__name__)

#: Digits of a nanosecond timestamp from 2001-09-09 to 2286: a line's last 19 characters.
_TIME_DIGITS = 19


def stored_lag(chunks: list[pl.Series], acked_ns: int) -> npt.NDArray[np.float64]:
    """Seconds from each line's timestamp to ``acked_ns``, the time InfluxDB acknowledged it.

    The timestamp is the line's last field (precision ns, as every transport writes). Lines
    timed before 2001-09-09 (fewer than 19 digits: a backfill of old data) or negative are left
    out; about 0.1 us per line, in the writer thread.

    >>> lines = pl.Series(["m v=1 1800000000000000000", "m v=2 1800000000500000000", "m v=3 5"])
    >>> stored_lag([lines], 1_800_000_001_000_000_000).tolist()
    [1.0, 0.5]
    >>> stored_lag([pl.Series(["m v=4 -1000000000000000000", "m v=5 -100000000000000000"])], 0).tolist()
    []
    """
    if not chunks:
        return np.zeros(0)
    lines = pl.concat(chunks) if len(chunks) > 1 else chunks[0]
    line = pl.col(lines.name)
    times = line.str.slice(-_TIME_DIGITS).cast(pl.Int64, strict=False)
    signed = line.str.slice(-_TIME_DIGITS - 1, 1) == "-"  # a negative time of 19 digits
    # One query: each Series operation on its own is a query of its own (some 60 us each).
    kept = lines.to_frame().select(times.filter((times >= 10 ** (_TIME_DIGITS - 1)) & ~signed))
    return np.asarray((acked_ns - kept.to_series().to_numpy()) / 1e9, dtype=np.float64)


def sink_check(spec: InfluxDBSinkSpec) -> str:
    """The ``/readyz`` check of a whole sink: its start-up check, then any write that worked.

    Each writer has a check of its own as well (``sink STEP/N``), but Bytewax builds a writer
    only when its first batch comes; this one is there from the start.
    """
    return f"sink {spec.name}"


#: How often an ongoing outage is logged again (seconds).
REPEAT_LOG = 60.0
#: How many distinct rejection messages are logged in full per worker.
MAX_LOGGED_REJECTIONS = 32
#: Refusals of a batch that are sent again in halves: too large, or some lines are bad.
_SPLIT_STATUSES = frozenset({400, 413, 422})


class BatchWriter:
    """The writer thread of one partition: take a batch, send it, retry, dead-letter, repeat."""

    def __init__(
        self,
        spec: InfluxDBSinkSpec,
        transport: Transport,
        buffer: LineBuffer,
        dead_letters: DeadLetterOut,
        key: str,
        *,
        checked: bool,
    ) -> None:
        self._spec = spec
        self._transport = transport
        self._buffer = buffer
        self._dead_letters = dead_letters
        self._checked = checked
        self._target = spec.target()
        self._policy = RetryPolicy(
            spec.retries.initial_backoff, spec.retries.max_backoff, spec.retries.max_attempts
        )
        self._rng = random.Random()
        self._ready = f"sink {key}"  # the /readyz check of this writer
        self._sink_ready = sink_check(spec)
        if checked:
            READINESS.ok(self._ready, f"{self._target} answers")
            READINESS.ok(self._sink_ready, f"{self._target} answers")
        else:
            READINESS.failed(self._ready, f"{self._target} did not answer the start-up check")
        self._abort = threading.Event()
        self._abandon = threading.Event()  # abandon: stop, write nothing more, drop nothing
        self._deadline: float | None = None
        self._error: BaseException | None = None
        self._outage_start: float | None = None
        self._outage_attempts = 0
        self._outage_logged = 0.0
        self._logged_rejections: set[str] = set()
        self._thread = threading.Thread(target=self._run, name=f"influxdb-writer-{key}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # ------------------------------------------------------------------------------------
    # the thread
    # ------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                if self._past_deadline():
                    self._drop(self._buffer.drain(), "close_timeout passed before the server took them")
                    break
                chunks = self._buffer.take(self._spec.batch_size, self._spec.flush_interval)
                if chunks is None:
                    break
                self._deliver(chunks)  # a failure here fails the buffer: flush() raises it
                self._buffer.settle(sum(c.len() for c in chunks))
        except BaseException as exc:
            self._error = exc
            self._buffer.fail(exc if isinstance(exc, ConnectorError) else ConnectorError(str(exc)))
            if not isinstance(exc, ConnectorError):
                log.exception("%s: the writer thread failed", self._target)
        finally:
            self._transport.close()

    def _deliver(self, chunks: list[pl.Series]) -> None:
        """Send one batch until it is stored, refused or dropped."""
        count = sum(c.len() for c in chunks)
        body = join_lines(chunks).encode("utf-8")
        attempt = 0
        while True:
            try:
                if not self._checked:
                    self._check()
                self._transport.write(body)
            except InfluxDBUnavailable as exc:
                attempt += 1
                METRICS.add("influxdb_write_failures")
                READINESS.failed(self._ready, str(exc))
                self._buffer.mark_failure()
                self._note_failure(exc, count)
                if self._policy.exhausted(attempt):
                    self._drop(chunks, f"{attempt} attempts failed (retries.max_attempts), the last: {exc}")
                    return
                wait = self._policy.delay(attempt, exc.retry_after, self._rng)
                if not self._sleep(wait):
                    if not self._abandon.is_set():  # abandoned lines are not committed: not lost
                        self._drop(chunks, f"close_timeout passed while retrying: {exc}")
                    return
                METRICS.add("influxdb_retries")
                continue
            except InfluxDBRejected as exc:
                self._buffer.mark_success()
                self._note_recovery()
                if exc.status in _SPLIT_STATUSES and count > 1:
                    # Too large (413), or some lines refused (400/422: InfluxDB 1.x stored the
                    # others, a "partial write"): send the halves again, so that only the lines
                    # the server refuses become dead letters. Writes are idempotent.
                    lines = pl.concat(chunks)
                    half = count // 2
                    self._deliver([lines.slice(0, half)])
                    self._deliver([lines.slice(half)])
                    return
                self._reject(chunks, count, exc)
                return
            self._buffer.mark_success()
            self._note_recovery()
            METRICS.add("influxdb_points_written", count)
            METRICS.observe_many("influxdb_stored_lag_seconds", stored_lag(chunks, time.time_ns()))
            READINESS.ok(self._ready, f"{self._target} takes writes")
            READINESS.ok(self._sink_ready, f"{self._target} takes writes")
            METRICS.add("influxdb_batches_written")
            METRICS.add("influxdb_bytes_written", len(body))
            return

    def _check(self) -> None:
        """The start-up check, when the server did not answer at build time."""
        try:
            self._transport.check()
        except InfluxDBRejected as exc:
            raise ConnectorError(str(exc)) from None
        self._checked = True

    def _sleep(self, seconds: float) -> bool:
        """Wait before the next attempt; False when the close deadline or an abort cuts it short."""
        if self._deadline is not None:
            left = self._deadline - time.monotonic()
            if left <= 0:
                return False
            if seconds > left:
                self._abort.wait(left)
                return False
        return not self._abort.wait(seconds)

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    # ------------------------------------------------------------------------------------
    # what happened, said once
    # ------------------------------------------------------------------------------------

    def _note_failure(self, exc: InfluxDBUnavailable, count: int) -> None:
        now = time.monotonic()
        self._outage_attempts += 1
        if self._outage_start is None:
            self._outage_start = now
            self._outage_logged = now
            log.warning(
                "%s; retrying with backoff (%d lines in this batch, %d buffered)",
                exc,
                count,
                len(self._buffer),
            )
        elif now - self._outage_logged >= REPEAT_LOG:
            self._outage_logged = now
            log.warning(
                "%s: still failing after %.0f s and %d attempts (%d lines buffered): %s",
                self._target,
                now - self._outage_start,
                self._outage_attempts,
                len(self._buffer),
                exc,
            )
        else:
            log.debug("%s (attempt %d)", exc, self._outage_attempts)

    def _note_recovery(self) -> None:
        if self._outage_start is not None:
            log.warning(
                "%s answers again after %.1f s and %d failed attempts",
                self._target,
                time.monotonic() - self._outage_start,
                self._outage_attempts,
            )
            self._outage_start = None
            self._outage_attempts = 0

    def _reject(self, chunks: list[pl.Series], count: int, exc: InfluxDBRejected) -> None:
        METRICS.add("influxdb_points_rejected", count)
        message = str(exc)
        if message not in self._logged_rejections and len(self._logged_rejections) < MAX_LOGGED_REJECTIONS:
            self._logged_rejections.add(message)
            log.error(
                "%s (%d point%s refused, dead letters; repeats are counted only)",
                message,
                count,
                "" if count == 1 else "s",
            )
        source = f"influxdb:{self._spec.name}"
        reason = f"refused by the server ({exc.status}): {message}"
        self._dead_letters(
            [DeadLetter(source, reason, line.encode("utf-8")) for chunk in chunks for line in chunk]
        )

    def _drop(self, chunks: list[pl.Series], why: str) -> None:
        """Give up lines: count them, say so, and hand them to the dead-letter output."""
        count = sum(c.len() for c in chunks)
        if count <= 0:
            return
        METRICS.add("influxdb_points_dropped", count)
        log.error("%s: DROPPED %d points (dead letters): %s", self._target, count, why)
        source = f"influxdb:{self._spec.name}"
        self._dead_letters(
            [DeadLetter(source, f"dropped: {why}", line.encode("utf-8")) for c in chunks for line in c]
        )

    # ------------------------------------------------------------------------------------
    # the owner
    # ------------------------------------------------------------------------------------

    def close(self, timeout: float) -> None:
        """Flush: let the thread send what is left for at most ``timeout`` seconds, then stop it."""
        self._deadline = time.monotonic() + timeout
        self._buffer.close()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abort.set()
            self._buffer.abort()
            # an attempt in flight ends within the request timeout
            self._thread.join(self._spec.timeout + 1.0)
            self._drop(self._buffer.drain(), "close_timeout passed before the server took them")
            if self._thread.is_alive():
                log.error("%s: the writer thread did not stop; leaving it behind", self._target)
        self.raise_if_failed()

    def raise_if_failed(self) -> None:
        """Raise the error that ended the writer thread, if it ended with one."""
        error = self._error
        if isinstance(error, ConnectorError):
            raise error
        if error is not None:
            raise ConnectorError(f"{self._target}: the writer failed: {error!r}") from error

    def abort(self) -> None:
        """Stop at once, dropping what is buffered (the partition was discarded unclosed)."""
        self._abort.set()
        self._buffer.abort()

    def abandon(self) -> int:
        """Stop at once and leave what is not written: its epoch is not committed, so the
        source delivers it again after a restart. Returns how many lines were left."""
        self._abandon.set()
        self._abort.set()
        self._buffer.abort()
        left = sum(c.len() for c in self._buffer.drain())
        self._thread.join(1.0)
        return left
