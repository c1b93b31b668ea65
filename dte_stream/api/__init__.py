"""The HTTP surface of a dte-stream process: one port, ``--http HOST:PORT``.

Module layout (how a new part of the API plugs in):

* :mod:`dte_stream.api.app`: :func:`create_app` builds the FastAPI app from an
  :class:`ApiContext` (spec, data dir, tokens file, readiness) and a list of *extensions*,
  functions ``(app, context) -> None`` that add routers (``app.include_router(router,
  prefix=API_PREFIX)``) or mounts (the dashboard at ``/``). Add yours to
  :func:`~dte_stream.api.app.default_extensions` so that ``run``, ``demo`` and ``serve`` all
  serve it. OpenAPI at ``/api/v1/openapi.json``, docs at ``/api/v1/docs``.
* :mod:`dte_stream.api.health`: ``/healthz`` (alive), ``/readyz`` (sources connected, sinks
  writing, lag below the bound; :mod:`dte_stream.readiness`) and ``/metrics`` (Prometheus,
  :mod:`dte_stream.metrics`). Open without a token.
* :mod:`dte_stream.api.server`: uvicorn beside the dataflow in a background thread
  (:class:`~dte_stream.api.server.BackgroundServer`, used by ``run``/``demo``), or in the
  foreground (:func:`~dte_stream.api.server.serve_forever`, ``serve``); ``--http`` parsing.
* :mod:`dte_stream.api.v1`: the extension of the API (:func:`~dte_stream.api.v1.api_extension`):
  the routes of :mod:`dte_stream.api.routes` (twins, history, alerts, what-if) and
  :mod:`dte_stream.api.live` (Server-Sent Events), bearer tokens (:mod:`dte_stream.api.tokens`,
  :mod:`dte_stream.api.auth`), a request body limit, optional CORS, and the dashboard's static
  files (``dte_stream/api/static``) at ``/``. What the routes share is an
  :class:`~dte_stream.api.state.ApiState` in ``app.state.dte``; they read the twin state view
  (:mod:`dte_stream.view`) and the stores, never a running dataflow.

FastAPI is imported only when a command serves HTTP: ``import dte_stream.api`` is cheap.
"""

from __future__ import annotations

__all__: list[str] = []
