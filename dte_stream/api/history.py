"""A twin's history for the API, downsampled: from the local store, or from InfluxDB 1.x.

Both give, per channel and time bucket (``bucket_ns`` wide, at most ``points`` buckets), the
bucket's first time (``time_ns``), the mean, min and max reading, the mean estimate and std, the
highest anomaly score, the flags of any reading (local store only) and the number of readings.
The local store is used when the data directory has a ``readings`` table; otherwise a spec's
InfluxDB sink with the v1 API is queried with InfluxQL (``GROUP BY time(...)``). The v2 API
(Flux) is not queried.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from dte_stream.errors import StoreError
from dte_stream.spec.influxdb import InfluxDBSinkSpec
from dte_stream.store.local import LocalStore

__all__ = ["HistoryUnavailableError", "bucket_width", "influxdb_history", "local_history"]


class HistoryUnavailableError(StoreError):
    """No source of history can answer (no local store table, no queryable InfluxDB sink)."""


def bucket_width(since_ns: int, until_ns: int, points: int) -> int:
    """Width of one bucket so that ``[since, until)`` holds at most ``points`` of them."""
    return max(1, math.ceil((until_ns - since_ns) / points))


def local_history(
    data_dir: Path, twin_id: str, channel: str | None, since_ns: int, until_ns: int, width: int
) -> dict[str, dict[str, list[Any]]] | None:
    """Buckets from the local store's ``readings`` table; None when the table does not exist."""
    store = LocalStore(data_dir)
    if "readings" not in store.tables():
        return None
    try:
        frame = store.scan(
            "readings", twin_id=twin_id, channel=channel, since_ns=since_ns, until_ns=until_ns
        ).collect()
    except pl.exceptions.PolarsError as exc:
        raise StoreError(f"the local store cannot be read: {str(exc).splitlines()[0]}") from None
    out: dict[str, dict[str, list[Any]]] = {}
    if not frame.height:
        return out
    binned = (
        frame.with_columns(pl.col("time").dt.epoch("ns").alias("t"))
        .with_columns(((pl.col("t") - since_ns) // width).alias("bucket"))
        .group_by("channel", "bucket")
        .agg(
            pl.col("t").min().alias("time_ns"),
            pl.col("value").mean().alias("value"),
            pl.col("value").min().alias("min"),
            pl.col("value").max().alias("max"),
            pl.col("estimate").mean().alias("estimate"),
            pl.col("std").mean().alias("std"),
            pl.col("anomaly_score").max().alias("anomaly_score"),
            pl.col("flags").fill_null(0).cast(pl.Int64).bitwise_or().alias("flags"),
            pl.len().alias("readings"),
        )
        .drop("bucket")
        .sort("channel", "time_ns")
    )
    for name, part in binned.partition_by("channel", as_dict=True).items():
        cols = part.drop("channel").fill_nan(None)
        out[str(name[0])] = {c: cols[c].to_list() for c in cols.columns}
    return out


def _quote(text: str) -> str:
    """An InfluxQL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ident(text: str) -> str:
    """An InfluxQL identifier."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def influxdb_history(
    sink: InfluxDBSinkSpec, twin_id: str, channel: str | None, since_ns: int, until_ns: int, width: int
) -> dict[str, dict[str, list[Any]]]:
    """Buckets from InfluxDB 1.x (the v1 query API of the sink's server and database)."""
    if (sink.api or ("v2" if sink.org or sink.bucket or sink.token else "v1")) != "v1":
        raise HistoryUnavailableError(
            f"InfluxDB sink {sink.name!r} uses the v2 API; history is read with InfluxQL (v1) only"
        )
    where = f"{_ident('twin_id')} = {_quote(twin_id)} AND time >= {since_ns} AND time < {until_ns}"
    if channel is not None:
        where += f" AND {_ident('channel')} = {_quote(channel)}"
    statement = (
        'SELECT mean("value") AS "value", min("value") AS "min", max("value") AS "max", '
        'mean("estimate") AS "estimate", mean("std") AS "std", max("anomaly_score") AS "anomaly_score", '
        f'count("value") AS "readings" FROM {_ident(sink.measurement)} WHERE {where} '
        f'GROUP BY time({width}ns), "channel" fill(none)'
    )
    params = {"q": statement, "db": sink.database or InfluxDBSinkSpec.DEFAULT_DATABASE, "epoch": "ns"}
    if sink.retention_policy:
        params["rp"] = sink.retention_policy
    auth = None
    if sink.username and sink.password is not None:
        auth = (sink.username, sink.password.get_secret_value())
    verify: bool | str = str(sink.ca_file) if sink.ca_file is not None else sink.verify_tls
    try:
        response = httpx.get(
            sink.url.rstrip("/") + "/query", params=params, auth=auth, timeout=sink.timeout, verify=verify
        )
    except httpx.HTTPError as exc:
        raise StoreError(f"InfluxDB at {sink.url} did not answer the history query: {exc}") from None
    if response.status_code != 200:
        raise StoreError(f"InfluxDB at {sink.url} refused the history query: HTTP {response.status_code}")
    out: dict[str, dict[str, list[Any]]] = {}
    for result in response.json().get("results", []):
        if result.get("error"):
            raise StoreError(f"InfluxDB at {sink.url}: {result['error']}")
        for series in result.get("series", []):
            name = series.get("tags", {}).get("channel", "")
            columns = series["columns"]
            rows = series["values"]
            data = {
                ("time_ns" if c == "time" else c): [row[i] for row in rows] for i, c in enumerate(columns)
            }
            data["flags"] = [None] * len(rows)
            out[name] = data
    return out
