"""The generic webhook notifier, its HMAC signature, and the HTTP POST the HTTP notifiers share.

The body is the event's JSON (:meth:`AlertEvent.to_json_dict`). With a secret, the request
carries ``X-DTE-Timestamp`` (Unix seconds) and ``X-DTE-Signature: sha256=<hex>``, the
HMAC-SHA256 of ``<timestamp>.<body>`` (see :func:`signature`); :func:`verify_signature` is the
receiver's side, also used by the tests.

:func:`post_json` sends one request with the standard library (``http.client``) and turns
every outcome into success or a :class:`DeliveryError`: no answer, 408, 425, 429 and 5xx are
retryable (with the server's ``Retry-After``); other answers are refusals that retrying
cannot fix. Messages name only ``scheme://host:port``: a path or query may hold a token.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import socket
import ssl
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

import orjson

from dte_stream.batches import AlertEvent
from dte_stream.connectors.alerting.errors import DeliveryError
from dte_stream.connectors.http_headers import parse_retry_after
from dte_stream.spec.notify import WebhookNotifierSpec, http_target

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookNotifier",
    "parse_retry_after",
    "post_json",
    "signature",
    "signed_headers",
    "verify_signature",
    "webhook_body",
]

SIGNATURE_HEADER = "X-DTE-Signature"
TIMESTAMP_HEADER = "X-DTE-Timestamp"
_USER_AGENT = "dte-stream-alerts"
_RETRYABLE_STATUS = frozenset({408, 425, 429})


def webhook_body(event: AlertEvent) -> bytes:
    """The request body of the webhook: the event's JSON (UTF-8, compact, key order fixed)."""
    return orjson.dumps(event.to_json_dict())


def signature(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 keyed by ``secret`` of ``timestamp + "." + body``.

    >>> signature("s3cret", "1700000000", b'{"a":1}')
    'sha256=1698a50bc74d1ff1db85c4e0a5297c2ad9fdba245d5737cdb789e4cc6e098940'
    """
    key = secret.encode() if isinstance(secret, str) else secret
    mac = hmac.new(key, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def signed_headers(secret: str | bytes, body: bytes, now: float | None = None) -> dict[str, str]:
    """The two signature headers for ``body`` at ``now`` (Unix seconds; default: the clock)."""
    timestamp = str(int(time.time() if now is None else now))
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature(secret, timestamp, body)}


def verify_signature(
    secret: str | bytes,
    body: bytes,
    timestamp: str | None,
    signature_header: str | None,
    *,
    tolerance: float = 300.0,
    now: float | None = None,
) -> bool:
    """The receiver's check: the signature matches and the timestamp is within ``tolerance`` s.

    >>> h = signed_headers("s3cret", b"{}", now=1_700_000_000)
    >>> verify_signature("s3cret", b"{}", h[TIMESTAMP_HEADER], h[SIGNATURE_HEADER], now=1_700_000_010)
    True
    >>> verify_signature("s3cret", b"{}", h[TIMESTAMP_HEADER], h[SIGNATURE_HEADER], now=1_700_001_000)
    False
    """
    if not timestamp or not signature_header or not timestamp.isdigit():
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, timestamp, body), signature_header.strip())


def post_json(
    url: str,
    body: bytes,
    *,
    timeout: float,
    who: str,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, bytes]:
    """POST ``body`` (JSON) to ``url``; return ``(status, response body)`` for a 2xx answer.

    Raises :class:`DeliveryError` otherwise: retryable for no answer, 408, 425, 429 and 5xx,
    not retryable for other answers. ``who`` starts the message (``notifier NAME``).
    """
    parts = urlsplit(url)
    target = http_target(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    sent = {
        "Content-Type": "application/json",
        "User-Agent": _USER_AGENT,
        "Connection": "close",
        **(headers or {}),
    }
    try:
        conn.request("POST", path, body=body, headers=sent)
        response = conn.getresponse()
        answer = response.read()
        status = response.status
        retry_after = response.getheader("Retry-After")
    except ssl.SSLCertVerificationError as exc:
        raise DeliveryError(
            f"{who}: {target}: TLS certificate not accepted ({exc.verify_message})", retryable=False
        ) from None
    except socket.gaierror as exc:
        raise DeliveryError(f"{who}: {target}: cannot resolve the host ({exc.strerror})") from None
    except ConnectionRefusedError:
        raise DeliveryError(f"{who}: {target}: connection refused (is it running?)") from None
    except TimeoutError:
        raise DeliveryError(f"{who}: {target}: no answer within timeout={timeout:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise DeliveryError(f"{who}: {target}: {type(exc).__name__}: {exc}") from None
    finally:
        conn.close()
    if 200 <= status < 300:
        return status, answer
    said = " ".join(answer.decode("utf-8", "replace").split())[:200]
    message = f"{who}: {target} answered {status}" + (f": {said}" if said else "")
    if status in _RETRYABLE_STATUS or status >= 500:
        raise DeliveryError(message, retry_after=parse_retry_after(retry_after))
    raise DeliveryError(message, retryable=False)


class WebhookNotifier:
    """POSTs each event's JSON to ``spec.url``, signed when ``spec.secret`` is set.

    Each attempt is signed with a fresh timestamp, so a retry long after the first attempt
    is not taken for a replay. Receivers can drop repeats by ``(alert_id, sequence)``.

    >>> spec = WebhookNotifierSpec(kind="webhook", url="http://127.0.0.1:9/hook", secret="k")
    >>> e = AlertEvent("p-1/hot", "p-1", "pump", "hot", "firing", "critical", 0, 0)
    >>> sorted(WebhookNotifier(spec).request_headers(webhook_body(e)))
    ['X-DTE-Signature', 'X-DTE-Timestamp']
    """

    refresh_interval: float | None = None

    def __init__(self, spec: WebhookNotifierSpec) -> None:
        self.spec = spec
        self.who = f"notifier {spec.name}"

    def request_headers(self, body: bytes) -> dict[str, str]:
        """The spec's headers plus, with a secret, the signature headers for ``body`` now."""
        headers = {key: value.get_secret_value() for key, value in self.spec.headers.items()}
        if self.spec.secret is not None:
            headers.update(signed_headers(self.spec.secret.get_secret_value(), body))
        return headers

    def deliver(self, event: AlertEvent) -> None:
        body = webhook_body(event)
        post_json(
            self.spec.url, body, timeout=self.spec.timeout, who=self.who, headers=self.request_headers(body)
        )

    def refresh(self) -> None:
        """Nothing to resend: a webhook hears each state change once."""

    def close(self) -> None:
        """No connection is kept between requests."""
