"""The API's own metrics: every request counted and timed, by its route's template.

``dte_api_requests_total{method, route, status}`` and ``dte_api_request_seconds{route}`` (time
from the request's arrival to the start of its answer: for a Server-Sent Events stream, until
the stream opens, not its whole life). ``route`` is the template (``/api/v1/twins/{twin_id}``),
never the path a client sent, so the series stay few whatever the clients ask; a path that
matches no route counts as ``unmatched``. A plain ASGI middleware: about 10 us per request.

>>> import asyncio
>>> from dte_stream.metrics import Metrics
>>> async def app(scope, receive, send):
...     await send({"type": "http.response.start", "status": 204, "headers": []})
>>> metrics = Metrics()
>>> asyncio.run(RequestMetrics(app, metrics)({"type": "http", "method": "GET"}, None, _ignore))
>>> metrics.get("api_requests", method="GET", route="unmatched", status="204")
1
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from dte_stream.metrics import METRICS, Metrics

__all__ = ["RequestMetrics"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _ignore(message: Message) -> None:
    pass


def _route(scope: Scope) -> str:
    route = scope.get("route")  # set by the router once a route matched
    if route is None:
        return "unmatched"
    path = getattr(route, "path", None)
    return str(path) if path else "/"


class RequestMetrics:
    """ASGI middleware: counts and times each HTTP request in ``metrics`` (this process's)."""

    def __init__(self, app: App, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics if metrics is not None else METRICS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        answered = False

        async def timed_send(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start" and not answered:
                answered = True
                self._record(scope, str(message["status"]), time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        except BaseException:
            if not answered:
                self._record(scope, "500", time.perf_counter() - start)
            raise

    def _record(self, scope: Scope, status: str, seconds: float) -> None:
        route = _route(scope)
        self.metrics.add("api_requests", method=str(scope.get("method", "")), route=route, status=status)
        self.metrics.observe("api_request_seconds", seconds, route=route)
