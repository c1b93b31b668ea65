"""The API in a process of its own: it serves the app; /readyz and /metrics are the dataflow's."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dte_stream.api.process import ApiProcess
from dte_stream.api.tokens import TokenFile, default_tokens_path
from dte_stream.errors import ConfigError
from dte_stream.metrics import METRICS
from dte_stream.readiness import READINESS


def test_the_child_serves_the_api_and_passes_on_readiness_and_metrics(tmp_path: Path) -> None:
    token = TokenFile(default_tokens_path(tmp_path)).create("viewer", "read")
    READINESS.reset(max_lag=None)
    READINESS.failed("source_pumps", "broker refused the connection")
    METRICS.add("readings_in", 7, source="api-process-test")
    try:
        with ApiProcess({"spec": None, "data_dir": tmp_path, "tokens_file": None}, "127.0.0.1", 0) as api:
            assert httpx.get(f"{api.url}/healthz").json() == {"status": "ok"}
            ready = httpx.get(f"{api.url}/readyz")
            assert ready.status_code == 503  # this process's readiness, not the child's
            assert "broker refused the connection" in " ".join(ready.json()["reasons"])
            READINESS.ok("source_pumps", "connected")
            assert httpx.get(f"{api.url}/readyz").status_code == 200
            assert 'dte_readings_in_total{source="api-process-test"}' in httpx.get(f"{api.url}/metrics").text
            assert httpx.get(f"{api.url}/api/v1/twins").status_code == 401
            page = httpx.get(f"{api.url}/api/v1/twins", headers={"Authorization": f"Bearer {token}"})
            assert page.status_code == 200
            assert page.json()["total"] == 0
            metrics = _samples(httpx.get(f"{api.url}/metrics").text)
            # the API process's own metrics beside the dataflow's
            assert metrics[("dte_api_requests_total", "/api/v1/twins", "401")] == 1.0
            assert metrics[("dte_api_requests_total", "/api/v1/twins", "200")] == 1.0
            assert metrics[("dte_api_request_seconds_count", "/api/v1/twins", "")] == 2.0
            assert metrics[("dte_readings_in_total", "", "")] >= 7.0
            assert ("process_cpu_seconds_total", "", "api") in metrics  # the child's own process
            url = api.url
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz")
    finally:
        READINESS.reset()


def test_a_port_in_use_is_refused_before_a_child_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"--http 127.0.0.1:{port}: cannot listen there"):
            ApiProcess({"spec": None, "data_dir": tmp_path}, "127.0.0.1", port)


def _samples(text: str) -> dict[tuple[str, str, str], float]:
    """Samples by (name, route, status or process label), summed over other labels."""
    out: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            key = (sample.name, labels.get("route", ""), labels.get("status", labels.get("process", "")))
            out[key] = out.get(key, 0.0) + sample.value
    return out
