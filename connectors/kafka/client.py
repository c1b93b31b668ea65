"""What the Kafka source and sinks share: building clients, logging, mapping driver errors.

confluent-kafka errors enter dte-stream here: :func:`connector_error` turns a
``KafkaException`` into a :class:`~dte_stream.errors.ConnectorError` naming the component and
the brokers, and :func:`make_client` turns a refused configuration into a
:class:`~dte_stream.errors.ConfigError`. librdkafka's own log lines go to the Python logger
``dte_stream.connectors.kafka`` instead of stderr, and its asynchronous errors (a broker
down, a failed authentication) are logged once per kind until the client works again
(:class:`ErrorLog`), never once per retry. Secrets never reach a log line: configurations
are shown through :meth:`KafkaConnectionSpec.masked_config` only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException

from dte_stream.errors import ConfigError, ConnectorError
from dte_stream.spec.kafka import KafkaConnectionSpec

__all__ = ["LOG", "ErrorLog", "connector_error", "error_text", "make_client"]

#: The logger of the Kafka connector, and of librdkafka's log lines.
LOG = logging.getLogger("dte_stream.connectors.kafka")

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


class ErrorLog:
    """librdkafka's ``error_cb``: logs each kind of asynchronous error once until :meth:`clear`.

    librdkafka retries a lost broker on its own and reports every failed attempt; one log
    line per outage is what an operator needs. Fatal errors are kept in :attr:`fatal` so the
    Bytewax thread can raise them (callbacks must not raise into librdkafka).
    """

    def __init__(self, who: str) -> None:
        self.who = who
        self.seen: set[int] = set()
        self.fatal: KafkaError | None = None

    def __call__(self, error: KafkaError) -> None:
        if error.fatal():
            self.fatal = error
        code = error.code()
        if code not in self.seen:
            self.seen.add(code)
            LOG.warning("%s: %s (logged once until the connection works again)", self.who, error_text(error))

    def clear(self) -> None:
        """The client works again: log the next problem anew."""
        if self.seen:
            LOG.info("%s: the connection to Kafka works again", self.who)
            self.seen.clear()

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
    full = {**config, "logger": LOG, "error_cb": errors}
    try:
        return factory(full)
    except (KafkaException, ValueError, TypeError) as exc:
        shown = ", ".join(f"{k}={v}" for k, v in spec.masked_config().items())
        raise ConfigError(
            f"{errors.who}: Kafka refused the settings ({error_text(exc)}); settings: {shown}"
        ) from None
