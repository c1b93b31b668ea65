"""/healthz, /readyz and /metrics of the app, served by uvicorn on a free loopback port (no dataflow).

(Not through starlette's TestClient: with httpx it warns that it wants httpx2.)"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from prometheus_client.parser import text_string_to_metric_families

from dte_stream.api.app import API_PREFIX, ApiContext, create_app
from dte_stream.api.server import BackgroundServer
from dte_stream.metrics import METRICS
from dte_stream.readiness import Readiness
from dte_stream.shutdown import STOP


@pytest.fixture
def readiness() -> Readiness:
    return Readiness(max_lag=10.0)


def served(app: FastAPI) -> Iterator[httpx.Client]:
    with BackgroundServer(app, "127.0.0.1", 0) as server, httpx.Client(base_url=server.url) as c:
        yield c


@pytest.fixture
def client(readiness: Readiness) -> Iterator[httpx.Client]:
    yield from served(create_app(ApiContext(readiness=readiness), extensions=[]))


def test_healthz_answers_while_the_process_is_not_ready(client: httpx.Client, readiness: Readiness) -> None:
    readiness.expect("source:plant", "connecting to mqtt://127.0.0.1:1883")
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_503_with_the_reasons_until_every_part_works(
    client: httpx.Client, readiness: Readiness
) -> None:
    readiness.expect("source:plant", "connecting")
    readiness.ok("sink:influx/0")
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False
    assert body["reasons"] == ["source:plant: connecting"]
    assert [(c["name"], c["ok"]) for c in body["checks"]] == [
        ("sink:influx/0", True),
        ("source:plant", False),
    ]
    readiness.ok("source:plant", "connected")
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["reasons"] == []


def test_readyz_turns_unready_when_a_sink_fails_and_ready_when_it_writes_again(
    client: httpx.Client, readiness: Readiness
) -> None:
    readiness.ok("sink:influx/0", "wrote 5000 lines")
    readiness.failed("sink:influx/0", "InfluxDB at http://127.0.0.1:1 does not answer")
    assert client.get("/readyz").json()["reasons"] == [
        "sink:influx/0: InfluxDB at http://127.0.0.1:1 does not answer"
    ]
    readiness.ok("sink:influx/0", "wrote 5000 lines")
    assert client.get("/readyz").status_code == 200


def test_readyz_is_503_when_the_lag_passes_the_bound(client: httpx.Client, readiness: Readiness) -> None:
    readiness.observe_lag(12.5)
    body = client.get("/readyz").json()
    assert body["reasons"] == ["lag 12.5 s is above 10 s"]
    assert body["lag_seconds"] == 12.5
    readiness.observe_lag(0.3)
    assert client.get("/readyz").status_code == 200


def test_readyz_is_503_while_draining(client: httpx.Client) -> None:
    STOP.set()
    try:
        body = client.get("/readyz").json()
    finally:
        STOP.clear()
    assert body["reasons"] == ["draining: a stop was asked for"]


def test_metrics_serves_the_process_metrics_in_prometheus_text_format(client: httpx.Client) -> None:
    METRICS.add("readings_in", 7, source="test_metrics_endpoint")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    samples = {
        s.labels["source"]: s.value
        for s in families["dte_readings_in"].samples
        if s.name == "dte_readings_in_total"
    }
    assert samples["test_metrics_endpoint"] == 7.0
    assert "process_resident_memory_bytes" in families


def test_openapi_document_and_docs_live_under_api_v1(client: httpx.Client) -> None:
    document = client.get(f"{API_PREFIX}/openapi.json").json()
    assert {"/healthz", "/readyz", "/metrics"} <= set(document["paths"])
    assert client.get(f"{API_PREFIX}/docs").status_code == 200
    assert client.get("/openapi.json").status_code == 404
    assert client.get("/docs").status_code == 404


def test_extensions_add_their_routers_to_the_app() -> None:
    router = APIRouter(prefix=API_PREFIX)

    @router.get("/twins")
    def twins() -> list[str]:
        return ["pump-1"]

    def extension(app: FastAPI, context: ApiContext) -> None:
        app.include_router(router)

    for c in served(create_app(ApiContext(), extensions=[extension])):
        assert c.get(f"{API_PREFIX}/twins").json() == ["pump-1"]
        assert f"{API_PREFIX}/twins" in c.get(f"{API_PREFIX}/openapi.json").json()["paths"]
