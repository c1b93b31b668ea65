"""InfluxDBSinkSpec: the api is inferred or checked, errors name the fields, secrets stay hidden."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pydantic import ValidationError

from dte_stream.connectors.influxdb import InfluxDBSink
from dte_stream.spec.influxdb import InfluxDBSinkSpec
from dte_stream.spec.interpolate import interpolate
from dte_stream.spec.loader import format_validation_error

SECRET = "s3cr3t-Pa55"


def _problems(**fields: Any) -> list[str]:
    with pytest.raises(ValidationError) as info:
        InfluxDBSinkSpec(kind="influxdb", **fields)
    return format_validation_error(info.value)


def test_v1_and_v2_are_inferred() -> None:
    v1 = InfluxDBSinkSpec(kind="influxdb", database="plant")
    assert v1.api == "v1"
    assert v1.url == "http://127.0.0.1:8086"
    v2 = InfluxDBSinkSpec(kind="influxdb", org="acme", bucket="plant")
    assert v2.api == "v2"


def test_nothing_said_means_v1_into_dte() -> None:
    spec = InfluxDBSinkSpec(kind="influxdb")
    assert (spec.api, spec.database) == ("v1", "dte")
    assert InfluxDBSinkSpec(kind="influxdb", api="v1").database == "dte"


ONE_SPEC_FOR_BOTH = {
    "kind": "influxdb",
    "url": "${DTE_INFLUXDB_URL:-http://127.0.0.1:8086}",
    "database": "${DTE_INFLUXDB_DATABASE:-}",
    "org": "${DTE_INFLUXDB_ORG:-}",
    "bucket": "${DTE_INFLUXDB_BUCKET:-}",
    "token": "${DTE_INFLUXDB_TOKEN:-}",
    "create_database": True,
}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ("v1", "dte", None)),
        ({"DTE_INFLUXDB_DATABASE": "plant"}, ("v1", "plant", None)),
        (
            {"DTE_INFLUXDB_ORG": "acme", "DTE_INFLUXDB_BUCKET": "plant", "DTE_INFLUXDB_TOKEN": SECRET},
            ("v2", None, "plant"),
        ),
    ],
)
def test_one_spec_serves_both_apis_from_the_environment(
    env: dict[str, str], expected: tuple[str, str | None, str | None]
) -> None:
    """Empty settings (an unset ${VAR:-}) count as not given, so the ready dataflows need one spec."""
    spec = InfluxDBSinkSpec.model_validate(interpolate(ONE_SPEC_FOR_BOTH, env))
    assert (spec.api, spec.database, spec.bucket) == expected


def test_both_apis_from_the_environment_is_an_error() -> None:
    env = {"DTE_INFLUXDB_DATABASE": "plant", "DTE_INFLUXDB_BUCKET": "plant"}
    with pytest.raises(ValidationError, match=r"database \(InfluxDB 1\.x, api v1\) and bucket"):
        InfluxDBSinkSpec.model_validate(interpolate(ONE_SPEC_FOR_BOTH, env))


def test_defaults() -> None:
    spec = InfluxDBSinkSpec(kind="influxdb", database="plant")
    assert (spec.measurement, spec.batch_size, spec.flush_interval) == ("dte_readings", 5000, 0.2)
    assert spec.max_buffer_lines is None
    assert spec.buffer_lines == 10_000  # twice batch_size: an epoch end waits for at most two batches
    assert spec.max_block is None  # hold the dataflow, never drop
    assert spec.retries.max_attempts is None
    assert spec.unit == "tag"
    assert spec.escaping == "portable"


def test_durations_accept_text() -> None:
    spec = InfluxDBSinkSpec(
        kind="influxdb",
        database="plant",
        flush_interval="250ms",
        max_block="5m",
        retries={"initial_backoff": "100ms", "max_backoff": "10s", "max_attempts": 4},
    )
    assert spec.flush_interval == 0.25
    assert spec.max_block == 300.0
    assert (spec.retries.initial_backoff, spec.retries.max_backoff, spec.retries.max_attempts) == (
        0.1,
        10.0,
        4,
    )
    assert InfluxDBSinkSpec(kind="influxdb", database="plant", max_block=None).max_block is None


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"database": "d", "bucket": "b"},
            "database (InfluxDB 1.x, api v1) and bucket (InfluxDB 2.x, api v2)",
        ),
        ({"api": "v2", "bucket": "b"}, "org: required with api v2"),
        ({"api": "v2", "org": "o"}, "bucket: required with api v2"),
        ({"api": "v1", "database": "d", "token": "t"}, "token: v2 settings, but api is v1"),
        ({"api": "v2", "org": "o", "bucket": "b", "username": "u"}, "username: v1 settings, but api is v2"),
        ({"database": "d", "password": SECRET}, "password: given without username"),
        ({"database": "d", "databse": "x"}, "unknown field 'databse'; allowed:"),
        ({"database": "d", "api": "v3"}, "api: Input should be 'v1' or 'v2'"),
        ({"database": "d", "url": "ftp://host"}, "url: 'ftp://host' is not an http:// or https:// URL"),
        ({"database": "d", "url": "http://u:p@host:8086"}, "url: credentials do not belong in the url"),
        ({"database": "d", "url": "http://host:8086/?db=x"}, "must not have a query"),
        ({"database": "d", "url": "http://host:99999"}, "url: 'http://host:99999': Port out of range"),
        ({"database": "d", "batch_size": 0}, "batch_size: Input should be greater than or equal to 1"),
        ({"database": "d", "batch_size": 10, "max_buffer_lines": 5}, "max_buffer_lines: must be at least"),
        ({"database": "d", "flush_interval": 0}, "flush_interval: Input should be greater than 0"),
        ({"database": "d", "flush_interval": "soon"}, "flush_interval:"),
        ({"database": "d", "measurement": "#m"}, "measurement: must not start with '#'"),
        ({"database": "d", "measurement": "m\\"}, "has a backslash before ',', '=', ' ', '\\' or at its end"),
        ({"database": "d", "measurement": "a\nb"}, "contains a control character"),
        ({"database": " d"}, "database: ' d' has control characters or surrounding spaces"),
        ({"database": "d", "unit": "label"}, "unit: Input should be 'tag', 'field' or 'omit'"),
        ({"database": "d", "ca_file": "/ca.pem"}, "ca_file: only used with an https:// url"),
        (
            {"database": "d", "retries": {"initial_backoff": 5, "max_backoff": 1}},
            "retries: max_backoff (1.0 s) must be at least initial_backoff (5.0 s)",
        ),
    ],
)
def test_errors_name_the_field(fields: dict[str, Any], expected: str) -> None:
    problems = _problems(**fields)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    "fields",
    [
        {"database": "d", "username": "writer", "password": SECRET},
        {"org": "o", "bucket": "b", "token": SECRET},
    ],
)
def test_secrets_never_show(fields: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    spec = InfluxDBSinkSpec(kind="influxdb", **fields)
    for text in (repr(spec), str(spec), spec.model_dump_json(), spec.target(), repr(InfluxDBSink(spec))):
        assert SECRET not in text
    assert "**********" in repr(spec)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("spec %s", spec)
    assert SECRET not in caplog.text


def test_validation_errors_do_not_echo_secrets() -> None:
    problems = _problems(database="d", password=SECRET, batch_size="many")
    assert problems
    assert not any(SECRET in p for p in problems)
    problems = _problems(org="o", bucket="b", token=12345)
    assert not any("12345" in p for p in problems)


def test_settings_from_the_environment() -> None:
    env = {"DTE_INFLUXDB_URL": "https://influx.example:8086", "DTE_INFLUXDB_TOKEN": SECRET}
    document = {
        "kind": "influxdb",
        "url": "${DTE_INFLUXDB_URL:-http://127.0.0.1:8086}",
        "org": "${DTE_INFLUXDB_ORG:-dte}",
        "bucket": "${DTE_INFLUXDB_BUCKET:-dte}",
        "token": "${DTE_INFLUXDB_TOKEN}",
    }
    spec = InfluxDBSinkSpec.model_validate(interpolate(document, env))
    assert spec.url == "https://influx.example:8086"
    assert (spec.api, spec.org, spec.bucket) == ("v2", "dte", "dte")
    assert spec.token is not None
    assert spec.token.get_secret_value() == SECRET


def test_target_describes_where_points_go() -> None:
    spec = InfluxDBSinkSpec(
        kind="influxdb", url="http://db:8086/", database="plant", retention_policy="a_year"
    )
    assert spec.url == "http://db:8086"
    assert spec.target() == "InfluxDB at http://db:8086 (database 'plant', retention policy 'a_year')"
    v2 = InfluxDBSinkSpec(kind="influxdb", org="acme", bucket="plant")
    assert v2.target() == "InfluxDB at http://127.0.0.1:8086 (org 'acme', bucket 'plant')"


def test_fields_and_tags_are_checked() -> None:
    spec = InfluxDBSinkSpec(kind="influxdb", fields=["value", "estimate"], tags=["twin_id", "channel"])
    assert spec.fields == ["value", "estimate"]
    with pytest.raises(ValidationError, match="must include twin_id and channel"):
        InfluxDBSinkSpec(kind="influxdb", tags=["twin_id"])
    with pytest.raises(ValidationError, match="each field once"):
        InfluxDBSinkSpec(kind="influxdb", fields=["value", "value"])
    with pytest.raises(ValidationError, match="fields"):
        InfluxDBSinkSpec(kind="influxdb", fields=["bad name"])
