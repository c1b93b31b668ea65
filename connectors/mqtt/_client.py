"""What the MQTT source and sinks share: one paho client, its network thread, its errors.

paho-mqtt enters dte-stream here. :class:`MqttConnection` makes the first connection in the
caller's thread and turns every way it can fail (refused, unreachable, TLS, bad credentials,
a refused subscription) into a :class:`~dte_stream.errors.ConnectorError` naming the broker
and the reason, never a paho traceback. After that, paho's network loop runs in its own
thread (``loop_start``) and reconnects with exponential backoff; each outage is logged once
when it starts and once when it ends (logger ``dte_stream.connectors.mqtt``) and counted in
the ``mqtt_disconnects`` / ``mqtt_reconnects`` metrics, never once per attempt. Secrets
never reach a log line or an error message.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from dte_stream.connectors.mqtt._paho import (
    HandshakeError,
    PahoClient,
    network_reason,
    reason_text,
    tls_context,
)
from dte_stream.errors import ConnectorError
from dte_stream.metrics import METRICS
from dte_stream.readiness import READINESS
from dte_stream.spec.mqtt import MqttConnectionSpec

__all__ = ["LOG", "MqttConnection", "reason_text"]

#: The logger of the MQTT connector.
LOG = logging.getLogger("dte_stream.connectors.mqtt")

_SESSION_TAKEN_OVER = 0x8E
#: A reconnection that holds this long (s; at least 3 reconnect delays) ends an outage.
_STABLE_SECONDS = 3.0
#: Connections lost right after reconnecting, in a row, that are reported as a tug of war.
_FLAPS = 3
#: How long closing waits for paho to write what is queued and the DISCONNECT (s).
_CLOSE_WAIT = 5.0


class MqttConnection:
    """One paho client: connected by :meth:`start`, served by paho's network thread.

    ``subscriptions`` (``(filter, qos)`` pairs) are subscribed on every connect that starts a
    new session, and on every MQTT 5 connect with retain handling 1 (retained messages only
    for subscriptions the session did not have), so a changed spec takes effect.
    ``on_new_session`` is called (in the network thread) when the broker starts a fresh session,
    also at the first connect: unacknowledged message ids of an old one are void then.

    Attributes read by the owner: ``connected``, ``session`` (a counter of fresh sessions),
    ``client`` (the paho client: set ``on_message``/``on_publish`` before :meth:`start`).
    """

    def __init__(
        self,
        spec: MqttConnectionSpec,
        *,
        client_id: str,
        who: str,
        clean_start: bool,
        session_expiry: int | None = None,
        receive_maximum: int | None = None,
        manual_ack: bool = False,
        subscriptions: Sequence[tuple[str, int]] = (),
        on_new_session: Callable[[], None] | None = None,
    ) -> None:
        self.spec = spec
        self.who = who
        self.client_id = client_id
        self._v5 = spec.protocol == "5"
        self._clean_start = clean_start
        self._subscriptions = list(subscriptions)
        self._on_new_session = on_new_session
        self.client = PahoClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if self._v5 else clean_start,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            manual_ack=manual_ack,
        )
        self._properties: Properties | None = None
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            if session_expiry:
                props.SessionExpiryInterval = int(session_expiry)
            if receive_maximum is not None:
                props.ReceiveMaximum = receive_maximum
            self._properties = props
        if spec.username is not None:
            password = spec.password.get_secret_value() if spec.password is not None else None
            self.client.username_pw_set(spec.username, password)
        elif spec.password is not None:
            self.client.username_pw_set(None, spec.password.get_secret_value())  # MQTT 5 only
        if spec.uses_tls:
            self.client.tls_set_context(tls_context(spec))
            if spec.tls is not None and not spec.tls.check_hostname:
                self.client.tls_insecure_set(True)
        # paho types the delays as int but computes with them as numbers: keep sub-second values.
        self.client.reconnect_delay_set(spec.reconnect_min_delay, spec.reconnect_max_delay)  # type: ignore[arg-type]
        self.client.connect_timeout = spec.connect_timeout
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.connected = False
        self.session = 0
        self.fatal: str | None = None
        self._started = False
        self._closed = False
        self._gone = threading.Event()  # the socket closed (set by on_disconnect)
        self._answered = threading.Event()  # first CONNACK, or the connection closed before it
        self._refused: ReasonCode | None = None
        self._subscribed = threading.Event()
        self._sub_mid: int | None = None
        self._sub_failures: list[str] = []
        self._outage_since: float | None = None
        self._outage_reasons: set[int] = set()
        self._connected_at: float | None = None
        self._session_resumed = False
        self._short_lived = 0
        self._stable_after = max(_STABLE_SECONDS, 3 * spec.reconnect_min_delay)
        self._ready = f"mqtt: {who}"  # the /readyz check of this connection
        READINESS.expect(self._ready, f"connecting to {spec.url}")

    @property
    def where(self) -> str:
        return self.spec.url

    @property
    def running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`close`."""
        return self._started and not self._closed

    # -- start and stop -------------------------------------------------------------------

    def start(self) -> None:
        """Connect, subscribe and start the network thread; raise ConnectorError if it fails.

        A broker that cannot be reached (refused, timeout) is tried again with backoff until
        ``connect_timeout``; a broker that answers with a refusal (bad credentials, not
        authorized, TLS rejected) fails at once.
        """
        spec = self.spec
        deadline = time.monotonic() + spec.connect_timeout
        delay = min(spec.reconnect_min_delay, 0.5)
        while True:
            try:
                if self._v5:
                    self.client.connect(
                        spec.host,
                        spec.port,
                        keepalive=max(1, round(spec.keepalive)),
                        clean_start=self._clean_start,
                        properties=self._properties,
                    )
                else:
                    self.client.connect(spec.host, spec.port, keepalive=max(1, round(spec.keepalive)))
                break
            except (HandshakeError, ssl.SSLError, ssl.CertificateError, socket.gaierror) as exc:
                raise self._fail(f"cannot connect: {network_reason(exc, spec)}") from None
            except OSError as exc:
                left = deadline - time.monotonic()
                if left <= delay:
                    raise self._fail(
                        f"cannot connect within connect_timeout={spec.connect_timeout:g} s: "
                        f"{network_reason(exc, spec)}"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, spec.reconnect_max_delay)
        self.client.loop_start()
        if not self._answered.wait(max(0.1, deadline - time.monotonic())):
            raise self._fail(f"no answer to CONNECT within connect_timeout={spec.connect_timeout:g} s")
        if self._refused is not None:
            raise self._fail(f"the broker refused the connection: {reason_text(self._refused)}")
        if not self.connected:
            raise self._fail(
                "the broker closed the connection before answering CONNECT "
                + (
                    "(a TLS broker does this when it requires a client certificate it did not get "
                    "or does not trust: check tls.cert_file and tls.key_file)"
                    if spec.uses_tls
                    else "(is this a TLS port? then use mqtts://)"
                )
            )
        if self._subscriptions and not self._wait_for_suback(deadline):
            raise self._fail("the broker did not answer SUBSCRIBE in time")
        if self._sub_failures:
            raise self._fail("the broker refused " + "; ".join(self._sub_failures))
        self._started = True
        LOG.info("%s: connected to %s as %s", self.who, self.where, self.client_id)

    def _wait_for_suback(self, deadline: float) -> bool:
        """Wait for the SUBACK; True when it came.

        A resumed session's backlog arrives ahead of it (up to ``receive_maximum`` messages:
        60,000 take longer than ``connect_timeout`` on a busy machine), so the wait lasts while
        the broker keeps sending, until ``connect_timeout`` passes without a byte from it.
        Starting the dataflow before the SUBACK lets a re-subscription cross the source's first
        acknowledgements, and Mosquitto then delivered some messages twice.
        """
        client = self.client
        while not self._subscribed.wait(max(0.5, min(1.0, deadline - time.monotonic()))):
            quiet = mqtt.time_func() - client._last_bytes_received
            if time.monotonic() >= deadline and quiet >= self.spec.connect_timeout:
                return False
        return True

    def _fail(self, reason: str) -> ConnectorError:
        """Close everything and return the error to raise (``from None``: no paho traceback)."""
        self.close()
        return ConnectorError(f"{self.who}: MQTT broker {self.where}: {reason}")

    def close(self) -> None:
        """Disconnect (the session stays on the broker), stop the network thread, close sockets."""
        if self._closed:
            return
        if self._started:
            self.check(closing=True)
        self._closed = True
        READINESS.forget(self._ready)
        client = self.client
        self._gone.clear()
        if client.disconnect() == MQTTErrorCode.MQTT_ERR_SUCCESS and client._thread is not None:
            # paho writes what is queued (the last PUBACKs), then the DISCONNECT, then closes the
            # socket; stopping its thread before that drops the PUBACKs (the broker resends).
            self._gone.wait(_CLOSE_WAIT)
        client.loop_stop()
        # paho closes its wake-up socket pair only in __del__; close it now so no socket is left
        # for the garbage collector (a ResourceWarning) whatever order it collects objects in.
        client._reset_sockets()
        self.connected = False
        for name in ("on_connect", "on_disconnect", "on_subscribe", "on_message", "on_publish"):
            setattr(client, name, None)

    def check(self, *, closing: bool = False) -> None:
        """Called often from the dataflow thread: raise a fatal problem; end a finished outage.

        An outage ends, and is logged as ended, once the new connection has held for a few
        seconds (or when the connection closes while connected): a connection that breaks
        right after every reconnect is one outage, not many.
        """
        if self.fatal is not None and not closing:
            raise ConnectorError(f"{self.who}: MQTT broker {self.where}: {self.fatal}")
        since, connected_at = self._outage_since, self._connected_at
        if (
            since is not None
            and connected_at is not None
            and self.connected
            and (closing or time.monotonic() - connected_at >= self._stable_after)
        ):
            self._outage_since = None
            self._short_lived = 0
            self._outage_reasons.clear()
            METRICS.add("mqtt_reconnects")
            LOG.info(
                "%s: reconnected to %s after %.1f s (%s)",
                self.who,
                self.where,
                connected_at - since,
                "session resumed" if self._session_resumed else "new session",
            )

    # -- paho callbacks (network thread) ----------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            if not self._started:
                self._refused = reason
                self._answered.set()
            elif reason.value not in self._outage_reasons:
                self._outage_reasons.add(reason.value)
                LOG.warning("%s: %s refuses to reconnect: %s", self.who, self.where, reason_text(reason))
            return
        if not flags.session_present:
            self.session += 1
            if self._on_new_session is not None:
                self._on_new_session()
            if self._on_new_session is not None and self._started:
                LOG.warning(
                    "%s: %s had no session for %s: messages queued for it while it was away are lost",
                    self.who,
                    self.where,
                    self.client_id,
                )
        self._session_resumed = flags.session_present
        self._connected_at = time.monotonic()
        self.connected = True
        if self._outage_since is not None:
            LOG.debug("%s: connected again (session present: %s)", self.who, flags.session_present)
        if self._subscriptions and (self._v5 or not flags.session_present):
            if self._v5:
                topics: list[tuple[str, Any]] = [
                    (f, SubscribeOptions(qos=q, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB))
                    for f, q in self._subscriptions
                ]
            else:
                topics = list(self._subscriptions)
            _rc, self._sub_mid = client.subscribe(topics)  # ready once the SUBACK comes
        else:
            self._subscribed.set()
            READINESS.ok(self._ready, f"connected to {self.where}")
        self._answered.set()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        if mid != self._sub_mid:
            return
        failures = [
            f"subscription {topic!r}: {reason_text(r)}"
            for (topic, _), r in zip(self._subscriptions, reasons, strict=False)
            if r.is_failure
        ]
        if failures and self._started:
            LOG.error("%s: %s refused %s", self.who, self.where, "; ".join(failures))
            METRICS.add("mqtt_subscribe_errors", len(failures))
        self._sub_failures = failures
        if failures:
            READINESS.failed(self._ready, f"{self.where} refused " + "; ".join(failures))
        else:
            READINESS.ok(self._ready, f"connected to {self.where}, subscribed")
        self._subscribed.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        props: Any,
    ) -> None:
        self.connected = False
        self._connected_at = None
        self._gone.set()
        if self._closed:
            return
        READINESS.failed(self._ready, f"not connected to {self.where}: {reason_text(reason)}")
        if not self._started:
            self._answered.set()
            return
        if reason.value == _SESSION_TAKEN_OVER:
            # Reconnecting would take the session back and start a tug of war: stop for good.
            self.fatal = f"disconnected: {reason_text(reason)} (client id {self.client_id!r})"
            LOG.error("%s: %s", self.who, self.fatal)
            client.disconnect()
            return
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            self._short_lived = 0
            METRICS.add("mqtt_disconnects")
            LOG.warning(
                "%s: lost the connection to %s (%s); reconnecting every %g to %g s (logged once per outage)",
                self.who,
                self.where,
                reason_text(reason) if reason.is_failure else "closed",
                self.spec.reconnect_min_delay,
                self.spec.reconnect_max_delay,
            )
            return
        # Lost again before the reconnection held: the same outage.
        self._short_lived += 1
        LOG.debug("%s: lost the connection again (%s)", self.who, reason_text(reason))
        if self._short_lived == _FLAPS:
            METRICS.add("mqtt_connection_flaps")
            LOG.error(
                "%s: the connection to %s breaks right after every reconnect (%d times): probably "
                "another client uses the same client id %r (the broker drops the older connection); "
                "give every dataflow and process its own client_id",
                self.who,
                self.where,
                _FLAPS,
                self.client_id,
            )
