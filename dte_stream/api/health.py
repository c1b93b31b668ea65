"""``/healthz``, ``/readyz`` and ``/metrics``: what a supervisor and Prometheus ask a daemon.

* ``/healthz``: 200 while the process serves HTTP at all (liveness; open, no token).
* ``/readyz``: 200 when every source is connected, every sink writes and the end-to-end lag
  is below the bound; 503 otherwise, with the reasons (:mod:`dte_stream.readiness`). Open,
  like ``/healthz``: probes carry no token, and the answer names parts, never secrets.
* ``/metrics``: Prometheus' text format (0.0.4, which every Prometheus 2 reads) of
  :data:`dte_stream.metrics.REGISTRY`.

When the app runs in a process of its own beside a dataflow (``run --http``), ``/readyz`` and
``/metrics`` are the dataflow process's: they are asked of it (``ApiContext.ops_url``), and the
API process's own readiness checks (a Kafka view it follows) are added to ``/readyz``, its own
metrics (``dte_api_requests_total``, ``dte_api_request_seconds``, a Kafka view's reader; its
``process_*`` with ``process="api"``) to ``/metrics``
(:func:`~dte_stream.metrics.merged_exposition`).
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from pydantic import BaseModel

from dte_stream.metrics import exposition, merged_exposition
from dte_stream.readiness import ReadyStatus

__all__ = ["CheckOut", "ReadyOut", "router"]

router = APIRouter(tags=["operations"])


class CheckOut(BaseModel):
    """One part of the process (a source, a sink partition) and whether it works."""

    name: str
    ok: bool
    detail: str
    since_ns: int


class ReadyOut(BaseModel):
    """The readiness of the process and the reasons when it is not ready."""

    ready: bool
    reasons: list[str]
    checks: list[CheckOut]
    lag_seconds: float | None
    max_lag_seconds: float | None


def ready_out(status: ReadyStatus) -> ReadyOut:
    return ReadyOut(
        ready=status.ready,
        reasons=status.reasons(),
        checks=[CheckOut(name=c.name, ok=c.ok, detail=c.detail, since_ns=c.since_ns) for c in status.checks],
        lag_seconds=status.lag_seconds,
        max_lag_seconds=status.max_lag_seconds,
    )


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: sources connected, sinks writing, lag below the bound",
    response_model=ReadyOut,
    responses={503: {"model": ReadyOut, "description": "not ready; `reasons` says why"}},
)
def readyz(request: Request) -> Any:
    status = request.app.state.readiness.status()
    body = ready_out(status)
    ops = request.app.state.context.ops_url
    if ops is not None:
        there = ReadyOut.model_validate(_ask(ops, "/readyz").json())
        mine = [c for c in body.checks if c.name not in {t.name for t in there.checks}]
        body = there.model_copy(
            update={
                "ready": there.ready and all(c.ok for c in mine),
                "reasons": there.reasons + [r for r in body.reasons if r not in there.reasons and mine],
                "checks": there.checks + mine,
            }
        )
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics of this process",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_PLAIN_0_0_4: {}}, "description": "text exposition format"}},
)
def metrics(request: Request) -> Response:
    ops = request.app.state.context.ops_url
    text = exposition() if ops is None else merged_exposition(_ask(ops, "/metrics").text)
    return Response(text, media_type=CONTENT_TYPE_PLAIN_0_0_4)


def _ask(ops_url: str, path: str) -> httpx.Response:
    """``path`` of the dataflow's process (503 when it does not answer: it is stopping or gone)."""
    try:
        return httpx.get(ops_url + path, timeout=5.0)
    except httpx.HTTPError as exc:
        raise HTTPException(503, f"the dataflow's process does not answer: {exc}") from None
