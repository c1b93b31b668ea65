"""InfluxDBSink when the server misbehaves: 5xx and 429 (with Retry-After), a server that is down
and comes up later, a slow server that fills the buffer, and one that stays down past max_block.

A small HTTP server in a thread (:class:`FlakyInfluxDB`) answers with scripted failures or
delays and otherwise forwards each request to the real InfluxDB 1.6 of the ``influxdb``
fixture, so every point that counts as written is read back from the real database.
"""

from __future__ import annotations

import http.client
import http.server
import json
import logging
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from influxql import influxql

from dte_stream.batches import EstimateBatch
from dte_stream.connectors.influxdb import InfluxDBSink
from dte_stream.metrics import METRICS
from dte_stream.spec.influxdb import InfluxDBSinkSpec

pytestmark = pytest.mark.integration

T0 = 1_767_323_045_000_000_000


@dataclass
class Seen:
    """One request the flaky server received, and what it answered."""

    at: float
    path: str
    headers: dict[str, str]
    lines: int
    status: int


@dataclass
class FlakyInfluxDB:
    """An HTTP front for a real InfluxDB: scripted failures of writes first, then slow or plain forwarding."""

    upstream: str
    port: int = 0
    failures: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    delay: float = 0.0
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like InfluxDB

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                front.handle(self, body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="flaky-influxdb", daemon=True)
        self.thread.start()

    def handle(self, handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        lines = len(body.split(b"\n")) if body else 0
        with self.lock:  # the sink's empty start-up check always goes through
            failure = self.failures.pop(0) if self.failures and lines else None
        if failure is not None:
            status, headers = failure
            payload = json.dumps({"error": f"scripted failure {status}"}).encode()
        else:
            if self.delay:
                time.sleep(self.delay)
            status, payload, headers = self.forward(handler.path, body)
        with self.lock:
            self.seen.append(Seen(time.monotonic(), handler.path, dict(handler.headers), lines, status))
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def forward(self, path: str, body: bytes) -> tuple[int, bytes, dict[str, str]]:
        parts = urllib.parse.urlsplit(self.upstream)
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 8086, timeout=30)
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": "text/plain"})
            response = conn.getresponse()
            return response.status, response.read(), {}
        finally:
            conn.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def count(url: str, db: str) -> int:
    series = influxql(url, "SELECT count(value) FROM dte_readings", db)
    return int(series[0]["values"][0][1]) if series else 0


@pytest.fixture(autouse=True)
def _fresh_metrics() -> Iterator[None]:
    METRICS.reset()
    yield
    METRICS.reset()


def estimates(batch_index: int, rows: int) -> EstimateBatch:
    n = rows
    start = T0 + batch_index * rows * 1_000_000
    values = np.arange(n, dtype=np.float64) + batch_index * rows
    return EstimateBatch(
        "pump",
        np.array([f"pump-{i % 97}" for i in range(n)]),
        np.array(["temp"] * n),
        start + np.arange(n, dtype=np.int64) * 1_000_000,
        values,
        np.array(["bar"] * n),
        values + 0.5,
        np.full(n, 0.25),
        np.full(n, 0.1),
        np.full(n, 1.5),
    )


def spec(url: str, db: str, **fields: Any) -> InfluxDBSinkSpec:
    settings: dict[str, Any] = {
        "kind": "influxdb",
        "url": url,
        "database": db,
        "retries": {"initial_backoff": 0.05, "max_backoff": 0.5},
        "flush_interval": 0.1,
    }
    settings.update(fields)
    return InfluxDBSinkSpec.model_validate(settings)


def run_sink(items: list[EstimateBatch], sink_spec: InfluxDBSinkSpec) -> float:
    """Run the flow; return how long it took (seconds)."""
    flow = Dataflow("influxdb_resilience_test")
    op.output("influxdb", op.input("estimates", flow, TestingSource(items)), InfluxDBSink(sink_spec))
    start = time.monotonic()
    run_main(flow)
    return time.monotonic() - start


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_5xx_and_429_are_retried_and_retry_after_is_honoured(influxdb: Any, database: str) -> None:
    flaky = FlakyInfluxDB(
        influxdb.url,
        failures=[(500, {}), (503, {}), (429, {"Retry-After": "1"})],
    )
    try:
        run_sink(
            [estimates(k, 100) for k in range(5)],
            spec(flaky.url, database, username="writer", password="pw", batch_size=500),
        )
    finally:
        flaky.close()
    assert count(influxdb.url, database) == 500
    writes = [s for s in flaky.seen if s.lines]
    assert [s.status for s in writes] == [500, 503, 429, 204]
    assert writes[3].at - writes[2].at >= 0.95  # waited as the 429 asked
    assert {s.lines for s in writes} == {500}  # the same batch each time
    assert METRICS.get("influxdb_retries") == 3
    assert METRICS.get("influxdb_write_failures") == 3
    assert METRICS.get("influxdb_points_written") == 500
    # basic auth in a header, never the password in the query string
    assert all(s.headers.get("Authorization") == "Basic d3JpdGVyOnB3" for s in flaky.seen)
    assert not any("pw" in s.path for s in flaky.seen)


def test_a_server_that_is_down_then_comes_up_gets_every_point(
    influxdb: Any, database: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens here yet: connection refused
    items = [estimates(k, 200) for k in range(10)]
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_sink(items, spec(f"http://127.0.0.1:{port}", database, close_timeout=60))
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    with caplog.at_level(logging.WARNING):
        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(2.0)
        assert not done.is_set()  # still retrying
        flaky = FlakyInfluxDB(influxdb.url, port=port)
        try:
            thread.join(60)
        finally:
            flaky.close()
    assert not thread.is_alive()
    assert errors == []
    assert count(influxdb.url, database) == 2000
    assert METRICS.get("influxdb_write_failures") >= 2
    assert METRICS.get("influxdb_points_dropped") == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("not reachable" in m for m in messages) <= 2  # said once (and at the start check)
    assert any("answers again" in m for m in messages)


def test_a_slow_server_blocks_the_dataflow_instead_of_dropping(influxdb: Any, database: str) -> None:
    flaky = FlakyInfluxDB(influxdb.url, delay=0.15)
    try:
        took = run_sink(
            [estimates(k, 100) for k in range(20)],
            spec(flaky.url, database, batch_size=100, max_buffer_lines=200, max_block=0.05),
        )
    finally:
        flaky.close()
    assert count(influxdb.url, database) == 2000
    assert METRICS.get("influxdb_points_dropped") == 0
    assert METRICS.get("influxdb_blocked_ms") > 500  # the dataflow waited for room
    assert took >= 20 * 0.15 * 0.9  # as slow as the server, not faster
    assert max(s.lines for s in flaky.seen) <= 100


def test_a_server_down_past_max_block_drops_loudly(
    influxdb: Any, database: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    with caplog.at_level(logging.ERROR):
        took = run_sink(
            [estimates(k, 50) for k in range(10)],
            spec(
                f"http://127.0.0.1:{port}",
                database,
                batch_size=50,
                max_buffer_lines=100,
                max_block=0.5,
                close_timeout=1.0,
            ),
        )
    assert took < 15
    assert METRICS.get("influxdb_points_dropped") == 500
    assert METRICS.get("influxdb_points_written") == 0
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("DROPPING POINTS" in m and "is full" in m for m in messages)
    assert any("DROPPED" in m and "close_timeout" in m for m in messages)
