"""Which spec changes a running daemon and its saved state can take: the compatibility checks."""

from __future__ import annotations

import copy
from typing import Any

from dte_stream.spec import parse_spec
from dte_stream.spec.compat import changed_sections, layout_problems, live_problems

DOC: dict[str, Any] = {
    "version": 1,
    "name": "plant",
    "sources": [{"kind": "simulator", "twin_type": "pump"}],
    "twin_types": [
        {
            "name": "pump",
            "channels": {"temperature": {}, "pressure": {}},
            "alerts": {
                "rules": [{"kind": "threshold", "name": "hot", "channels": ["temperature"], "above": 90}]
            },
        }
    ],
    "sinks": [{"kind": "local_store"}],
}


def changed(edit: Any) -> tuple[list[str], list[str]]:
    """(live problems, changed sections) of DOC against DOC edited by ``edit``."""
    doc = copy.deepcopy(DOC)
    edit(doc)
    old, new = parse_spec(DOC), parse_spec(doc)
    return live_problems(old, new), changed_sections(old, new)


def test_thresholds_rules_notifiers_noise_and_the_version_change_live() -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["version"] = 2
        pump = doc["twin_types"][0]
        pump["alerts"]["rules"][0]["above"] = 70
        pump["alerts"]["rules"].append({"kind": "threshold", "name": "low", "below": 1})
        pump["channels"]["pressure"] = {"filter": {"process_noise": 0.5, "measurement_noise": 2.0}}
        pump["kalman"] = {"gate": 5.0}
        pump["anomaly"] = {"level": 0.99}
        doc["notifiers"] = [{"kind": "webhook", "name": "ops", "url": "http://127.0.0.1:9/hook"}]

    problems, sections = changed(edit)
    assert problems == []
    assert sections == [
        "notifiers",
        "twin_types.pump.alerts",
        "twin_types.pump.anomaly",
        "twin_types.pump.channels",
        "twin_types.pump.kalman",
        "version",
    ]


def test_a_new_channel_or_model_is_refused_with_the_reason() -> None:
    problems, _ = changed(lambda d: d["twin_types"][0]["channels"].update(flow={}))
    assert problems == ["twin type 'pump': channels added: flow (the saved state has no place for them)"]
    problems, _ = changed(
        lambda d: d["twin_types"][0]["channels"].update(pressure={"filter": {"model": "local_linear_trend"}})
    )
    assert problems == [
        "twin type 'pump': another filter model for pressure (random_walk -> local_linear_trend)"
    ]
    problems, _ = changed(lambda d: d["twin_types"][0].update(version=2))
    assert problems == [
        "twin type 'pump': version 1 -> 2 (a new type version refuses the old state on purpose)"
    ]
    problems, _ = changed(lambda d: d["twin_types"][0]["channels"].pop("pressure"))
    assert problems == ["twin type 'pump': channels removed: pressure (the saved state holds them)"]


def test_what_the_running_graph_was_built_from_takes_a_restart() -> None:
    problems, _ = changed(
        lambda d: d["engine"].update(shards=4) if "engine" in d else d.update(engine={"shards": 4})
    )
    assert problems == ["engine changed (the running dataflow was built from them; restart to apply)"]
    problems, _ = changed(
        lambda d: d["sinks"].append({"kind": "local_store", "name": "other", "data_dir": "x"})
    )
    assert problems == ["sinks changed (the running dataflow was built from them; restart to apply)"]
    problems, _ = changed(
        lambda d: d["twin_types"].append({"name": "valve", "match": "v-.*", "channels": {"position": {}}})
    )
    assert problems == ["twin types added: valve (routing is built at start; restart to add them)"]
    problems, _ = changed(lambda d: d["twin_types"][0].update(match="p-.*"))
    assert problems == ["twin type 'pump': match or channel aliases changed (routing; restart to apply)"]


def test_the_first_alert_rule_needs_alert_outputs() -> None:
    doc = copy.deepcopy(DOC)
    doc["twin_types"][0].pop("alerts")
    old, new = parse_spec(doc), parse_spec(DOC)
    assert live_problems(old, new, alert_path=True) == []
    [problem] = live_problems(old, new, alert_path=False)
    assert "started without any" in problem


def test_layout_problems_ignore_settings() -> None:
    old = parse_spec(DOC).twin_types[0]
    doc = copy.deepcopy(DOC)
    doc["twin_types"][0]["channels"]["temperature"] = {"unit": "degC", "quality": {"min": -40, "max": 150}}
    doc["twin_types"][0]["kalman"] = {"horizons": ["1m"]}
    assert layout_problems(old, parse_spec(doc).twin_types[0]) == []
