"""InfluxQL against the test InfluxDB: the helpers the integration tests share."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class InfluxQLError(AssertionError):
    """InfluxDB refused the query (the message is InfluxDB's, e.g. ``database not found: x``)."""


def influxql(url: str, query: str, db: str | None = None, *, timeout: float = 15) -> list[dict[str, Any]]:
    """Run InfluxQL; the series of the first statement (an HTTP or InfluxQL error fails the test)."""
    params = {"q": query, "epoch": "ns", **({"db": db} if db else {})}
    request = urllib.request.Request(f"{url}/query?{urllib.parse.urlencode(params)}", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            raise InfluxQLError(f"InfluxQL {query!r}: HTTP {exc.code}: {exc.read()!r}") from None
    result = json.loads(body)["results"][0]
    if "error" in result:
        raise InfluxQLError(f"InfluxQL {query!r}: {result['error']}")
    series: list[dict[str, Any]] = result.get("series", [])
    return series


def influxql_rows(url: str, query: str, db: str) -> list[list[Any]]:
    """The rows of every series of the query's result."""
    return [row for s in influxql(url, query, db) for row in s["values"]]
