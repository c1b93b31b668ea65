"""paho-mqtt's client with one repair and one addition, and its failures in words.

:class:`PahoClient` closes a socket whose TLS handshake failed and counts PINGREQ/PINGRESP per
socket; :func:`network_reason` and :func:`reason_text` turn socket, TLS and MQTT 5 reason-code
failures into one line with what an operator should check; :func:`tls_context` builds the TLS
context of an ``mqtts://`` connection. :class:`~dte_stream.connectors.mqtt._client.MqttConnection`
is the one user.

>>> reason_text(0x86)
'reason 134 (0x86): check username and password'
"""

from __future__ import annotations

import socket
import ssl
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from dte_stream.errors import ConfigError
from dte_stream.spec.mqtt import MqttConnectionSpec

__all__ = ["HandshakeError", "PahoClient", "network_reason", "reason_text", "tls_context"]

#: MQTT 5 reason codes (CONNACK, SUBACK, DISCONNECT) with what an operator should check.
_HINTS = {
    0x80: "the broker gave no reason",
    0x84: 'the broker does not speak this protocol version; try protocol: "3.1.1"',
    0x85: "the broker refuses this client id; set client_id",
    0x86: "check username and password",
    0x87: "check username/password or the client certificate, and the broker's access rules",
    0x88: "the broker is not available",
    0x89: "the broker is busy",
    0x8A: "this client is banned by the broker",
    0x8C: "the broker wants another authentication method",
    0x8E: "another client connected with the same client id; give each dataflow and process its own",
    0x8F: "the broker refuses this topic filter",
    0x97: "the broker's quota is exceeded",
    0x9E: "the broker does not support shared subscriptions ($share/...)",
    0xA2: "the broker does not support wildcard subscriptions",
}


def reason_text(reason: ReasonCode | int) -> str:
    """A reason code as ``Name (0xNN): what to check``."""
    code = reason if isinstance(reason, int) else reason.value
    name = str(reason) if isinstance(reason, ReasonCode) else f"reason {code}"
    hint = _HINTS.get(code)
    return f"{name} (0x{code:02X})" + (f": {hint}" if hint else "")


class HandshakeError(OSError):
    """The TLS handshake failed; ``__cause__`` is the error from the ssl module or the socket."""


class PahoClient(mqtt.Client):
    """paho's client with one repair and one addition.

    The repair: a socket whose TLS handshake fails is closed. paho (2.x) leaves such a socket
    to the garbage collector (a ``ResourceWarning``, and a file descriptor held meanwhile), on
    the first connection and on every reconnect attempt. The TLS context is always ours
    (:func:`tls_context`), with the hostname check in it.

    The addition: PINGREQ/PINGRESP counted per socket, so that the source knows which of its
    PUBACKs the broker has (a broker handles a connection's packets in order: the PINGRESP to
    a PINGREQ sent after some PUBACKs means they arrived). ``socket_no`` counts the sockets
    (from 1, raised before each CONNECT), ``pings``/``pongs`` the PINGREQs sent and PINGRESPs
    received on the current one. ``ping_lock`` is held while a reconnect replaces the socket
    (paho drops the packets still queued for the old one then) and while the source queues
    its PUBACKs and PINGREQ, so both always belong to one socket.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ping_lock = threading.RLock()
        self.socket_no = 0
        self.pings = 0
        self.pongs = 0

    def reconnect(self) -> MQTTErrorCode:
        with self.ping_lock:
            self.socket_no += 1
            self.pings = self.pongs = 0
            return super().reconnect()

    def _send_pingreq(self) -> MQTTErrorCode:
        with self.ping_lock:
            rc = super()._send_pingreq()
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.pings += 1
            return rc

    def send_pingreq(self) -> None:
        """Queue a PINGREQ behind what is queued (the source's confirmation of its PUBACKs)."""
        self._send_pingreq()

    def _handle_pingresp(self) -> MQTTErrorCode:
        rc = super()._handle_pingresp()
        self.pongs += 1
        return rc

    def _ssl_wrap_socket(self, tcp_sock: socket.socket) -> ssl.SSLSocket:
        context = self._ssl_context
        if context is None:  # pragma: no cover - paho only calls this with TLS configured
            raise ValueError("TLS is not configured")
        ssl_sock = context.wrap_socket(tcp_sock, server_hostname=self._host, do_handshake_on_connect=False)
        try:
            ssl_sock.settimeout(self._connect_timeout)
            ssl_sock.do_handshake()
        except OSError as exc:  # ssl.SSLError is an OSError
            ssl_sock.close()
            raise HandshakeError(str(exc)) from exc
        return ssl_sock


def network_reason(exc: BaseException, spec: MqttConnectionSpec) -> str:
    """An exception from opening the connection as one readable line with a hint."""
    if isinstance(exc, HandshakeError):
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLError):
            return network_reason(cause, spec)
        return f"TLS handshake failed ({cause}); is this a plain mqtt:// port?"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"the broker's TLS certificate was not accepted: {exc.verify_message or exc.reason} "
            "(check tls.ca_file, and tls.check_hostname against the url's host)"
        )
    if isinstance(exc, ssl.SSLError):
        text = (exc.reason or str(exc)).lower()
        if "wrong version" in text or "record layer" in text:
            return f"TLS handshake failed ({exc.reason}); is this a plain mqtt:// port?"
        return (
            f"TLS handshake failed ({exc.reason or exc}); the broker may require a client "
            "certificate (tls.cert_file, tls.key_file) signed by a CA it trusts"
        )
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host {spec.host!r} ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused: nothing listens on port {spec.port} (is the broker running?)"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer within connect_timeout={spec.connect_timeout:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def tls_context(spec: MqttConnectionSpec) -> ssl.SSLContext:
    """The TLS context of an ``mqtts://`` connection; unreadable files are ConfigErrors."""
    tls = spec.tls
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls and tls.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls.ca_file: cannot load {tls.ca_file if tls else ''}: {exc}") from None
    if tls is not None and tls.cert_file is not None:
        password = tls.key_password.get_secret_value() if tls.key_password is not None else None
        try:
            ctx.load_cert_chain(
                str(tls.cert_file), str(tls.key_file) if tls.key_file else None, password=password
            )
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
            raise ConfigError(
                f"tls.cert_file/tls.key_file: cannot load {tls.cert_file} ({reason}); "
                "check the paths, and tls.key_password for an encrypted key"
            ) from None
    if tls is not None and not tls.check_hostname:
        ctx.check_hostname = False
    return ctx
