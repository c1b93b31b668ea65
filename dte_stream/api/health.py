"""``/healthz``, ``/readyz`` and ``/metrics``: what a supervisor and Prometheus ask a daemon.

* ``/healthz``: 200 while the process serves HTTP at all (liveness; open, no token).
* ``/readyz``: 200 when every source is connected, every sink writes and the end-to-end lag
  is below the bound; 503 otherwise, with the reasons (:mod:`dte_stream.readiness`). Open,
  like ``/healthz``: probes carry no token, and the answer names parts, never secrets.
* ``/metrics``: Prometheus' text format (0.0.4, which every Prometheus 2 reads) of
  :data:`dte_stream.metrics.REGISTRY`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from pydantic import BaseModel

from dte_stream.metrics import exposition
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
    return JSONResponse(body.model_dump(), status_code=200 if status.ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics of this process",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_PLAIN_0_0_4: {}}, "description": "text exposition format"}},
)
def metrics() -> Response:
    return Response(exposition(), media_type=CONTENT_TYPE_PLAIN_0_0_4)
