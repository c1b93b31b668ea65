"""How HTTP answers become errors: retry or give up, and messages that say what to do."""

from __future__ import annotations

import email.utils
from typing import Any

import pytest

from dte_stream.connectors.http_headers import MAX_RETRY_AFTER
from dte_stream.connectors.influxdb import InfluxDBRejected, InfluxDBUnavailable, make_transport
from dte_stream.connectors.influxdb.transport import (
    V1Transport,
    V2Transport,
    _probe,
    _server_message,
    classify,
    parse_retry_after,
)
from dte_stream.spec.influxdb import InfluxDBSinkSpec

V1 = InfluxDBSinkSpec(kind="influxdb", url="http://db:8086", database="plant")
V2 = InfluxDBSinkSpec(kind="influxdb", url="http://db:8086", org="acme", bucket="plant", token="t")


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("99999999") == MAX_RETRY_AFTER
    assert parse_retry_after(None) is None
    assert parse_retry_after("later") is None
    assert parse_retry_after("nan") is None
    date = email.utils.formatdate(1_000_030.0, usegmt=True)
    assert parse_retry_after(date, now=1_000_000.0) == pytest.approx(30.0)


def test_server_messages_are_read_from_1x_2x_and_plain_bodies() -> None:
    assert _server_message(b'{"error":"database not found: \\"x\\""}', None) == 'database not found: "x"'
    assert _server_message(b'{"code":"invalid","message":"bad   line\\n 3"}', None) == "bad line 3"
    assert _server_message(b"", "from the header") == "from the header"
    assert _server_message(b"plain text", None) == "plain text"
    assert len(_server_message(b"x" * 1000, None)) == 300


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_retryable_answers(status: int) -> None:
    error = classify(status, "busy", "2", V1, V1.target())
    assert isinstance(error, InfluxDBUnavailable)
    assert error.status == status
    assert error.retry_after == 2.0
    assert f"answered {status}: busy" in str(error)


@pytest.mark.parametrize(
    ("spec", "status", "message", "expected"),
    [
        (
            V1,
            404,
            'database not found: "plant"',
            "database 'plant' not found (create it, or set create_database",
        ),
        (V2, 404, 'bucket "plant" not found', "bucket 'plant' not found"),
        (V1, 401, "authorization failed", "authentication failed, check the username and password"),
        (V2, 401, "unauthorized access", "authentication failed, check the token"),
        (V1, 403, "forbidden", "not allowed to write"),
        (V1, 413, "too large", "request too large, lower batch_size"),
        (V1, 400, "unable to parse 'x': bad timestamp", "refused the write (400): unable to parse"),
    ],
)
def test_permanent_answers(spec: InfluxDBSinkSpec, status: int, message: str, expected: str) -> None:
    error = classify(status, message, None, spec, spec.target())
    assert isinstance(error, InfluxDBRejected)
    assert error.status == status
    assert expected in str(error)
    assert str(error).startswith("InfluxDB at http://db:8086")


def test_success_is_no_error() -> None:
    assert classify(204, "", None, V1, "x") is None
    assert classify(200, "", None, V1, "x") is None


def test_transport_per_api() -> None:
    v1 = make_transport(V1)
    v2 = make_transport(V2)
    try:
        assert isinstance(v1, V1Transport)
        assert isinstance(v2, V2Transport)
    finally:
        v1.close()
        v2.close()
        v2.close()  # idempotent


def test_v1_sends_basic_auth_not_query_credentials() -> None:
    spec = InfluxDBSinkSpec(
        kind="influxdb",
        url="https://db:8086/influx/",
        database="my db",
        retention_policy="a_year",
        username="writer",
        password="pw",
    )
    transport = V1Transport(spec)
    assert transport._write_path == "/influx/write?db=my+db&precision=ns&rp=a_year"
    assert transport._headers["Authorization"] == "Basic d3JpdGVyOnB3"  # writer:pw
    assert "pw" not in transport._write_path
    assert transport._port == 8086
    assert transport._context is not None


class _Refusing:
    target = "InfluxDB at test"

    def __init__(self, status: int) -> None:
        self.status = status

    def write(self, body: bytes) -> None:
        raise InfluxDBRejected(f"refused ({self.status})", self.status)


@pytest.mark.parametrize(
    ("status", "fatal"), [(400, False), (422, False), (401, True), (403, True), (404, True)]
)
def test_the_start_up_probe_is_fatal_only_for_settings_problems(status: int, fatal: bool) -> None:
    transport: Any = _Refusing(status)
    if fatal:
        with pytest.raises(InfluxDBRejected):
            _probe(transport)
    else:
        _probe(transport)  # a server that dislikes an empty body is not a settings problem
