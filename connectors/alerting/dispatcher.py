"""Delivery of alert events to every notifier, off the dataflow's thread.

:class:`AlertDispatcher` owns one background thread and one bounded queue per notifier.
:meth:`~AlertDispatcher.send` only puts events on the queues (it never waits for a network);
each thread delivers its events in order, retrying a failed delivery with exponential backoff
and jitter (:func:`backoff_delay`). A notifier that is down delays only itself: its queue
fills up, and events beyond ``queue_size`` are dropped and counted. Nothing is ever raised
into the dataflow: failures are logged (logger ``dte_stream.connectors.alerting``) and
counted in :data:`dte_stream.metrics.METRICS` per notifier::

    alerts_sent{notifier="NAME"}             events delivered
    alerts_failed_attempts{notifier="NAME"}  attempts that failed (each retry counts)
    alerts_dropped{notifier="NAME"}          events given up: retries exhausted, refused
                                             by the receiver (4xx), queue full, or left at close
    alerts_queued (gauge, part NAME)         events waiting

A notifier is anything with the :class:`Notifier` shape; :func:`make_notifier` builds the
real ones from their specs, and tests pass their own ``factory``.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from dte_stream.batches import AlertEvent
from dte_stream.connectors.alerting.errors import LOG, DeliveryError
from dte_stream.errors import ConnectorError
from dte_stream.metrics import METRICS
from dte_stream.retry import RetryPolicy
from dte_stream.spec.notify import NotifierRetrySpec, NotifierSpec

__all__ = [
    "LOG",
    "AlertDispatcher",
    "DeliveryError",
    "Notifier",
    "backoff_delay",
    "make_notifier",
    "metric_name",
    "retry_policy",
]


class Notifier(Protocol):
    """One integration: delivers one event per call, from its dispatcher thread only.

    ``deliver`` returns once the receiver has the event, or raises :class:`DeliveryError`
    (any other exception counts as a retryable failure). ``refresh`` is called every
    ``refresh_interval`` seconds (None: never) between events, for receivers that must hear
    about active alerts again (Alertmanager). ``close`` releases connections.
    """

    refresh_interval: float | None

    def deliver(self, event: AlertEvent) -> None: ...

    def refresh(self) -> None: ...

    def close(self) -> None: ...


def metric_name(counter: str, notifier: str) -> str:
    """The METRICS name of a per-notifier counter.

    >>> metric_name("alerts_sent", "ops")
    'alerts_sent{notifier="ops"}'
    """
    return f'{counter}{{notifier="{notifier}"}}'


def retry_policy(retries: NotifierRetrySpec) -> RetryPolicy:
    """The project's one retry policy (:mod:`dte_stream.retry`) with a notifier's settings."""
    return RetryPolicy(retries.backoff, retries.max_backoff, retries.max_attempts)


def backoff_delay(attempt: int, retries: NotifierRetrySpec, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): exponential, jittered.

    ``retries.backoff * 2**(attempt-1)`` capped at ``retries.max_backoff``, times 0.5-1.0
    (:class:`dte_stream.retry.RetryPolicy`, shared with the InfluxDB writer).

    >>> r = NotifierRetrySpec(backoff=1.0, max_backoff=8.0)
    >>> [round(backoff_delay(n, r, random.Random(0)), 3) for n in (1, 2, 3, 4, 5)]
    [0.922, 1.844, 3.689, 7.378, 7.378]
    """
    return retry_policy(retries).delay(attempt, rng=rng)


def make_notifier(spec: NotifierSpec) -> Notifier:
    """The notifier of a spec (connections are opened lazily, in the dispatcher's thread)."""
    if spec.kind == "alertmanager":
        from dte_stream.connectors.alerting.alertmanager import AlertmanagerNotifier

        return AlertmanagerNotifier(spec)
    if spec.kind == "webhook":
        from dte_stream.connectors.alerting.webhook import WebhookNotifier

        return WebhookNotifier(spec)
    if spec.kind == "slack":
        from dte_stream.connectors.alerting.slack import SlackNotifier

        return SlackNotifier(spec)
    if spec.kind == "mqtt":
        from dte_stream.connectors.alerting.messaging import MqttNotifier

        return MqttNotifier(spec)
    from dte_stream.connectors.alerting.messaging import KafkaNotifier

    return KafkaNotifier(spec)


class _Lane:
    """One notifier's queue and thread."""

    def __init__(self, spec: NotifierSpec, notifier: Notifier) -> None:
        self.spec = spec
        self.name = spec.name
        self.notifier = notifier
        self.states = spec.wanted_states()
        self._queue: deque[AlertEvent] = deque()
        self._cond = threading.Condition()
        self._busy = False  # an event is taken and being delivered
        self._stopping = False
        self._full_since: float | None = None
        self._rng = random.Random()
        self._sent = metric_name("alerts_sent", self.name)
        self._failed = metric_name("alerts_failed_attempts", self.name)
        self._dropped = metric_name("alerts_dropped", self.name)
        self.thread = threading.Thread(target=self._run, name=f"dte-alerts-{self.name}", daemon=True)

    # -- called from the dataflow ----------------------------------------------------------

    def offer(self, events: Sequence[AlertEvent]) -> None:
        wanted = [e for e in events if e.state in self.states]
        if not wanted:
            return
        with self._cond:
            if self._stopping:
                self._drop(len(wanted), "the dispatcher is closed")
                return
            room = self.spec.queue_size - len(self._queue) - self._busy
            taken = wanted[: max(room, 0)]
            self._queue.extend(taken)
            if len(taken) < len(wanted):
                if self._full_since is None:
                    self._full_since = time.monotonic()
                    LOG.error(
                        "notifier %s: %d events wait (queue_size); newer events are dropped until it "
                        "catches up (logged once per episode)",
                        self.name,
                        self.spec.queue_size,
                    )
                METRICS.add(self._dropped, len(wanted) - len(taken))
            METRICS.set_gauge("alerts_queued", self.name, len(self._queue))
            self._cond.notify_all()

    def idle(self) -> bool:
        with self._cond:
            return not self._queue and not self._busy

    def wait_idle(self, deadline: float) -> bool:
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            left = len(self._queue)
            self._queue.clear()
            if left:
                self._drop(left, "left in the queue at close")
            METRICS.set_gauge("alerts_queued", self.name, 0)
            self._cond.notify_all()

    def _drop(self, count: int, why: str) -> None:
        METRICS.add(self._dropped, count)
        LOG.warning("notifier %s: %d events dropped: %s", self.name, count, why)

    # -- the lane's thread -----------------------------------------------------------------

    def _run(self) -> None:
        interval = self.notifier.refresh_interval
        next_refresh = time.monotonic() + interval if interval else None
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    if next_refresh is not None and time.monotonic() >= next_refresh:
                        break
                    timeout = None if next_refresh is None else max(0.0, next_refresh - time.monotonic())
                    self._cond.wait(timeout)
                if self._stopping:
                    break
                event = self._queue.popleft() if self._queue else None
                self._busy = event is not None
                METRICS.set_gauge("alerts_queued", self.name, len(self._queue))
            if event is None:
                self._refresh()
                next_refresh = time.monotonic() + interval if interval else None
                continue
            try:
                self._deliver(event)
            finally:
                with self._cond:
                    self._busy = False
                    if self._full_since is not None and not self._queue:
                        LOG.info("notifier %s: caught up, its queue is empty again", self.name)
                        self._full_since = None
                    self._cond.notify_all()
        self._close_notifier()

    def _refresh(self) -> None:
        try:
            self.notifier.refresh()
        except Exception as exc:
            METRICS.add(self._failed)
            LOG.warning("notifier %s: resending active alerts failed: %s", self.name, _reason(exc))

    def _deliver(self, event: AlertEvent) -> None:
        policy = retry_policy(self.spec.retries)
        attempt = 0
        failing_since: float | None = None
        while True:
            attempt += 1
            try:
                self.notifier.deliver(event)
            except Exception as exc:
                METRICS.add(self._failed)
                retryable = not isinstance(exc, DeliveryError) or exc.retryable
                gave_up = not retryable or policy.exhausted(attempt)
                if gave_up:
                    METRICS.add(self._dropped)
                    LOG.error(
                        "notifier %s: dropped the %s event of alert %s after %d attempt%s: %s",
                        self.name,
                        event.state,
                        event.alert_id,
                        attempt,
                        "" if attempt == 1 else "s",
                        _reason(exc),
                    )
                    return
                if failing_since is None:
                    failing_since = time.monotonic()
                    LOG.warning(
                        "notifier %s: delivery of alert %s failed, retrying (logged once per event): %s",
                        self.name,
                        event.alert_id,
                        _reason(exc),
                    )
                wish = exc.retry_after if isinstance(exc, DeliveryError) else None
                delay = policy.delay(attempt, retry_after=wish, rng=self._rng)
                with self._cond:
                    if self._cond.wait_for(lambda: self._stopping, delay):
                        self._drop(1, f"alert {event.alert_id} was still being retried at close")
                        return
                continue
            METRICS.add(self._sent)
            if failing_since is not None:
                LOG.info(
                    "notifier %s: delivered alert %s after %d attempts (%.1f s)",
                    self.name,
                    event.alert_id,
                    attempt,
                    time.monotonic() - failing_since,
                )
            return

    def _close_notifier(self) -> None:
        try:
            self.notifier.close()
        except Exception as exc:
            LOG.warning("notifier %s: closing failed: %s", self.name, _reason(exc))


def _reason(exc: BaseException) -> str:
    """An exception as one line (our own errors already name the receiver, without secrets)."""
    if isinstance(exc, ConnectorError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class AlertDispatcher:
    """Alert events to every notifier of a spec, in the background, with retries.

    ``send`` returns at once; each notifier delivers in its own thread, in the order events
    were sent (so one alert's events keep their order). ``flush(timeout)`` waits until every
    queue is empty; ``close(timeout)`` drains like flush, then drops what is left (counted)
    and closes the connections. Also a context manager.

    >>> from dte_stream.spec.notify import NOTIFIERS
    >>> class Printer:
    ...     refresh_interval = None
    ...     def deliver(self, event): print("delivered", event.alert_id, event.state)
    ...     def refresh(self): pass
    ...     def close(self): pass
    >>> specs = NOTIFIERS.validate_python([{"kind": "webhook", "name": "doc", "url": "http://x"}])
    >>> e = AlertEvent("p-1/hot", "p-1", "pump", "hot", "firing", "critical", 0, 0)
    >>> with AlertDispatcher(specs, factory=lambda spec: Printer()) as dispatcher:
    ...     dispatcher.send([e])
    ...     dispatcher.flush(5.0)
    delivered p-1/hot firing
    True
    """

    def __init__(
        self,
        specs: Sequence[NotifierSpec],
        *,
        factory: Callable[[NotifierSpec], Notifier] = make_notifier,
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ConnectorError(f"notifier names must be unique, got {names}")
        self._lanes = [_Lane(spec, factory(spec)) for spec in specs]
        self._closed = False
        for lane in self._lanes:
            lane.thread.start()

    @property
    def names(self) -> list[str]:
        """The notifiers' names, in spec order."""
        return [lane.name for lane in self._lanes]

    def send(self, events: Sequence[AlertEvent]) -> None:
        """Queue ``events`` for every notifier whose ``states`` include theirs; never blocks long."""
        if not events:
            return
        for lane in self._lanes:
            lane.offer(events)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event sent so far is delivered or dropped; False on timeout."""
        deadline = time.monotonic() + timeout
        return all(lane.wait_idle(deadline) for lane in self._lanes)

    def close(self, timeout: float = 10.0) -> bool:
        """Drain (up to ``timeout``), then stop the threads and close the connections.

        Events still queued or being retried at the deadline are dropped and counted.
        Returns True when everything was delivered (or dropped by policy) before the deadline.
        Idempotent.
        """
        if self._closed:
            return True
        self._closed = True
        deadline = time.monotonic() + timeout
        drained = self.flush(timeout)
        for lane in self._lanes:
            lane.stop()
        for lane in self._lanes:
            lane.thread.join(max(0.5, deadline - time.monotonic()))
            if lane.thread.is_alive():
                LOG.warning("notifier %s: its thread is still busy after close", lane.name)
        return drained

    def __enter__(self) -> AlertDispatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
