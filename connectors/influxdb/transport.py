"""How a ready line-protocol body reaches the server: the v1 ``/write`` API or the v2 client.

Both transports take one request body (newline-separated lines, UTF-8) and either return
(the server stored it: 2xx) or raise :class:`InfluxDBUnavailable` (retry later: no answer,
429, 5xx; with the server's ``Retry-After``) or :class:`InfluxDBRejected` (a permanent 4xx,
with the server's own message). Nothing here retries, sleeps or buffers: that is the writer's
job (:mod:`dte_stream.connectors.influxdb.sink`).

* :class:`V1Transport` speaks InfluxDB 1.x's ``POST /write?db=&rp=&precision=ns`` over one
  keep-alive ``http.client`` connection, with HTTP basic auth (never ``u``/``p`` in the query
  string, which servers and proxies log).
* :class:`V2Transport` hands the body to influxdb-client's ``WriteApi`` in ``SYNCHRONOUS``
  mode (``/api/v2/write``, token auth): no ``Point`` objects, no client-side batching.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import logging
import socket
import ssl
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

import urllib3

from dte_stream.connectors.http_headers import parse_retry_after
from dte_stream.connectors.influxdb.errors import InfluxDBError, InfluxDBRejected, InfluxDBUnavailable
from dte_stream.spec.influxdb import InfluxDBSinkSpec

__all__ = ["Transport", "V1Transport", "V2Transport", "make_transport", "parse_retry_after"]

log = logging.getLogger(__name__)

#: Longest Retry-After honoured (seconds); a larger value is taken as this.
_USER_AGENT = "dte-stream-influxdb-sink"
_STALE_CONNECTION = (
    http.client.RemoteDisconnected,
    BrokenPipeError,
    ConnectionResetError,
    ConnectionAbortedError,
)


class Transport(Protocol):
    """One connection to a server, used by one writer thread at a time."""

    #: Where the points go, without secrets (for messages).
    target: str

    def write(self, body: bytes) -> None:
        """Send one request body; raise InfluxDBUnavailable or InfluxDBRejected when not stored."""
        ...

    def check(self) -> None:
        """Check at start that the server takes writes (an empty write); create the database if asked.

        Raises InfluxDBRejected when the settings can never work (no such database, bad
        credentials) and InfluxDBUnavailable when the server does not answer (yet).
        """
        ...

    def close(self) -> None:
        """Release the connection; idempotent."""
        ...


def make_transport(spec: InfluxDBSinkSpec) -> Transport:
    """The transport for ``spec.api``."""
    return V1Transport(spec) if spec.api == "v1" else V2Transport(spec)


def _server_message(body: bytes, header: str | None) -> str:
    """The server's own words: InfluxDB 1.x ``{"error": ...}``, 2.x ``{"message": ...}``, or text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text) if text.startswith("{") else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("error", "message"):
            if isinstance(data.get(key), str):
                text = data[key]
                break
    if not text and header:
        text = header
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def classify(
    status: int, message: str, retry_after: str | None, spec: InfluxDBSinkSpec, target: str
) -> InfluxDBError | None:
    """The error for an HTTP answer, or None for success; the message says what to do."""
    if 200 <= status < 300:
        return None
    said = f": {message}" if message else ""
    if status == 429 or status >= 500:
        wait = parse_retry_after(retry_after)
        return InfluxDBUnavailable(f"{target} answered {status}{said}", status, wait)
    if status == 404 and "database not found" in message:
        return InfluxDBRejected(
            f"{target}: database {spec.database!r} not found (create it, or set create_database: true)",
            status,
        )
    if status == 404 and "bucket" in message:
        return InfluxDBRejected(f"{target}: bucket {spec.bucket!r} not found{said}", status)
    if status == 401:
        what = "username and password" if spec.api == "v1" else "token"
        return InfluxDBRejected(f"{target}: authentication failed, check the {what}{said}", status)
    if status == 403:
        return InfluxDBRejected(f"{target}: not allowed to write{said}", status)
    if status == 413:
        return InfluxDBRejected(f"{target}: request too large, lower batch_size{said}", status)
    return InfluxDBRejected(f"{target} refused the write ({status}){said}", status)


def _network_error(target: str, exc: BaseException) -> InfluxDBUnavailable:
    """A transport failure as one line with its likely fix (the driver error table)."""
    reason = str(exc) or type(exc).__name__
    inner: BaseException = exc
    for _ in range(4):  # urllib3 wraps the socket error (NewConnectionError, MaxRetryError)
        nested = getattr(inner, "reason", None) or inner.__cause__ or inner.__context__
        if not isinstance(nested, BaseException):
            break
        inner = nested
    for kinds, say in _NETWORK_CAUSES:
        if isinstance(exc, kinds) or isinstance(inner, kinds) or any(k.__name__ in reason for k in kinds):
            return InfluxDBUnavailable(f"{target} is not reachable: {say}")
    if "refused" in reason.lower():
        return InfluxDBUnavailable(f"{target} is not reachable: {_NETWORK_CAUSES[0][1]}")
    return InfluxDBUnavailable(f"{target} is not reachable: {reason}")


#: Transport failures, most specific first, with what to check.
_NETWORK_CAUSES: tuple[tuple[tuple[type[BaseException], ...], str], ...] = (
    (
        (ConnectionRefusedError, urllib3.exceptions.NewConnectionError),
        "connection refused (is InfluxDB running at this address? check url)",
    ),
    (
        (ssl.SSLCertVerificationError,),
        "the server's TLS certificate is not trusted (set ca_file to the CA that signed it)",
    ),
    (
        (ssl.SSLError, urllib3.exceptions.SSLError),
        "the TLS handshake failed (is the server speaking https? check url, ca_file, verify_tls)",
    ),
    ((socket.gaierror,), "the host name does not resolve (check url)"),
    (
        (TimeoutError, socket.timeout, urllib3.exceptions.TimeoutError),
        "no answer in time (check url, timeout)",
    ),
)


#: Answers to the empty start-up write that mean the settings can never work.
_FATAL_AT_START = (401, 403, 404)


def _probe(transport: V1Transport | V2Transport) -> None:
    """Send an empty write: only missing targets and refused credentials are fatal.

    Servers differ in what they answer to an empty body (InfluxDB 1.x: 204); any other
    refusal is left for the real writes to report.
    """
    try:
        transport.write(b"")
    except InfluxDBRejected as exc:
        if exc.status in _FATAL_AT_START:
            raise
        log.debug(
            "%s: the empty start-up write was refused (%s); not a settings problem", transport.target, exc
        )


def _ssl_context(spec: InfluxDBSinkSpec) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(spec.ca_file) if spec.ca_file else None)
    if not spec.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class V1Transport:
    """InfluxDB 1.x ``/write`` over one keep-alive connection (``http.client``)."""

    def __init__(self, spec: InfluxDBSinkSpec) -> None:
        parts = urlsplit(spec.url)
        self.spec = spec
        self.target = spec.target()
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._base = parts.path.rstrip("/")
        query = {"db": spec.database or "", "precision": "ns"}
        if spec.retention_policy:
            query["rp"] = spec.retention_policy
        self._write_path = f"{self._base}/write?{urlencode(query)}"
        self._headers = {"Content-Type": "text/plain; charset=utf-8", "User-Agent": _USER_AGENT}
        if spec.username is not None:
            password = spec.password.get_secret_value() if spec.password is not None else ""
            token = base64.b64encode(f"{spec.username}:{password}".encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {token}"
        if spec.gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._context = _ssl_context(spec) if self._https else None
        self._conn: http.client.HTTPConnection | None = None
        self._used = False  # whether the open connection already carried a request

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._context is not None:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self.spec.timeout, context=self._context
                )
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self.spec.timeout)
            self._used = False
        return self._conn

    def _request(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, Any]:
        """POST ``body``; reconnect once when a kept-alive connection turns out closed."""
        for attempt in (1, 2):
            conn = self._connection()
            reused = self._used
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except _STALE_CONNECTION as exc:
                self.close()
                if reused and attempt == 1:
                    continue  # the server closed the idle connection: not an outage
                raise _network_error(self.target, exc) from exc
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise _network_error(self.target, exc) from exc
            self._used = True
            if response.will_close:
                self.close()
            return response.status, data, response.headers
        raise AssertionError("unreachable")  # pragma: no cover

    def write(self, body: bytes) -> None:
        payload = gzip.compress(body, compresslevel=1) if self.spec.gzip else body
        status, data, headers = self._request(self._write_path, payload, self._headers)
        error = classify(
            status,
            _server_message(data, headers.get("X-Influxdb-Error")),
            headers.get("Retry-After"),
            self.spec,
            self.target,
        )
        if error is not None:
            raise error

    def check(self) -> None:
        if self.spec.create_database:
            self._create_database()
        _probe(self)

    def _create_database(self) -> None:
        name = (self.spec.database or "").replace("\\", "\\\\").replace('"', '\\"')
        statement = 'CREATE DATABASE "' + name + '"'
        path = f"{self._base}/query?{urlencode({'q': statement})}"
        headers = {k: v for k, v in self._headers.items() if k != "Content-Encoding"}
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        status, data, response_headers = self._request(path, b"", headers)
        error = classify(
            status,
            _server_message(data, response_headers.get("X-Influxdb-Error")),
            response_headers.get("Retry-After"),
            self.spec,
            self.target,
        )
        if error is not None:
            raise error
        try:
            results = json.loads(data)["results"]
        except (ValueError, KeyError, TypeError):
            return
        for result in results if isinstance(results, list) else []:
            if isinstance(result, dict) and result.get("error"):
                raise InfluxDBRejected(f"{self.target}: CREATE DATABASE failed: {result['error']}", status)
        log.info("%s: database %r created (or already there)", self.target, self.spec.database)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class V2Transport:
    """InfluxDB 2.x ``/api/v2/write`` through influxdb-client's synchronous ``WriteApi``."""

    def __init__(self, spec: InfluxDBSinkSpec) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS
        from influxdb_client.domain.write_precision import WritePrecision

        self.spec = spec
        self.target = spec.target()
        self._precision = WritePrecision.NS
        self._client: Any = InfluxDBClient(
            url=spec.url,
            token=spec.token.get_secret_value() if spec.token is not None else "",
            org=spec.org or "",
            timeout=int(spec.timeout * 1000),
            enable_gzip=spec.gzip,
            verify_ssl=spec.verify_tls,
            ssl_ca_cert=str(spec.ca_file) if spec.ca_file is not None else None,
        )
        self._write_api: Any = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, body: bytes) -> None:
        from influxdb_client.rest import ApiException

        try:
            self._write_api.write(
                bucket=self.spec.bucket, org=self.spec.org, record=body, write_precision=self._precision
            )
        except ApiException as exc:
            body_bytes = exc.body if isinstance(exc.body, bytes) else str(exc.body or "").encode()
            headers: Any = exc.headers or {}
            error = classify(
                int(exc.status or 0),
                _server_message(body_bytes, headers.get("X-Influxdb-Error")) or str(exc.reason or ""),
                headers.get("Retry-After"),
                self.spec,
                self.target,
            )
            raise (
                error or InfluxDBUnavailable(f"{self.target}: {exc.reason}", int(exc.status or 0))
            ) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _network_error(self.target, exc) from exc

    def check(self) -> None:
        _probe(self)

    def close(self) -> None:
        if self._client is not None:
            self._write_api.close()
            self._client.close()
            self._client = None
