"""Serving the app with uvicorn: beside a running dataflow, or in the foreground.

``run --http`` and ``demo --http`` serve from a background thread (:class:`BackgroundServer`)
while Bytewax runs in the main thread: uvicorn leaves signal handling to the main thread when
it is not in it, so SIGINT/SIGTERM keep reaching dte-stream's graceful stop. The socket is
bound before the thread starts, so a port in use is one clear error before the dataflow
starts. ``serve`` runs uvicorn in the foreground (:func:`serve_forever`), where uvicorn's own
signal handling stops it.

>>> parse_address("127.0.0.1:8080"), parse_address("[::1]:9000"), parse_address(":8080")
(('127.0.0.1', 8080), ('::1', 9000), ('0.0.0.0', 8080))
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import socket
import threading
from types import TracebackType
from typing import TYPE_CHECKING

from dte_stream.errors import ConfigError

if TYPE_CHECKING:  # uvicorn and FastAPI load only when a command serves HTTP
    import uvicorn
    from fastapi import FastAPI

__all__ = [
    "BackgroundServer",
    "add_http_argument",
    "bind",
    "parse_address",
    "serve_forever",
    "uvicorn_server",
]

log = logging.getLogger(__name__)


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``; an empty host is every interface) -> ``(host, port)``."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ConfigError(f"--http {text!r}: expected HOST:PORT, for example 127.0.0.1:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"--http {text!r}: the port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"--http {text!r}: the port must be 0-65535")
    return host or "0.0.0.0", port


def _address_type(text: str) -> tuple[str, int]:
    try:
        return parse_address(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--http {text!r}: ")) from None


def add_http_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--http HOST:PORT`` to a command."""
    parser.add_argument(
        "--http",
        metavar="HOST:PORT",
        type=_address_type,
        help="serve /healthz, /readyz, /metrics and the API on this address (for example 127.0.0.1:8080)",
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or a :class:`ConfigError` naming the address and why."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"--http {host}:{port}: cannot listen there ({exc.strerror or exc}); "
            "pick another port or stop what uses it"
        ) from None
    sock.set_inheritable(True)
    return sock


def uvicorn_server(app: FastAPI, log_level: str) -> uvicorn.Server:
    """A uvicorn server for ``app`` as dte-stream runs it (here and in :mod:`dte_stream.api.process`)."""
    import uvicorn

    # log_config=None: uvicorn logs through dte-stream's logging setup (dte_stream.logs)
    config = uvicorn.Config(
        app, log_config=None, log_level=log_level.lower(), access_log=False, lifespan="on"
    )
    return uvicorn.Server(config)


class BackgroundServer:
    """uvicorn in a daemon thread; ``with BackgroundServer(app, host, port):`` serves meanwhile."""

    def __init__(self, app: FastAPI, host: str, port: int, *, log_level: str = "warning") -> None:
        self.host = host
        self._socket = bind(host, port)
        self.port: int = self._socket.getsockname()[1]
        self._server = uvicorn_server(app, log_level)
        self._thread = threading.Thread(target=self._serve, name="dte-http", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{self.port}"

    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except Exception:
            log.exception("the HTTP server at %s stopped", self.url)

    def start(self, timeout: float = 10.0) -> BackgroundServer:
        """Start serving; returns once uvicorn accepts connections."""
        self._thread.start()
        started = threading.Event()

        def wait() -> None:
            while self._thread.is_alive() and not self._server.started:
                started.wait(0.01)

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        waiter.join(timeout)
        if not self._server.started:
            self.stop()
            raise ConfigError(f"the HTTP server at {self.url} did not start within {timeout:.0f} s")
        log.info("serving HTTP at %s (/healthz, /readyz, /metrics, /api/v1/docs)", self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, finish the requests in flight (at most ``timeout`` seconds)."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(1.0)
        with contextlib.suppress(OSError):
            self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve_forever(app: FastAPI, host: str, port: int, *, log_level: str = "warning") -> None:
    """Serve in the foreground until SIGINT/SIGTERM (``dte-stream serve``)."""
    sock = bind(host, port)
    log.info("serving HTTP at http://%s:%d", host, port)
    try:
        uvicorn_server(app, log_level).run(sockets=[sock])
    finally:
        sock.close()
