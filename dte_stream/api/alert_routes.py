"""The alert routes of ``/api/v1/``: list alerts, acknowledge one, follow their changes (SSE).

Alerts come from the alert log of the data directory (:func:`dte_stream.alerts.store.alert_table`)
or, on a host that follows a Kafka view and has no alert log, from the view's alert rows.
Acknowledgements go through :func:`dte_stream.alerts.store.acknowledge` like
``dte-stream alerts ack``, or to the Kafka view's acknowledgements topic. Included in
:data:`dte_stream.api.routes.router`.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any, Literal

import polars as pl
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from dte_stream.alerts.store import acknowledge, alert_table, check_alert_id
from dte_stream.api import live
from dte_stream.api.deps import Operator, Reader, api_state, store_unavailable
from dte_stream.api.state import ApiState
from dte_stream.errors import ConfigError, DteStreamError, StoreError
from dte_stream.times import now_ns
from dte_stream.view.records import alert_row
from dte_stream.view.store import AlertQuery

__all__ = ["router"]

router = APIRouter()

_AlertFilter = Literal["firing", "resolved", "all"]


@router.get("/alerts", tags=["alerts"])
def list_alerts(
    request: Request,
    _: Reader,
    state: _AlertFilter = "all",
    twin_id: Annotated[str | None, Query(max_length=256)] = None,
    rule: Annotated[str | None, Query(max_length=128)] = None,
    severity: Literal["info", "warning", "critical"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> dict[str, Any]:
    """The current state of each alert (from the alert log): firing first, then the newest."""
    ctx = api_state(request)
    if ctx.remote_view:  # no alert log on this host: the alert rows of the Kafka view
        return _view_alerts(ctx, state, twin_id, rule, severity, limit, offset)
    if not ctx.data_dir.is_dir():
        return {"total": 0, "limit": limit, "offset": offset, "alerts": []}
    try:
        table = alert_table(ctx.data_dir, state, twin_id=twin_id)
    except StoreError as exc:
        raise store_unavailable(exc) from None
    if rule is not None:
        table = table.filter(pl.col("rule") == rule)
    if severity is not None:
        table = table.filter(pl.col("severity") == severity)
    times = [c for c, t in table.schema.items() if isinstance(t, pl.Datetime)]
    page = (
        table.slice(offset, limit)
        .with_columns([pl.col(c).dt.epoch("ns").alias(f"{c}_ns") for c in times])
        .drop(times)
    )
    return {"total": table.height, "limit": limit, "offset": offset, "alerts": page.fill_nan(None).to_dicts()}


def _view_alerts(
    ctx: ApiState,
    state: str,
    twin_id: str | None,
    rule: str | None,
    severity: str | None,
    limit: int,
    offset: int,
) -> dict[str, Any]:
    """Alerts from the view's rows, in the shape of the alert log's (what the Kafka view knows)."""
    query = AlertQuery(
        twin_id=twin_id,
        rule=rule,
        severity=severity,
        states=("firing", "resolved") if state == "all" else (state,),
        limit=limit,
        offset=offset,
    )
    try:
        rows, total = ctx.view.list_alerts(query), ctx.view.count_alerts(query)
    except StoreError as exc:
        raise store_unavailable(exc) from None
    alerts = [
        {
            "alert_id": r["alert_id"], "state": r["state"], "twin_id": r["twin_id"],
            "twin_type": r.get("twin_type"), "rule": r.get("rule"), "severity": r.get("severity"),
            "channel": r.get("channel"), "message": r.get("message"), "value": r.get("value"),
            "acked_by": r.get("acked_by"), "since_ns": r.get("starts_ns"), "ended_ns": r.get("ends_ns"),
            "acked_at_ns": r.get("time_ns") if r.get("acked_by") else None,
            "last_event_ns": r.get("time_ns"), "events": None,
        }
        for r in rows
    ]  # fmt: skip
    return {"total": total, "limit": limit, "offset": offset, "alerts": alerts}


@router.post("/alerts/{alert_id:path}/ack", tags=["alerts"])
def ack_alert(request: Request, token: Operator, alert_id: str) -> dict[str, Any]:
    """Acknowledge a firing alert; recorded with the token's name (like ``dte-stream alerts ack``).

    With a Kafka view (no alert log on this host) the acknowledgement goes to the view topic's
    acknowledgements topic, which the dataflow follows; the answer is the alert as it will be.
    """
    ctx = api_state(request)
    if ctx.acks is not None:
        return _ack_through_kafka(ctx, alert_id, token.name)
    try:
        event = acknowledge(ctx.data_dir, alert_id, by=token.name)
    except ConfigError as exc:
        text = str(exc)
        raise HTTPException(404 if text.startswith("unknown alert") else 409, text) from None
    except StoreError as exc:
        raise HTTPException(404 if "no data directory" in str(exc) else 503, str(exc)) from None
    row = alert_row(event)
    with contextlib.suppress(StoreError):  # the ack is recorded; the view catches up from the dataflow
        ctx.view.put_alerts([dict(row)])
    return row


def _ack_through_kafka(ctx: ApiState, alert_id: str, by: str) -> dict[str, Any]:
    try:
        check_alert_id(alert_id)
        row = ctx.view.get_alert(alert_id)
    except ConfigError as exc:
        raise HTTPException(404, str(exc)) from None
    except StoreError as exc:
        raise store_unavailable(exc) from None
    if row is None:
        raise HTTPException(404, f"unknown alert {alert_id!r} in the twin view")
    if row.get("state") != "firing":
        raise HTTPException(
            409, f"alert {alert_id!r} is {row.get('state')}, not firing: nothing to acknowledge"
        )
    if row.get("acked_by"):
        raise HTTPException(409, f"alert {alert_id!r} is already acknowledged by {row['acked_by']!r}")
    when = now_ns()
    try:
        ctx.acks.send(alert_id, by, when)  # type: ignore[union-attr]  # the caller checked
    except DteStreamError as exc:
        raise HTTPException(503, str(exc)) from None
    row = {**row, "acked_by": by, "time_ns": when}
    row.pop("seq", None)
    with contextlib.suppress(StoreError):  # this host's copy at once; the dataflow's row follows
        ctx.view.put_alerts([dict(row)])
    return row


@router.get(
    "/alerts/events",
    tags=["live"],
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}},
)
def alert_events(
    request: Request,
    _: Reader,
    after: Annotated[
        int | None, Query(ge=0, description="send changes after this seq (the events' id)")
    ] = None,
) -> StreamingResponse:
    """Server-Sent Events: ``alert`` with an alert's latest state each time it changes."""
    ctx = api_state(request)
    last = request.headers.get("last-event-id")
    start = after if after is not None else int(last) if last and last.isdigit() else None
    return live.stream(request, live.alert_updates(ctx, start))
