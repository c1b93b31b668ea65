"""The dataflow spec: validation, error messages that name the field, env references."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dte_stream.demo import demo_document, demo_spec
from dte_stream.errors import SpecError
from dte_stream.spec import load_spec, parse_spec

REPO = Path(__file__).resolve().parents[3]


def _doc(**changes: Any) -> dict[str, Any]:
    doc = demo_document()
    doc.update(changes)
    return doc


def _problems(doc: Any, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(doc, "test.yaml", env={} if env is None else env)
    return info.value.problems


def test_every_shipped_dataflow_validates() -> None:
    for path in sorted((REPO / "dataflows").glob("*.yaml")):
        load_spec(path, env={})


def test_demo_yaml_is_the_demo_command_spec() -> None:
    assert load_spec(REPO / "dataflows" / "demo.yaml", env={}) == demo_spec()


def test_env_references_with_defaults_and_values() -> None:
    doc = yaml.safe_load(
        """
        name: x
        sources: [{kind: simulator, twin_type: pump, twins: "${N:-7}", seed: "${SEED}"}]
        twin_types: [{name: pump, channels: {t: {}}}]
        sinks: [{kind: local_store, data_dir: "${DIR:-/tmp/a}/b"}]
        """
    )
    spec = parse_spec(doc, env={"SEED": "3"})
    assert spec.sources[0].twins == 7
    assert spec.sources[0].seed == 3
    assert str(spec.data_dir()) == "/tmp/a/b"
    spec = parse_spec(doc, env={"SEED": "3", "N": "11", "DIR": "/d"})
    assert spec.sources[0].twins == 11
    assert str(spec.data_dir()) == "/d/b"


def test_missing_env_variable_is_named_with_its_path() -> None:
    doc = _doc()
    doc["sinks"] = [{"kind": "local_store", "data_dir": "${NOPE}"}]
    assert _problems(doc) == [
        "sinks[0].data_dir: environment variable NOPE is not set (write ${NOPE:-default} to give a default)"
    ]


def test_unknown_field_names_the_allowed_ones() -> None:
    doc = _doc()
    doc["sources"] = [{**doc["sources"][0], "twinz": 5}]
    (problem,) = _problems(doc)
    assert problem.startswith("sources[0]: unknown field 'twinz'; allowed: ")
    assert "twins" in problem
    assert "rate" in problem


def test_bad_value_names_the_path_and_the_limit() -> None:
    doc = _doc()
    doc["sources"] = [{**doc["sources"][0], "twins": 0}]
    assert _problems(doc) == ["sources[0].twins: Input should be greater than or equal to 1"]


def test_bad_kind_lists_the_allowed_kinds() -> None:
    doc = _doc()
    doc["sinks"] = [{"kind": "influx"}]
    (problem,) = _problems(doc)
    assert problem.startswith("sinks[0]: kind 'influx' is not known; allowed:")
    assert "local_store" in problem


def test_bad_duration_and_unknown_twin_type() -> None:
    doc = _doc()
    doc["sources"] = [{**doc["sources"][0], "interval": "soon", "twin_type": "valve"}]
    problems = _problems(doc)
    assert any(p.startswith("sources[0].interval: 'soon' is not a duration") for p in problems)
    doc["sources"] = [{**demo_document()["sources"][0], "twin_type": "valve"}]
    assert _problems(doc) == ["sources[0].twin_type: 'valve' is not a twin type; declared: pump"]


def test_bad_regex_and_duplicate_channel_alias() -> None:
    doc = _doc(twin_types=[{"name": "pump", "match": "(", "channels": {"a": {"aliases": ["b"]}, "b": {}}}])
    (problem,) = _problems(doc)
    assert problem.startswith("twin_types[0]: match: '(' is not a regular expression")


def test_yaml_errors_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match=r"not valid YAML at line \d+, column \d+"):
        load_spec(bad)
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "nope.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(SpecError, match="the file is empty"):
        load_spec(empty)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(SpecError, match="expected a mapping"):
        load_spec(scalar)


def test_channel_names_are_checked_like_reading_channels() -> None:
    doc = _doc(twin_types=[{"name": "pump", "channels": {"a\nb": {}}}])
    (problem,) = _problems(doc)
    assert problem == "twin_types[0]: channels: channel 'a\\nb' contains a control character"


def test_mqtt_subscription_twin_type_must_be_declared() -> None:
    doc = _doc()
    doc["sources"] = [
        {
            "kind": "mqtt",
            "url": "mqtt://127.0.0.1:1883",
            "subscriptions": [{"topic": "a/+", "template": "a/{twin}", "twin_type": "valve"}],
        }
    ]
    assert _problems(doc) == [
        "sources[0].subscriptions[0].twin_type: 'valve' is not a twin type; declared: pump"
    ]
