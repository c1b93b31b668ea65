"""The API under ``/api/v1/``: twins, history, alerts, what-if, and live updates (SSE).

Every route reads the twin view (:mod:`dte_stream.view`) or the stores of the data directory,
never a running dataflow; acknowledgements go through :func:`dte_stream.alerts.store.acknowledge`
like ``dte-stream alerts ack``. Scopes: ``read`` for everything that looks, ``operate`` to
acknowledge and simulate. Times are int64 nanoseconds since the epoch (UTC); durations and ages
are seconds. The alert routes are in :mod:`dte_stream.api.alert_routes` (included here), what
every route depends on (scopes, state) in :mod:`dte_stream.api.deps`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Body, HTTPException, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from dte_stream.api import live
from dte_stream.api.alert_routes import router as alert_router
from dte_stream.api.deps import Admin, Operator, Reader, api_state, store_unavailable
from dte_stream.api.history import HistoryUnavailableError, bucket_width, influxdb_history, local_history
from dte_stream.api.state import ApiState
from dte_stream.errors import ConfigError, StoreError
from dte_stream.spec.twins import TwinTypeSpec
from dte_stream.times import NS_PER_S, now_ns
from dte_stream.view.store import TwinQuery
from dte_stream.whatif import Scenario, simulate

__all__ = ["router"]

router = APIRouter(prefix="/api/v1")

TwinId = Annotated[str, Path(min_length=1, max_length=256, description="the twin's id")]
_MAX_LABELS = 16
_MAX_NS = 2**63 - 1  # int64 nanoseconds: the store's time type


def _json(payload: object) -> Response:
    """``payload`` (plain JSON types, from the view) as a JSON answer written by orjson.

    The twin list and detail answer this way rather than through FastAPI's response models and
    encoder, which validated and converted every row again: 2-3 ms of CPU per list of 100 rows
    against about 0.1 ms (the API's process shares the cores with the dataflow; see
    docs/benchmarks.md). The OpenAPI document still describes the answers' models.
    """
    return Response(orjson.dumps(payload), media_type="application/json")


# -- twins ---------------------------------------------------------------------------------------


class TwinSummary(BaseModel):
    """A twin in a list: what to filter and sort by."""

    twin_id: str
    twin_type: str
    labels: dict[str, str]
    last_seen_ns: int | None
    age_s: float | None = Field(description="seconds since the twin's latest reading")
    updated_ns: int
    alert_state: Literal["firing", "pending", "ok"]
    anomaly_score: float | None


class TwinList(BaseModel):
    """One page of twins."""

    total: int = Field(description="twins matching the filters, in all")
    limit: int
    offset: int
    twins: list[TwinSummary]


def _age(time_ns: int | None, now: int) -> float | None:
    return None if time_ns is None else (now - time_ns) / NS_PER_S


def _labels(items: list[str]) -> dict[str, str]:
    if len(items) > _MAX_LABELS:
        raise HTTPException(422, f"at most {_MAX_LABELS} label filters")
    out = {}
    for item in items:
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise HTTPException(422, f"label filter {item[:80]!r}: write KEY:VALUE")
        out[key] = value
    return out


@router.get("/twins", response_model=TwinList, tags=["twins"])
async def list_twins(  # the answer is a TwinList, written by orjson from the view's rows (see _json)
    request: Request,
    _: Reader,
    twin_type: Annotated[str | None, Query(alias="type", max_length=128)] = None,
    label: Annotated[list[str], Query(max_length=256, description="KEY:VALUE, repeatable")] = [],  # noqa: B006
    alert_state: Literal["firing", "pending", "ok"] | None = None,
    search: Annotated[str | None, Query(max_length=256, description="part of the twin id")] = None,
    seen_within: Annotated[float | None, Query(gt=0, le=1e9, description="seconds: fresh twins")] = None,
    silent_for: Annotated[float | None, Query(gt=0, le=1e9, description="seconds: stale twins")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Response:
    """Twins from the view, filtered by type, labels, alert state, id and freshness; paged by id."""
    now = now_ns()
    query = TwinQuery(
        twin_type, _labels(label), alert_state, search, seen_within, silent_for, now, limit, offset
    )
    try:
        page = api_state(request).view.list_twins(query)
    except StoreError as exc:
        raise store_unavailable(exc) from None
    twins = [
        {"twin_id": t["twin_id"], "twin_type": t["twin_type"], "labels": t["labels"],
         "last_seen_ns": t["last_seen_ns"], "age_s": _age(t["last_seen_ns"], now),
         "updated_ns": t["updated_ns"], "alert_state": t["alert_state"], "anomaly_score": t["anomaly_score"]}
        for t in page.twins
    ]  # fmt: skip
    return _json({"total": page.total, "limit": limit, "offset": offset, "twins": twins})


def _twin(ctx: ApiState, twin_id: str) -> dict[str, Any]:
    try:
        record = ctx.view.get_twin(twin_id)
    except StoreError as exc:
        raise store_unavailable(exc) from None
    if record is None:
        raise HTTPException(404, f"no twin {twin_id!r} in the view (GET /api/v1/twins lists them)")
    return record


def with_ages(record: dict[str, Any], now: int) -> dict[str, Any]:
    """The record with ``age_s`` of the twin and of each channel's latest reading."""
    record["age_s"] = _age(record.get("last_seen_ns"), now)
    for channel in record.get("channels", {}).values():
        channel["age_s"] = _age(channel.get("time_ns"), now)
    return record


@router.get("/twins/{twin_id}", tags=["twins"])
async def get_twin(request: Request, _: Reader, twin_id: TwinId) -> Response:
    """One twin: latest readings, estimates with std and age, flags, scores, alerts, filter states."""
    return _json(with_ages(_twin(api_state(request), twin_id), now_ns()))


@router.get("/twins/{twin_id}/history", tags=["twins"])
def twin_history(
    request: Request,
    _: Reader,
    twin_id: TwinId,
    channel: Annotated[str | None, Query(max_length=256)] = None,
    since: Annotated[
        int | None, Query(ge=0, le=_MAX_NS, description="ns since the epoch; default: an hour back")
    ] = None,
    until: Annotated[
        int | None, Query(ge=0, le=_MAX_NS, description="ns since the epoch; default: now")
    ] = None,
    points: Annotated[int, Query(ge=2, le=5000, description="at most this many points per channel")] = 500,
) -> dict[str, Any]:
    """A twin's readings and estimates, downsampled to at most ``points`` buckets per channel.

    From the local store when the data directory has one, else from the dataflow's InfluxDB
    (1.x) sink. Per bucket: its first time, the mean, min and max reading, the mean estimate and
    std, the highest anomaly score, the flags of any reading and the number of readings.
    """
    ctx = api_state(request)
    end = until if until is not None else now_ns() + NS_PER_S
    start = since if since is not None else end - 3600 * NS_PER_S
    if start >= end:
        raise HTTPException(422, "since must be before until")
    width = bucket_width(start, end, points)
    try:
        channels = local_history(ctx.data_dir, twin_id, channel, start, end, width)
        source = "local_store"
        if channels is None and ctx.influxdb is not None:
            channels = influxdb_history(ctx.influxdb, twin_id, channel, start, end, width)
            source = f"influxdb:{ctx.influxdb.name}"
    except HistoryUnavailableError as exc:
        raise HTTPException(501, str(exc)) from None
    except StoreError as exc:
        raise HTTPException(503, str(exc)) from None
    if channels is None:
        channels, source = {}, "none"
    return {
        "twin_id": twin_id,
        "since": start,
        "until": end,
        "bucket_ns": width,
        "source": source,
        "channels": channels,
    }


# -- what-if -----------------------------------------------------------------------------------------


class ScenarioBody(BaseModel):
    """Assumptions over the horizon (seconds from the start)."""

    model_config = ConfigDict(extra="forbid")
    controls: dict[str, list[tuple[float, float]]] = Field(
        default_factory=dict, description="control channel -> [[at_s, value], ...] (held from each time)"
    )
    hold: dict[str, float] = Field(
        default_factory=dict, description="observed channel -> value read every step"
    )
    silent: dict[str, float] = Field(default_factory=dict, description="sensor -> at_s it stops reporting")


class SimulateBody(BaseModel):
    """A what-if request."""

    model_config = ConfigDict(extra="forbid")
    horizon: float = Field(3600.0, gt=0, le=30 * 86400, description="seconds to look ahead")
    step: float = Field(60.0, ge=0.001, le=86400, description="seconds between points")
    samples: int = Field(500, ge=1, le=10_000, description="sampled trajectories")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    scenario: ScenarioBody = Field(default_factory=ScenarioBody)


def twin_type_spec(ctx: ApiState, name: str) -> TwinTypeSpec:
    """The twin type as the dataflow declared it (stored in the view)."""
    spec = ctx.view.types().get(name)
    if spec is None:
        raise HTTPException(409, f"twin type {name!r} is not in the view: run its dataflow once")
    return TwinTypeSpec.model_validate(spec)


@router.post("/twins/{twin_id}/simulate", tags=["what-if"])
def simulate_twin(
    request: Request, _: Operator, twin_id: TwinId, body: Annotated[SimulateBody, Body()]
) -> dict[str, Any]:
    """What-if from the twin's current state in the view: bands of every state and channel, and the
    probability and time (median, 90th percentile) of each threshold alert rule firing."""
    ctx = api_state(request)
    record = _twin(ctx, twin_id)
    spec = twin_type_spec(ctx, record["twin_type"])
    s = body.scenario
    try:
        result = simulate(
            spec, record, horizon_s=body.horizon, step_s=body.step, samples=body.samples, seed=body.seed,
            scenario=Scenario(s.controls, s.hold, s.silent),
        )  # fmt: skip
    except ConfigError as exc:
        raise HTTPException(422, str(exc)) from None
    return result.to_json_dict()


# -- live updates ----------------------------------------------------------------------------------------


@router.get(
    "/twins/{twin_id}/events",
    tags=["live"],
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}},
)
def twin_events(request: Request, _: Reader, twin_id: TwinId) -> StreamingResponse:
    """Server-Sent Events: ``twin`` with the twin's record now and whenever the view changes it."""
    ctx = api_state(request)
    _twin(ctx, twin_id)
    return live.stream(request, live.twin_updates(ctx, twin_id, with_ages))


@router.get("/twin-types", tags=["twins"])
def twin_types(request: Request, _: Reader) -> dict[str, Any]:
    """The twin types the dataflows declared: channels, models and alert rules."""
    return {"twin_types": list(api_state(request).view.types().values())}


@router.get("/tokens", tags=["admin"])
def list_tokens(request: Request, _: Admin) -> dict[str, Any]:
    """The API tokens (name, scope, creation time; never the tokens or their hashes)."""
    try:
        tokens = api_state(request).tokens.tokens()
    except StoreError as exc:
        raise store_unavailable(exc) from None
    return {"tokens": [{"name": t.name, "scope": t.scope, "created_ns": t.created_ns} for t in tokens]}


router.include_router(alert_router)  # /alerts, /alerts/{id}/ack, /alerts/events
