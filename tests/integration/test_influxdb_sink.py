"""InfluxDBSink against the real servers: InfluxDB 1.6 (v1 /write, read back with InfluxQL) and
VictoriaMetrics (v2 /api/v2/write through influxdb-client, read back with /api/v1/export).

Every test writes EstimateBatches through the sink in a small Bytewax flow and checks, on the
server, every tag, every field value bit for bit and every timestamp: hostile ids are exact
series or dead letters, never corrupted or extra points, and a batch written twice is one point
per reading.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.errors import BytewaxRuntimeError
from bytewax.testing import TestingSource, run_main
from influxql import influxql

from dte_stream.batches import EstimateBatch
from dte_stream.connectors.influxdb import InfluxDBSink
from dte_stream.errors import ConnectorError
from dte_stream.metrics import METRICS
from dte_stream.spec.influxdb import InfluxDBSinkSpec
from dte_stream.store.dead_letters import DeadLetterLog

pytestmark = pytest.mark.integration

T0 = 1_767_323_045_000_000_000  # 2026-01-02T03:04:05Z
FIELDS = ("value", "estimate", "std", "innovation", "nis")
TIMEOUT = 15.0

# Ids that every server stores exactly (written with escaping "portable").
PORTABLE_IDS = [
    "pump 1",
    "a,b",
    "a=b",
    "x=1,y=2 z",
    'say "hi"',
    "it's",
    "back\\slash",
    "C:\\temp\\x",
    "ü€漢😀",
    "#not-a-comment",
    "*",
    "{curly}",
    "  padded  ",
    "trailing=",
    "\\leading",
]
# Ids that InfluxDB's own parser reads differently from the reference: exact on
# VictoriaMetrics with escaping "spec", dead letters with "portable".
AMBIGUOUS_IDS = ["ends\\", "a\\,b", "a\\\\b", "a\\ b", "x\\=y"]
# Ids that no server can store: always dead letters.
UNWRITABLE_IDS = ["", "new\nline", "tab\there"]


def _uid() -> str:
    return uuid.uuid4().hex[:10]


def _http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def influxql_string(text: str) -> str:
    """An InfluxQL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def points(url: str, db: str, where: str = "") -> list[dict[str, Any]]:
    """Every point of dte_readings as a dict of column -> value."""
    rows: list[dict[str, Any]] = []
    for series in influxql(url, f"SELECT * FROM dte_readings {where}", db):
        rows.extend(dict(zip(series["columns"], values, strict=True)) for values in series["values"])
    return rows


@pytest.fixture(autouse=True)
def _fresh_metrics() -> Iterator[None]:
    METRICS.reset()
    yield
    METRICS.reset()


def estimates(
    twin_ids: list[str],
    *,
    twin_type: str = "pump",
    channels: list[str] | None = None,
    units: list[str] | None = None,
    start: int = T0,
    step: int = 1_000_123,
    seed: int = 0,
) -> EstimateBatch:
    """One row per twin id with awkward floats (tiny, huge, negative zero, NaN in nis)."""
    n = len(twin_ids)
    rng = np.random.default_rng(seed)
    cols = {name: rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n) for name in FIELDS}
    if n > 2:
        cols["value"][0] = -0.0
        cols["estimate"][1] = 5e-324
        cols["nis"][::3] = math.nan
    return EstimateBatch(
        twin_type,
        np.array(twin_ids, dtype=np.str_),
        np.array(channels or ["temp"] * n, dtype=np.str_),
        start + np.arange(n, dtype=np.int64) * step,
        cols["value"],
        np.array(units or [""] * n, dtype=np.str_),
        cols["estimate"],
        cols["std"],
        cols["innovation"],
        cols["nis"],
    )


def run_sink(items: list[EstimateBatch], spec: InfluxDBSinkSpec, dead_letters: Path | None = None) -> None:
    flow = Dataflow("influxdb_sink_test")
    op.output("influxdb", op.input("estimates", flow, TestingSource(items)), InfluxDBSink(spec, dead_letters))
    run_main(flow)


def v1_spec(url: str, db: str, **fields: Any) -> InfluxDBSinkSpec:
    return InfluxDBSinkSpec.model_validate({"kind": "influxdb", "url": url, "database": db, **fields})


def rows_of(batch: EstimateBatch) -> list[dict[str, Any]]:
    return [
        {
            "twin_id": str(batch.twin_id[i]),
            "twin_type": batch.twin_type,
            "channel": str(batch.channel[i]),
            "unit": str(batch.unit[i]) or None,
            "time": int(batch.time_ns[i]),
            **{name: float(getattr(batch, name)[i]) for name in FIELDS},
        }
        for i in range(len(batch))
    ]


def assert_same_point(got: dict[str, Any], want: dict[str, Any]) -> None:
    for key in ("twin_id", "twin_type", "channel", "unit", "time"):
        assert got.get(key) == want[key], (key, got, want)  # a tag no point has is no column
    for name in FIELDS:
        if math.isnan(want[name]):
            assert got[name] is None, (name, got)
        else:
            # bit for bit; InfluxDB's JSON writes 1e18 as 1000000000000000000 and -0.0 as 0
            assert float(got[name]) == want[name], (name, got[name], want[name])


# --------------------------------------------------------------------------------------------
# InfluxDB 1.x, v1 API
# --------------------------------------------------------------------------------------------


def test_v1_every_tag_field_and_timestamp_arrives(influxdb: Any, database: str) -> None:
    pumps = estimates(
        [f"pump-{i}" for i in range(300)],
        channels=["temp", "pressure", "flow"] * 100,
        units=["°C", "bar", ""] * 100,
    )
    valves = estimates([f"valve-{i}" for i in range(40)], twin_type="valve", start=T0 + 7, seed=1)
    run_sink([pumps, valves], v1_spec(influxdb.url, database, batch_size=128, max_buffer_lines=256))

    got = {(p["twin_id"], p["channel"], p["time"]): p for p in points(influxdb.url, database)}
    want = rows_of(pumps) + rows_of(valves)
    assert len(got) == len(want) == 340
    for row in want:
        assert_same_point(got[(row["twin_id"], row["channel"], row["time"])], row)
    assert METRICS.get("influxdb_points_written") == 340
    assert METRICS.get("influxdb_batches_written") >= 3
    assert METRICS.get("influxdb_points_dropped") == 0


def test_v1_the_same_readings_twice_are_one_point_each(influxdb: Any, database: str) -> None:
    batch = estimates([f"pump-{i}" for i in range(500)])
    spec = v1_spec(influxdb.url, database)
    run_sink([batch, batch], spec)  # a replay inside one run
    run_sink([batch], spec)  # and a second run, as after a restart
    (series,) = influxql(influxdb.url, "SELECT count(value) FROM dte_readings", database)
    assert series["values"][0][1] == 500
    got = {p["twin_id"]: p for p in points(influxdb.url, database)}
    for row in rows_of(batch):
        assert_same_point(got[row["twin_id"]], row)
    assert METRICS.get("influxdb_points_written") == 1500


def test_v1_hostile_ids_are_exact_series_or_dead_letters(
    influxdb: Any, database: str, tmp_path: Path
) -> None:
    ids = PORTABLE_IDS + AMBIGUOUS_IDS + UNWRITABLE_IDS
    channel = "out,side temp=1"
    batch = estimates(
        ids, twin_type="pump type=x,y", channels=[channel] * len(ids), units=["m/s²"] * len(ids)
    )
    dead = tmp_path / "dead.jsonl"
    run_sink([batch], v1_spec(influxdb.url, database, measurement="dte readings,x"), dead)

    all_points = influxql(influxdb.url, 'SELECT count(value) FROM "dte readings,x"', database)
    assert all_points[0]["values"][0][1] == len(PORTABLE_IDS)  # no extra points
    for row in rows_of(batch):
        if row["twin_id"] not in PORTABLE_IDS:
            continue
        where = f"WHERE twin_id = {influxql_string(row['twin_id'])}"
        found = []
        for series in influxql(influxdb.url, f'SELECT * FROM "dte readings,x" {where}', database):
            found.extend(dict(zip(series["columns"], v, strict=True)) for v in series["values"])
        assert len(found) == 1, (row["twin_id"], found)
        assert_same_point(found[0], row)
    (tags,) = influxql(influxdb.url, 'SHOW TAG VALUES FROM "dte readings,x" WITH KEY = "twin_id"', database)
    assert sorted(v[1] for v in tags["values"]) == sorted(PORTABLE_IDS)

    letters = list(DeadLetterLog(dead).read())
    refused = sorted(json.loads(d.raw)["twin_id"] for d in letters)
    assert refused == sorted(AMBIGUOUS_IDS + UNWRITABLE_IDS)
    assert METRICS.get("influxdb_points_invalid") == len(refused)


def test_v1_a_missing_database_fails_at_start_or_is_created(influxdb: Any) -> None:
    name = f"dte_missing_{_uid()}"
    with pytest.raises(BytewaxRuntimeError) as info:
        run_sink([estimates(["a"])], v1_spec(influxdb.url, name))
    causes = []
    error: BaseException | None = info.value
    while error is not None:
        causes.append(error)
        error = error.__cause__
    assert isinstance(causes[-1], ConnectorError)
    assert f"database '{name}' not found (create it, or set create_database: true)" in str(causes[-1])
    run_sink([estimates(["a", "b", "c"])], v1_spec(influxdb.url, name, create_database=True))
    try:
        assert len(points(influxdb.url, name)) == 3
    finally:
        influxql(influxdb.url, f'DROP DATABASE "{name}"')


def test_v1_points_the_server_refuses_are_dead_letters_and_writing_goes_on(
    influxdb: Any, database: str, tmp_path: Path
) -> None:
    # a string "value" field makes every float value of that shard a type conflict (400)
    status, body = _http(
        "POST",
        f"{influxdb.url}/write?db={database}&precision=ns",
        f'dte_readings,twin_id=x value="text" {T0}'.encode(),
    )
    assert status == 204, body
    dead = tmp_path / "dead.jsonl"
    later = estimates([f"later-{i}" for i in range(5)], start=T0 + 30 * 86_400 * 10**9)  # another shard
    run_sink(
        [estimates([f"pump-{i}" for i in range(20)]), later],
        v1_spec(influxdb.url, database, batch_size=20),
        dead,
    )
    letters = list(DeadLetterLog(dead).read())
    assert len(letters) == 20
    assert all("field type conflict" in d.reason for d in letters)
    assert all(d.raw.startswith(b"dte_readings,channel=temp,twin_id=pump-") for d in letters)
    assert METRICS.get("influxdb_points_rejected") == 20
    assert sorted(p["twin_id"] for p in points(influxdb.url, database, "WHERE twin_id =~ /later/")) == [
        f"later-{i}" for i in range(5)
    ]


def test_v1_retention_policy_field_units_and_gzip(influxdb: Any, database: str) -> None:
    influxql(influxdb.url, f'CREATE RETENTION POLICY "short" ON "{database}" DURATION 1000w REPLICATION 1')
    batch = estimates(["a", "b"], units=["kW", ""])
    run_sink([batch], v1_spec(influxdb.url, database, retention_policy="short", unit="field", gzip=True))
    rows = []
    for series in influxql(influxdb.url, 'SELECT * FROM "short"."dte_readings"', database):
        rows.extend(dict(zip(series["columns"], v, strict=True)) for v in series["values"])
    assert sorted((r["twin_id"], r["unit"]) for r in rows) == [("a", "kW"), ("b", None)]
    assert points(influxdb.url, database) == []  # nothing in the default policy


# --------------------------------------------------------------------------------------------
# VictoriaMetrics, v2 API through influxdb-client
# --------------------------------------------------------------------------------------------


def vm_export(url: str, match: str) -> list[dict[str, Any]]:
    """Exported series matching ``match`` (after a flush), waiting until something is there."""
    deadline = time.monotonic() + TIMEOUT
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        _http("GET", f"{url}/internal/force_flush")
        status, body = _http("GET", f"{url}/api/v1/export?{urllib.parse.urlencode({'match[]': match})}")
        assert status == 200, body
        rows = [json.loads(line) for line in body.splitlines() if line.strip()]
        if rows:
            return rows
        time.sleep(0.2)
    return rows


def v2_spec(url: str, **fields: Any) -> InfluxDBSinkSpec:
    return InfluxDBSinkSpec.model_validate(
        {"kind": "influxdb", "url": url, "org": "dte", "bucket": "dte", "token": "unused", **fields}
    )


def _ms_batch(ids: list[str], twin_type: str, **kwargs: Any) -> EstimateBatch:
    # VictoriaMetrics keeps milliseconds: whole-millisecond times read back exactly
    return estimates(ids, twin_type=twin_type, step=1_000_000, **kwargs)


def _samples(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str, int], float]:
    out = {}
    for row in rows:
        metric = row["metric"]
        field = metric["__name__"].removeprefix("dte_readings_")
        for value, ts in zip(row["values"], row["timestamps"], strict=True):
            out[(field, metric["twin_id"], metric["channel"], ts)] = value
    return out


def test_v2_every_field_arrives_as_a_series_with_tags_as_labels(victoriametrics: Any) -> None:
    twin_type = f"pump_{_uid()}"
    batch = _ms_batch([f"pump-{i}" for i in range(200)], twin_type, units=["bar", ""] * 100)
    run_sink([batch], v2_spec(victoriametrics.url, batch_size=64, max_buffer_lines=64))
    rows = vm_export(victoriametrics.url, f'{{__name__=~"dte_readings_.*",twin_type="{twin_type}"}}')
    got = _samples(rows)
    for row in rows:
        metric = row["metric"]
        assert metric["twin_type"] == twin_type
        assert set(metric) - {"db"} == {"__name__", "channel", "twin_id", "twin_type"} | (
            {"unit"} if "unit" in metric else set()
        )
    expected = 0
    for row in rows_of(batch):
        for name in FIELDS:
            key = (name, row["twin_id"], row["channel"], row["time"] // 1_000_000)
            if math.isnan(row[name]):
                assert key not in got
                continue
            expected += 1
            # VictoriaMetrics keeps about 12 significant digits and no subnormals (its compression)
            assert got[key] == pytest.approx(row[name], rel=1e-11, abs=1e-300), (key, got[key], row[name])
        assert got[("flags", row["twin_id"], row["channel"], row["time"] // 1_000_000)] == 0
        expected += 1  # the integer field flags, on every point
    assert len(got) == expected
    units = {r["metric"]["twin_id"]: r["metric"].get("unit") for r in rows}
    assert units["pump-0"] == "bar"
    assert units["pump-1"] is None
    assert METRICS.get("influxdb_points_written") == 200


def test_v2_hostile_ids_round_trip_with_spec_escaping(victoriametrics: Any, tmp_path: Path) -> None:
    twin_type = f"hostile {_uid()},x=y"
    ids = PORTABLE_IDS + AMBIGUOUS_IDS + UNWRITABLE_IDS
    batch = _ms_batch(ids, twin_type, channels=["a b,c=d\\e"] * len(ids))
    dead = tmp_path / "dead.jsonl"
    run_sink([batch], v2_spec(victoriametrics.url, escaping="spec", gzip=True), dead)
    selector = json.dumps(twin_type)  # a PromQL string literal is a JSON string
    rows = vm_export(victoriametrics.url, f'{{__name__="dte_readings_value",twin_type={selector}}}')
    got = sorted(r["metric"]["twin_id"] for r in rows)
    assert got == sorted(PORTABLE_IDS + AMBIGUOUS_IDS)
    assert {r["metric"]["channel"] for r in rows} == {"a b,c=d\\e"}
    assert sorted(json.loads(d.raw)["twin_id"] for d in DeadLetterLog(dead).read()) == sorted(UNWRITABLE_IDS)


def test_v2_the_same_readings_twice_read_back_as_one_value(victoriametrics: Any) -> None:
    twin_type = f"pump_{_uid()}"
    batch = _ms_batch([f"pump-{i}" for i in range(50)], twin_type)
    run_sink([batch, batch], v2_spec(victoriametrics.url))
    rows = vm_export(victoriametrics.url, f'{{__name__="dte_readings_value",twin_type="{twin_type}"}}')
    assert len(rows) == 50  # same tags: the same 50 series
    for row in rows:
        # VictoriaMetrics keeps both raw samples (it deduplicates only when told to), but
        # they are the same timestamp and value: a query returns one
        assert len(set(zip(row["timestamps"], row["values"], strict=True))) == 1
