"""uvicorn beside a dataflow: --http parsing, a port in use, clean stops, `demo --http` end to end."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dte_stream.api.app import ApiContext, create_app
from dte_stream.api.server import BackgroundServer, parse_address
from dte_stream.cli.main import main
from dte_stream.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "problem"),
    [("8080", "expected HOST:PORT"), ("127.0.0.1:http", "is not a number"), ("127.0.0.1:70000", "0-65535")],
)
def test_a_bad_http_address_is_refused_with_the_reason(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_address(text)


def test_a_bad_http_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--http", "localhost"])
    assert exit_info.value.code == 2
    assert "expected HOST:PORT" in capsys.readouterr().err


def test_a_port_in_use_is_one_clear_error_before_anything_runs() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"--http 127.0.0.1:{port}: cannot listen there"):
            BackgroundServer(create_app(ApiContext(), extensions=[]), "127.0.0.1", port)


def test_the_background_server_stops_and_frees_its_port() -> None:
    server = BackgroundServer(create_app(ApiContext(), extensions=[]), "127.0.0.1", 0).start()
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 5
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/healthz")
    BackgroundServer(create_app(ApiContext(), extensions=[]), "127.0.0.1", server.port).stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen[str], timeout: float = 60.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            response = httpx.get(f"{url}/readyz", timeout=2)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url}/readyz never answered 200")


def test_demo_with_http_serves_health_readiness_and_metrics_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dte_stream",
            "demo",
            "--twins",
            "20",
            "--data-dir",
            str(tmp_path),
            "--quiet",
            "--http",
            f"127.0.0.1:{port}",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        ready = _wait_ready(url, process).json()
        assert ready["ready"] is True
        assert [c["name"] for c in ready["checks"]] == ["dataflow"]
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = httpx.get(f"{url}/metrics").text
            families = {f.name: f for f in text_string_to_metric_families(text)}
            if "dte_end_to_end_lag_seconds" in families and "dte_readings_processed" in families:
                break
            time.sleep(0.5)
        readings = [s for s in families["dte_readings_in"].samples if s.name == "dte_readings_in_total"]
        assert readings[0].labels == {"source": "pumps"}
        assert readings[0].value > 0
        twins = sum(s.value for s in families["dte_twins_active"].samples)
        assert twins == 20
        alerts = families["dte_alerts_active"].samples  # the demo's pumps have alert rules
        assert {s.labels["state"] for s in alerts} == {"pending", "firing", "acknowledged"}
        assert {s.labels["twin_type"] for s in alerts} == {"pump"}
        assert all(s.value >= 0 for s in alerts)
        lag = [s for s in families["dte_end_to_end_lag_seconds"].samples if s.name.endswith("_count")]
        assert lag[0].value > 0
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "stopped after" in err
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz")
