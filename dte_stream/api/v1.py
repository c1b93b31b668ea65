"""Plugging the API, its limits and the dashboard into the HTTP app (``dte_stream.api.app``).

:func:`install_api` adds the ``/api/v1/`` routes (:mod:`dte_stream.api.routes`), a request
body limit (413 beyond ``ctx.max_body``), CORS only for the origins given (none by default:
browsers may call the API only from the dashboard's own origin) and the dashboard's static
files at ``/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dte_stream.api.routes import router
from dte_stream.api.state import AckSender, ApiState
from dte_stream.readiness import Readiness
from dte_stream.spec.influxdb import InfluxDBSinkSpec
from dte_stream.spec.model import DataflowSpec
from dte_stream.spec.view import KafkaViewSpec

__all__ = ["STATIC_DIR", "BodyLimit", "api_extension", "install_api"]

#: The dashboard's files (HTML, JS, CSS and the vendored chart library with its licence).
STATIC_DIR = Path(__file__).parent / "static"


class BodyLimit:
    """ASGI middleware: requests with a body over ``max_body`` bytes get 413 and are not read on."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_body):
                await _too_large(send, self.max_body)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _TooLargeError
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLargeError:
            await _too_large(send, self.max_body)


class _TooLargeError(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    body = b'{"detail":"request body over %d bytes"}' % limit
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


def install_api(app: FastAPI, ctx: ApiState) -> None:
    """Add the API routes, the body limit, CORS (if origins are given) and the dashboard to ``app``."""
    app.state.dte = ctx
    app.include_router(router)
    app.add_middleware(BodyLimit, max_body=ctx.max_body)
    if ctx.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=ctx.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    if STATIC_DIR.is_dir():

        @app.get("/", include_in_schema=False)
        def dashboard() -> FileResponse:
            return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


class _AppContext(Protocol):
    """What :func:`api_extension` reads of ``dte_stream.api.app.ApiContext``."""

    @property
    def data_dir(self) -> Path | None: ...
    @property
    def tokens_file(self) -> Path | None: ...
    @property
    def spec(self) -> DataflowSpec | None: ...
    @property
    def options(self) -> dict[str, Any]: ...
    @property
    def readiness(self) -> Readiness: ...


def api_extension(app: FastAPI, context: _AppContext) -> None:
    """The extension ``create_app`` runs: the API over the context's data dir (``./dte-data`` if none).

    Options read from ``context.options``: ``cors_origins`` (list of origins), ``max_body`` (bytes),
    ``view`` (a view spec: ``serve --view``; else the spec's decides, see
    :func:`~dte_stream.api.viewsource.view_of`).
    """
    from dte_stream.api.viewsource import open_view, view_of
    from dte_stream.view.hub import DEFAULT_VIEW_DIR

    data_dir = context.data_dir if context.data_dir is not None else DEFAULT_VIEW_DIR
    sinks = context.spec.sinks if context.spec is not None else []
    influxdb = next((s for s in sinks if isinstance(s, InfluxDBSinkSpec)), None)
    kafka = view_of(context.spec, context.options.get("view"))
    state = ApiState.open(
        data_dir,
        context.tokens_file,
        open_view(data_dir, kafka, context.readiness) if kafka is not None else None,
        cors_origins=list(context.options.get("cors_origins", [])),
        max_body=int(context.options.get("max_body", 64 * 1024)),
        influxdb=influxdb,
        remote_view=kafka is not None,
        acks=_ack_sender(kafka) if kafka is not None else None,
    )
    install_api(app, state)


def _ack_sender(kafka: KafkaViewSpec) -> AckSender:
    from dte_stream.connectors.kafka.view_acks import KafkaAckWriter

    return KafkaAckWriter(kafka)
