"""The FastAPI application of one dte-stream process: operations endpoints plus plug-ins.

:func:`create_app` builds the app that ``run --http``, ``demo --http`` and ``serve`` serve on
their one port. It always has ``/healthz``, ``/readyz`` and ``/metrics``
(:mod:`dte_stream.api.health`); everything else (the ``/api/v1/...`` routers, the dashboard at
``/``) comes from *extensions*: functions ``(app, context) -> None`` that call
``app.include_router(...)`` or ``app.mount(...)``. :func:`default_extensions` lists the ones
every command serves; a new part of the API adds itself there.

The OpenAPI document is at ``/api/v1/openapi.json`` and its browsable docs at ``/api/v1/docs``.

>>> app = create_app(ApiContext(), extensions=[])
>>> sorted(app.openapi()["paths"])
['/healthz', '/metrics', '/readyz']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from dte_stream import __version__
from dte_stream.api import health
from dte_stream.api.requests import RequestMetrics
from dte_stream.readiness import READINESS, Readiness
from dte_stream.spec import DataflowSpec

__all__ = ["API_PREFIX", "ApiContext", "Extension", "create_app", "default_extensions"]

#: Where the versioned API lives.
API_PREFIX = "/api/v1"


@dataclass(frozen=True)
class ApiContext:
    """What the app's routes may read: the spec of the dataflow (None for ``serve`` without one),
    its data directory, the tokens file, and the process' readiness registry.

    ``ops_url``: where the dataflow's own process answers ``/readyz`` and ``/metrics`` when the
    app runs in a process of its own beside it (:mod:`dte_stream.api.process`); None: here.

    ``options`` carries command-line settings of extensions that have no field here.
    """

    spec: DataflowSpec | None = None
    data_dir: Path | None = None
    tokens_file: Path | None = None
    readiness: Readiness = READINESS
    options: dict[str, Any] = field(default_factory=dict)
    ops_url: str | None = None


#: A function that adds routes to the app (``app.include_router(router)``, ``app.mount(...)``).
Extension = Callable[[FastAPI, ApiContext], None]


def default_extensions() -> list[Extension]:
    """The extensions every dte-stream command serves (the API routers, the dashboard)."""
    from dte_stream.api.v1 import api_extension

    return [api_extension]


def create_app(
    context: ApiContext | None = None, *, extensions: Sequence[Extension] | None = None
) -> FastAPI:
    """The app: the operations endpoints, then each extension in order."""
    context = context if context is not None else ApiContext()
    app = FastAPI(
        title="dte-stream",
        version=__version__,
        description="Digital twins: state, history, alerts and what-if simulation.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
    )
    app.add_middleware(RequestMetrics)  # dte_api_requests_total, dte_api_request_seconds
    app.state.context = context
    app.state.readiness = context.readiness
    app.include_router(health.router)
    for extend in default_extensions() if extensions is None else extensions:
        extend(app, context)
    return app
