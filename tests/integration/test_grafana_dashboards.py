"""Every panel of the Grafana dashboards in deploy/grafana returns data from a real InfluxDB 1.x
that the dataflow filled (simulated pumps with faults, the demo's twin type and alert rules)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO / "deploy" / "grafana" / "dashboards").glob("*.json"))


def influxql(url: str, db: str, query: str) -> dict[str, Any]:
    params = urllib.parse.urlencode({"db": db, "q": query, "epoch": "ns"})
    with urllib.request.urlopen(f"{url}/query?{params}", timeout=30) as response:
        body: dict[str, Any] = json.load(response)
    return body


def as_run(query: str) -> str:
    """The query as Grafana sends it: time filter and interval filled in, variables at All (.*)."""
    query = query.replace("$timeFilter", "time > now() - 7d").replace("$__interval", "1m")
    return re.sub(r"\$(twin_type|twin_id|channel)\b", ".*", query)


@pytest.fixture(scope="module")
def filled(influxdb: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """An InfluxDB database with 2 hours of 12 simulated pumps written by `dte-stream run`."""
    tmp = tmp_path_factory.mktemp("grafana")
    db = f"grafana_{uuid.uuid4().hex[:8]}"
    demo = yaml.safe_load((REPO / "dataflows" / "demo.yaml").read_text())
    start = (datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=0)
    spec = {
        "version": 1,
        "name": "grafana_fill",
        "sources": [
            {
                "kind": "simulator",
                "name": "pumps",
                "twin_type": "pump",
                "twins": 12,
                "interval": "5s",
                "ticks": 1440,
                "rate": 0,
                "seed": 7,
                "start": start.isoformat(),
                "faults_per_twin_hour": 6,
            }
        ],
        "twin_types": demo["twin_types"],
        "sinks": [{"kind": "influxdb", "url": influxdb.url, "database": db, "create_database": True}],
        "dead_letters": {"path": str(tmp / "dead.jsonl")},
        "engine": {"shards": 2, "clock": "event"},
    }
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    done = subprocess.run(
        [sys.executable, "-m", "dte_stream", "run", str(path), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return influxdb.url, db


def _panels() -> list[tuple[str, str, str]]:
    out = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                out.append((path.name, panel["title"], target["query"]))
    return out


def test_there_are_dashboards_for_twins_anomalies_and_alerts() -> None:
    assert [p.name for p in DASHBOARDS] == ["dte-alerts.json", "dte-anomalies.json", "dte-twins.json"]
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] == path.stem
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == "dte-influxdb"
            assert panel["targets"]
            assert all(t["rawQuery"] for t in panel["targets"])


@pytest.mark.parametrize(("dashboard", "title", "query"), _panels(), ids=lambda v: str(v)[:40])
def test_every_panel_query_returns_data(
    filled: tuple[str, str], dashboard: str, title: str, query: str
) -> None:
    url, db = filled
    result = influxql(url, db, as_run(query))["results"][0]
    assert "error" not in result, f"{dashboard} / {title}: {result.get('error')}"
    series = result.get("series", [])
    assert series, f"{dashboard} / {title}: no data for {as_run(query)}"
    values = [v for s in series for row in s["values"] for v in row[1:] if v is not None]
    assert values, f"{dashboard} / {title}: only empty values"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_template_variable_lists_values(filled: tuple[str, str], path: Path) -> None:
    url, db = filled
    for variable in json.loads(path.read_text())["templating"]["list"]:
        result = influxql(url, db, as_run(variable["query"]))["results"][0]
        values = [row[1] for s in result.get("series", []) for row in s["values"]]
        assert values, f"{path.name}: variable {variable['name']} lists nothing"
