"""What the Kafka source and sinks share: building clients, logging, mapping driver errors.

confluent-kafka errors enter dte-stream here: :func:`connector_error` turns a
``KafkaException`` into a :class:`~dte_stream.errors.ConnectorError` naming the component and
the brokers, and :func:`make_client` turns a refused configuration into a
:class:`~dte_stream.errors.ConfigError`. librdkafka's own log lines go to the Python logger
``dte_stream.connectors.kafka.librdkafka`` (a standard ``logging`` logger) instead of stderr,
each kind of line once per outage and then only counted (:class:`DriverLog`; a 5 s broker
restart used to write thousands of lines), and its asynchronous errors (a broker down, a
failed authentication) are logged once per kind until the client works again
(:class:`ErrorLog`), never once per retry. Secrets never reach a log line: configurations
are shown through :meth:`KafkaConnectionSpec.masked_config` only.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from dte_stream.errors import ConfigError, ConnectorError
from dte_stream.spec.kafka import KafkaConnectionSpec

__all__ = [
    "DRIVER_LOG",
    "LOG",
    "DriverLog",
    "ErrorLog",
    "check_cluster",
    "connector_error",
    "error_text",
    "make_client",
]

#: The logger of the Kafka connector.
LOG = logging.getLogger("dte_stream.connectors.kafka")
#: The logger of librdkafka's own log lines (rate-limited by :class:`DriverLog`).
DRIVER_LOG = logging.getLogger("dte_stream.connectors.kafka.librdkafka")
#: While an outage lasts, how often the count of repeated driver lines is logged (seconds).
DRIVER_REPEAT_LOG = 60.0

ClientT = TypeVar("ClientT")


def error_text(exc: BaseException | KafkaError) -> str:
    """A driver error as one readable line (the librdkafka error name and its message)."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        exc = exc.args[0]
    if isinstance(exc, KafkaError):
        return f"{exc.str()} ({exc.name()})"
    return str(exc) or type(exc).__name__


def connector_error(what: str, spec: KafkaConnectionSpec, exc: BaseException | KafkaError) -> ConnectorError:
    """A :class:`ConnectorError` saying what failed, at which brokers, and the driver's reason."""
    return ConnectorError(f"{what} at Kafka {spec.bootstrap_servers}: {error_text(exc)}")


class DriverLog:
    """librdkafka's ``logger``: each kind of line (its facility, e.g. ``FAIL``) once per outage.

    librdkafka logs every failed connection attempt of every broker thread; during a broker
    restart that is thousands of identical lines. The first line of each kind is logged (to
    :data:`DRIVER_LOG`), repeats are counted and summarised once a minute while the outage
    lasts and once when the client works again (:meth:`reset`). Debug lines (the ``debug``
    setting) pass through unlimited: someone asked for them.
    """

    def __init__(self, who: str, clock: Callable[[], float] = time.monotonic, *, quiet: bool = False) -> None:
        self.who = who
        self._clock = clock
        self._quiet = quiet
        self._lock = threading.Lock()
        self._repeats: dict[str, int] = {}  # facility -> lines not shown
        self._summarised = 0.0

    def log(self, level: int, msg: str, *args: object) -> None:
        """Called by confluent-kafka as ``log(level, "%s [%s] %s", facility, client, text)``."""
        facility = str(args[0]) if args else ""
        text = str(args[2]) if len(args) >= 3 else (msg % args if args else msg)
        if level < logging.WARNING or self._quiet:
            DRIVER_LOG.log(
                min(level, logging.DEBUG) if self._quiet else level,
                "%s: librdkafka %s: %s",
                self.who,
                facility,
                text,
            )
            return
        with self._lock:
            first = facility not in self._repeats
            if first:
                self._repeats[facility] = 0
                if len(self._repeats) == 1:
                    self._summarised = self._clock()
            else:
                self._repeats[facility] += 1
            summary = not first and self._clock() - self._summarised >= DRIVER_REPEAT_LOG
            if summary:
                self._summarised = self._clock()
                counts = ", ".join(f"{n} {fac}" for fac, n in self._repeats.items() if n)
        if first:
            DRIVER_LOG.log(
                level, "%s: librdkafka %s: %s (repeats are counted, not shown)", self.who, facility, text
            )
        elif summary:
            DRIVER_LOG.log(level, "%s: librdkafka still failing: %s lines not shown", self.who, counts)

    def reset(self) -> None:
        """The client works again: say how many lines were not shown, and show the next anew."""
        with self._lock:
            if not self._repeats:
                return
            hidden = sum(self._repeats.values())
            self._repeats.clear()
        if hidden:
            DRIVER_LOG.info(
                "%s: librdkafka wrote %d more lines during the outage (not shown)", self.who, hidden
            )


class ErrorLog:
    """librdkafka's ``error_cb``: logs each kind of asynchronous error once until :meth:`clear`.

    librdkafka retries a lost broker on its own and reports every failed attempt; one log
    line per outage is what an operator needs. Fatal errors are kept in :attr:`fatal` so the
    Bytewax thread can raise them (callbacks must not raise into librdkafka).
    """

    def __init__(self, who: str, *, quiet: bool = False) -> None:
        self.who = who
        self.quiet = quiet  # collect only (the start-up check reports the cause in its own error)
        self.seen: set[int] = set()
        self.fatal: KafkaError | None = None
        #: the last asynchronous error of each kind since the client last worked (preflight reads them)
        self.recent: dict[int, KafkaError] = {}
        #: librdkafka's log lines of this client
        self.driver = DriverLog(who, quiet=quiet)

    def __call__(self, error: KafkaError) -> None:
        if error.fatal():
            self.fatal = error
        code = error.code()
        self.recent[code] = error
        if code not in self.seen and not self.quiet:
            self.seen.add(code)
            LOG.warning("%s: %s (logged once until the connection works again)", self.who, error_text(error))

    def clear(self) -> None:
        """The client works again: log the next problem anew."""
        if self.seen:
            LOG.info("%s: the connection to Kafka works again", self.who)
            self.seen.clear()
            self.recent.clear()
        self.driver.reset()

    def raise_fatal(self, spec: KafkaConnectionSpec) -> None:
        """Raise a fatal error that librdkafka reported, if any (the client is unusable)."""
        if self.fatal is not None:
            raise connector_error(f"{self.who}: fatal error", spec, self.fatal)


def make_client(
    factory: Callable[[dict[str, Any]], ClientT],
    spec: KafkaConnectionSpec,
    config: dict[str, Any],
    errors: ErrorLog,
) -> ClientT:
    """Create a confluent-kafka client; a configuration librdkafka refuses is a ConfigError.

    ``config`` is the full configuration (secrets revealed); the error message shows the
    masked one, and names the setting when librdkafka does.
    """
    full = {**config, "logger": errors.driver, "error_cb": errors}
    try:
        return factory(full)
    except (KafkaException, ValueError, TypeError) as exc:
        shown = ", ".join(f"{k}={v}" for k, v in spec.masked_config().items())
        raise ConfigError(
            f"{errors.who}: Kafka refused the settings ({error_text(exc)}); settings: {shown}"
        ) from None


def whole_topic_config(spec: KafkaConnectionSpec, group_prefix: str) -> dict[str, Any]:
    """Consumer settings to read a topic whole, from its start, under a group of its own.

    The group id is new each time (``group_prefix`` and a random suffix) and nothing is
    committed, so every process that reads (the twin view's readers, the acknowledgement inboxes)
    sees every record.
    """
    return {
        **spec.client_config(),
        "group.id": f"{group_prefix}-{uuid.uuid4().hex}",
        "enable.auto.commit": "false",
        "enable.auto.offset.store": "false",
        "auto.offset.reset": "earliest",
    }


def topic_partitions(consumer: Any, topic: str, timeout: float) -> list[int] | None:
    """The partitions of ``topic`` (sorted) once the brokers' metadata has them, else None (a topic
    not created yet, or just created); raises KafkaException when no broker answers."""
    metadata: Any = consumer.list_topics(topic, timeout=timeout)
    found = metadata.topics.get(topic)
    if found is not None and found.error is None and found.partitions:
        return sorted(found.partitions)
    return None


# ----------------------------------------------------------------------------------------------
# The start-up check: one clear line per way a Kafka connection can fail before anything runs
# ----------------------------------------------------------------------------------------------

#: librdkafka error codes of refused credentials, and of a failed TLS handshake.
_AUTH_CODES = frozenset({KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED})
_TLS_CODES = frozenset({KafkaError._SSL})
_UNKNOWN_TOPIC = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC})


def _startup_error(
    who: str, spec: KafkaConnectionSpec, errors: ErrorLog, exc: KafkaException
) -> ConnectorError:
    """The one-line cause and fix of a failed start-up check (the driver error table).

    librdkafka reports why a connection failed through ``error_cb`` (collected in
    ``errors.recent``) and the call itself only times out, so both are read here.
    """
    recent = list(errors.recent.values())
    codes = {e.code() for e in recent}
    detail = error_text(recent[0]) if recent else error_text(exc)
    texts = " ".join([error_text(e) for e in recent] + [error_text(exc)])
    servers = spec.bootstrap_servers
    if codes & _AUTH_CODES or "Authentication failed" in texts or "SASL" in texts:
        auth = next((e for e in recent if e.code() in _AUTH_CODES), None)
        why = error_text(auth) if auth is not None else detail
        return ConnectorError(
            f"{who}: Kafka at {servers} refused the credentials ({why}); check settings "
            "sasl.mechanism, sasl.username and sasl.password"
        )
    if codes & _TLS_CODES or "SSL" in texts or "certificate" in texts:
        tls = next((e for e in recent if e.code() in _TLS_CODES or "SSL" in error_text(e)), None)
        why = error_text(tls) if tls is not None else detail
        return ConnectorError(
            f"{who}: the TLS handshake with Kafka at {servers} failed ({why}); check settings "
            "ssl.ca.location (the CA that signed the broker's certificate) and security.protocol"
        )
    return ConnectorError(
        f"{who}: no Kafka broker answers at {servers} within {spec.startup_timeout:g} s ({detail}); "
        "start the broker, or fix bootstrap_servers (and settings security.protocol if the "
        "listener uses TLS or SASL)"
    )


#: Error codes that mean "ask again in a moment": a partition whose leader is being elected, or
#: whose metadata has not reached every broker yet (just after the topic was created, or while a
#: broker restarts). Whoever meets one retries until its own timeout.
_NOT_READY_YET = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,  # librdkafka's local code for the same
    }
)


def not_ready_yet(exc: KafkaException) -> bool:
    """True when ``exc`` says the partition has no leader (yet): worth asking again shortly."""
    return bool(exc.args) and isinstance(exc.args[0], KafkaError) and exc.args[0].code() in _NOT_READY_YET


def _await_leaders(admin: Any, topics: list[str], spec: KafkaConnectionSpec, who: str) -> None:
    """Wait until every partition of ``topics`` has a leader (a new topic's are elected after
    its creation returns), at most ``spec.startup_timeout`` seconds."""
    deadline = time.monotonic() + spec.startup_timeout
    while True:
        try:
            metadata: Any = admin.list_topics(timeout=spec.startup_timeout)
        except KafkaException as exc:
            raise connector_error(
                f"{who}: cannot read the metadata of the created {', '.join(map(repr, topics))}", spec, exc
            ) from None
        waiting = [t for t in topics if not _has_leaders(metadata.topics.get(t))]
        if not waiting:
            return
        if time.monotonic() >= deadline:
            raise ConnectorError(
                f"{who}: created topic{'s' if len(waiting) > 1 else ''} {', '.join(map(repr, waiting))}, "
                f"but Kafka at {spec.bootstrap_servers} elected no leader for every partition within "
                f"{spec.startup_timeout:g} s (startup_timeout); look at the brokers' logs"
            )
        time.sleep(0.1)


def _has_leaders(topic: Any) -> bool:
    if topic is None or topic.error is not None or not topic.partitions:
        return False
    return all(p.error is None and p.leader >= 0 for p in topic.partitions.values())


def check_cluster(
    spec: KafkaConnectionSpec, who: str, topics: list[str], topic_config: dict[str, str] | None = None
) -> None:
    """Before the dataflow starts: the brokers answer, take the credentials, and have ``topics``.

    Raises a :class:`ConnectorError` whose one line names the cause and the fix. A missing
    topic is created when ``spec.create_topic`` says how (with ``topic_config``, e.g.
    ``cleanup.policy=compact``); otherwise the message gives the command that creates it.
    """
    errors = ErrorLog(who, quiet=True)
    timeout_ms = str(max(1, round(spec.startup_timeout * 1000)))
    config = {**spec.client_config(), "socket.connection.setup.timeout.ms": timeout_ms}
    admin = make_client(AdminClient, spec, config, errors)
    try:
        metadata: Any = admin.list_topics(timeout=spec.startup_timeout)
    except KafkaException as exc:
        admin.poll(0.5)  # serve error_cb: it says why (refused credentials, TLS, no broker)
        raise _startup_error(who, spec, errors, exc) from None
    missing = []
    for topic in topics:
        found = metadata.topics.get(topic)
        if found is None or (found.error is not None and found.error.code() in _UNKNOWN_TOPIC):
            missing.append(topic)
        elif found.error is not None:
            raise connector_error(f"{who}: cannot use topic {topic!r}", spec, found.error)
    if not missing:
        return
    create = spec.create_topic
    if create is None:
        configs = "".join(f" --config {k}={v}" for k, v in (topic_config or {}).items())
        commands = "; ".join(
            f"kafka-topics.sh --bootstrap-server {spec.bootstrap_servers} --create --topic {topic} "
            f"--partitions N{configs}"
            for topic in missing
        )
        raise ConnectorError(
            f"{who}: topic{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
            f"{'do' if len(missing) > 1 else 'does'} not exist at Kafka {spec.bootstrap_servers}; "
            f"create it ({commands}) or set create_topic: {{partitions: N}} in the spec"
        )
    futures = admin.create_topics(
        [
            NewTopic(
                t,
                num_partitions=create.partitions,
                replication_factor=create.replication_factor,
                config=dict(topic_config or {}),
            )
            for t in missing
        ],
        request_timeout=spec.startup_timeout,
    )
    for topic, future in futures.items():
        try:
            future.result(spec.startup_timeout)
        except KafkaException as exc:
            if (
                exc.args
                and isinstance(exc.args[0], KafkaError)
                and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS
            ):
                continue  # created meanwhile by someone else: fine
            raise connector_error(f"{who}: cannot create topic {topic!r}", spec, exc) from None
        LOG.info(
            "%s: created topic %r (%d partitions, replication factor %d)",
            who,
            topic,
            create.partitions,
            create.replication_factor,
        )
    _await_leaders(admin, missing, spec, who)
