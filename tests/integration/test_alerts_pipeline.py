"""Alerts through the whole dataflow: a fault fires in Alertmanager and resolves there, across a restart.

Readings go through ``build_flow`` (twin bank, alert engine, notifier sink) with recovery on.
Run 1 ends in the middle of the fault: the alert is active in Alertmanager with its labels and
a webhook received one ``firing``. Run 2 resumes from the recovery dir with the readings after
the fault: nothing is announced twice (the restored state knows the alert fires), an
acknowledgement recorded while it was down is picked up, the ``resolved`` event reaches both
receivers, and the alert log has each event once.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import polars as pl
from bytewax.testing import TestingSource, run_main
from test_alert_integrations import am_alerts, receiver, unique, wait_until

from dte_stream.alerts.store import acknowledge, alert_table
from dte_stream.batches import SourceBatch
from dte_stream.dataflow import build_flow, recovery_config
from dte_stream.readings import ReadingBatch
from dte_stream.spec import parse_spec

T0 = 1_767_225_600 * 10**9


def _batches(values: list[float], start: int) -> list[SourceBatch]:
    """One reading per second of pump-1's temperature, 10 readings per batch."""
    out = []
    for lo in range(0, len(values), 10):
        part = values[lo : lo + 10]
        times = [T0 + (start + lo + i) * 10**9 for i in range(len(part))]
        rb = ReadingBatch.from_columns(["pump-1"] * len(part), ["temperature"] * len(part), times, part)
        out.append(SourceBatch("test", rb, "pump"))
    return out


def test_a_fault_fires_in_alertmanager_and_resolves_after_a_restart(
    alertmanager: Any, tmp_path: Path
) -> None:
    rule = unique("overheating")
    with receiver() as hook:
        spec = parse_spec(
            {
                "name": "alerts_e2e",
                "sources": [{"kind": "simulator", "twin_type": "pump"}],
                "twin_types": [
                    {
                        "name": "pump",
                        "channels": {"temperature": {"unit": "degC"}},
                        "alerts": {
                            "rules": [
                                {
                                    "kind": "threshold",
                                    "name": rule,
                                    "signal": "value",
                                    "above": 90,
                                    "clear": 85,
                                    "severity": "critical",
                                    "labels": {"site": "north"},
                                    "message": "{twin_id}: {value:.0f} > {level:g}",
                                }
                            ]
                        },
                    }
                ],
                "sinks": [{"kind": "local_store", "data_dir": str(tmp_path / "data")}],
                "notifiers": [
                    {"kind": "alertmanager", "url": alertmanager.url, "labels": {"env": "test"}},
                    {"kind": "webhook", "url": hook.url},
                ],
                "engine": {"shards": 2, "epoch_seconds": 0.1},
            }
        )
        normal = [70.0 + (i % 3) for i in range(30)]
        fault = [95.0, 96.0, 89.0, 97.0, 94.0] * 4  # hovers around the trigger: fires once
        after = [80.0 + (i % 2) for i in range(30)]
        recovery = tmp_path / "recovery"
        first = _batches(normal + fault, 0)
        flow = build_flow(spec, inputs={"test": TestingSource(first)})
        run_main(flow, epoch_interval=timedelta(seconds=0.1), recovery_config=recovery_config(recovery))

        alerts = wait_until(lambda: am_alerts(alertmanager.url, rule))
        assert len(alerts) == 1
        assert alerts[0]["labels"] == {
            "alertname": rule,
            "twin_id": "pump-1",
            "twin_type": "pump",
            "severity": "critical",
            "site": "north",
            "env": "test",
            "channel": "temperature",
        }
        assert alerts[0]["annotations"]["message"] == "pump-1: 95 > 90"
        assert alerts[0]["status"]["state"] == "active"
        states = [orjson.loads(body)["state"] for body in hook.accepted()]
        assert states == ["firing"]

        # Someone takes the alert while the dataflow is down; the restarted run picks it up.
        acknowledge(tmp_path / "data", f"pump-1/{rule}", "alice")
        second = first + _batches(after, len(normal) + len(fault))
        flow = build_flow(spec, inputs={"test": TestingSource(second)})
        run_main(flow, epoch_interval=timedelta(seconds=0.1), recovery_config=recovery_config(recovery))

        assert wait_until(lambda: not am_alerts(alertmanager.url, rule))
        events = [orjson.loads(body) for body in hook.accepted()]
        assert [(e["state"], e["sequence"]) for e in events] == [
            ("firing", 1),
            ("acknowledged", 2),
            ("resolved", 3),
        ]
        assert events[1]["acked_by"] == "alice"
        assert events[2]["value"] <= 85

    log = pl.read_parquet(tmp_path / "data" / "alerts" / "**" / "*.parquet").sort("sequence")
    assert log.select("state", "sequence").rows() == [("firing", 1), ("acknowledged", 2), ("resolved", 3)]
    table = alert_table(tmp_path / "data")
    assert table.select("state", "acked_by", "events").rows() == [("resolved", "alice", 3)]
