"""A daemon as systemd would run it: the generated unit passes `systemd-analyze verify`; the
daemon started from the unit's command line serves /healthz, /readyz and /metrics; a real
Prometheus scrapes it and answers for its series; /readyz turns unready while a real InfluxDB is
stopped and ready again when it is back; SIGTERM drains it."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
import yaml

from dte_stream.cli.main import main

devservices = sys.modules["dte_devservices"]  # deploy/services/devservices.py, loaded by conftest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_gracefully(proc: subprocess.Popen[Any], timeout: float = 60) -> None:
    """SIGTERM ``proc`` and wait for it; killed if it has not ended within ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (httpx.TransportError, OSError, ValueError, KeyError, pl.exceptions.PolarsError) as exc:
            last = exc  # not up yet, or a file being written
        time.sleep(0.25)
    raise AssertionError(f"{what} within {timeout:.0f} s (last: {last!r})")


@pytest.fixture
def own_influxdb(tmp_path: Path) -> Iterator[Any]:
    """An InfluxDB of this test's own: the test stops and restarts it."""
    try:
        devservices.check_installed("influxdb")
    except devservices.ServiceUnavailable as exc:
        pytest.skip(str(exc))
    service = devservices.start("influxdb", tmp_path / "influxdb")
    try:
        yield service
    finally:
        devservices.stop(service)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    try:
        devservices.check_installed("prometheus")
    except devservices.ServiceUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    service = devservices.start("prometheus", tmp_path / "prometheus")
    try:
        yield service
    finally:
        devservices.stop(service)


def promql(prometheus: Any, query: str) -> list[dict[str, Any]]:
    url = f"{prometheus.url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    body = httpx.get(url, timeout=5).json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def write_spec(tmp_path: Path, influx_url: str) -> Path:
    demo = yaml.safe_load((REPO / "dataflows" / "demo.yaml").read_text())
    spec = {
        "version": 1,
        "name": "opsdaemon",
        "sources": [
            {
                "kind": "simulator",
                "name": "pumps",
                "twin_type": "pump",
                "twins": 50,
                "interval": "1s",
                "rate": 500,
            }
        ],
        "twin_types": demo["twin_types"],
        "sinks": [
            {
                "kind": "influxdb",
                "url": influx_url,
                "database": f"ops_{uuid.uuid4().hex[:6]}",
                "create_database": True,
                "flush_interval": 0.2,
                "retries": {"initial_backoff": 0.2, "max_backoff": 1.0},
            },
            {"kind": "local_store", "data_dir": "data"},
        ],
        "dead_letters": {"path": "dead_letters.jsonl"},
        "engine": {"shards": 2, "epoch_seconds": 1},
    }
    path = tmp_path / "opsdaemon.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def unit_command(unit: Path, state_root: Path) -> list[str]:
    """ExecStart of the unit as systemd would run it: %S is the state root, %% a percent sign."""
    line = next(x for x in unit.read_text().splitlines() if x.startswith("ExecStart="))
    text = line.removeprefix("ExecStart=").replace("%S", str(state_root)).replace("%%", "%")
    return shlex.split(text)


def test_the_generated_unit_verifies_and_its_daemon_is_scraped_and_follows_influxdb(
    tmp_path: Path, own_influxdb: Any, prometheus: Any
) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: run deploy/services/install.sh")
    spec = write_spec(tmp_path, own_influxdb.url)
    port = free_port()
    executable = Path(sys.executable).parent / "dte-stream"
    out = tmp_path / "units"
    out.mkdir()
    assert (
        main(
            [
                "deploy",
                "systemd",
                str(spec),
                "--executable",
                str(executable),
                "--http",
                f"127.0.0.1:{port}",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    unit = out / "dte-stream-opsdaemon.service"
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr.strip() == "", verify.stderr  # no warning either

    state_root = tmp_path / "var-lib"
    state = state_root / "dte-stream-opsdaemon"  # StateDirectory=, also the working directory
    state.mkdir(parents=True)
    command = unit_command(unit, state_root)
    assert command[:3] == [str(executable), "run", str(spec)]
    daemon = subprocess.Popen(
        command, cwd=state, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for("the daemon answers /healthz", lambda: httpx.get(f"{base}/healthz").status_code == 200)
        ready = wait_for(
            "/readyz says ready",
            lambda: httpx.get(f"{base}/readyz").json()["ready"] and httpx.get(f"{base}/readyz").json(),
        )
        names = {c["name"] for c in ready["checks"]}
        assert "dataflow" in names
        assert "sink influxdb" in names, names  # from the start, before its writers are built

        devservices.prometheus_targets(prometheus, [f"127.0.0.1:{port}"], {"daemon": "opsdaemon"})
        wanted = {
            'dte_readings_in_total{source="pumps"}': lambda v: v > 0,
            "dte_readings_processed_total": lambda v: v > 0,
            'sum(dte_twins_active{twin_type="pump"})': lambda v: v == 50,
            "dte_batch_seconds_count": lambda v: v > 0,
            "dte_end_to_end_lag_seconds_count": lambda v: v > 0,
            "dte_influxdb_points_written_total": lambda v: v > 0,
            "process_resident_memory_bytes": lambda v: v > 10e6,
            'up{job="dte-stream"}': lambda v: v == 1,
        }
        for query, ok in wanted.items():
            rows = wait_for(
                f"Prometheus answers {query}",
                lambda q=query, c=ok: [r for r in promql(prometheus, q) if c(float(r["value"][1]))],
            )
            if query.startswith("dte_readings_in_total"):
                assert rows[0]["metric"]["daemon"] == "opsdaemon"
        histogram = wait_for(  # a rate needs two scrapes of the buckets
            "Prometheus computes the p99 batch time",
            lambda: promql(prometheus, "histogram_quantile(0.99, rate(dte_batch_seconds_bucket[1m]))"),
        )
        assert float(histogram[0]["value"][1]) > 0

        devservices.stop(own_influxdb)
        down = wait_for(
            "/readyz turns unready with InfluxDB stopped",
            lambda: (r := httpx.get(f"{base}/readyz")).status_code == 503 and r.json(),
            timeout=60,
        )
        assert any(r.startswith("sink ") and "sink_influxdb" in r for r in down["reasons"]), down["reasons"]
        assert httpx.get(f"{base}/healthz").status_code == 200  # alive all the same

        devservices.restart(own_influxdb)
        wait_for(
            "/readyz is ready again with InfluxDB back",
            lambda: httpx.get(f"{base}/readyz").status_code == 200,
            timeout=90,
        )
        retries = wait_for(
            "Prometheus sees the retries", lambda: promql(prometheus, "dte_influxdb_write_failures_total > 0")
        )
        assert retries

        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=90)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
    assert daemon.returncode == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert lines, err
    messages = [x["message"] for x in lines]
    assert any("stopped after" in m for m in messages), err
    assert (state / "recovery").is_dir()
    assert (state / "data" / "readings").is_dir()
