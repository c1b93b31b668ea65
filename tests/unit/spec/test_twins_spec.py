"""Twin types in the spec: presets, shared models, matrices, learners, and their error messages."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from dte_stream.errors import SpecError
from dte_stream.spec import parse_spec
from dte_stream.spec.twins import TwinTypeSpec


def _spec(twin_type: dict[str, Any]) -> Any:
    return parse_spec(
        {
            "name": "x",
            "sources": [{"kind": "simulator", "twin_type": twin_type["name"]}],
            "twin_types": [twin_type],
            "sinks": [{"kind": "local_store"}],
        }
    )


def _error(twin_type: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as info:
        _spec(twin_type)
    return str(info.value)


def test_every_preset_builds_with_its_state_names() -> None:
    channels = {
        "a": {"filter": {}},
        "b": {"filter": {"model": "local_linear_trend"}},
        "c": {"filter": {"model": "thermal", "tau": "10m", "setpoint": 21.0}},
        "d": {"filter": {"model": "damped_oscillator", "period": "2s", "damping": 0.05}},
        "e": {"filter": {"model": "daily_seasonal"}},
    }
    t = _spec({"name": "p", "channels": channels}).twin_types[0]
    names = {c: t.channels[c].filter.build().state_names for c in channels}
    assert names == {
        "a": ("level",),
        "b": ("level", "slope"),
        "c": ("temperature",),
        "d": ("position", "velocity"),
        "e": ("level", "season_cos", "season_sin"),
    }


def test_a_shared_model_with_a_control_channel() -> None:
    t = TwinTypeSpec.model_validate(
        {
            "name": "room",
            "channels": {"t1": {}, "t2": {}, "set": {}},
            "models": [
                {
                    "name": "air",
                    "preset": {"model": "thermal", "tau": 600, "measurement_noise": [0.1, 0.4]},
                    "observes": ["t1", "t2"],
                    "controls": ["set"],
                }
            ],
        }
    )
    model = t.models[0].build()
    assert (model.n, model.m, model.p) == (1, 2, 1)
    assert model.channel_names == ("t1", "t2")
    assert model.control_names == ("set",)
    assert t.per_channel() == []


def test_custom_matrices() -> None:
    t = TwinTypeSpec.model_validate(
        {
            "name": "tank",
            "channels": {"level": {}, "inflow": {}},
            "models": [
                {
                    "name": "tank",
                    "matrices": {
                        "states": ["volume"],
                        "A": [[-0.01]],
                        "B": [[1.0]],
                        "H": [[1.0]],
                        "Q": [[0.1]],
                        "R": [0.5],
                        "P0": [[100.0]],
                    },
                    "observes": ["level"],
                    "controls": ["inflow"],
                }
            ],
        }
    )
    assert t.models[0].build().state_names == ("volume",)


@pytest.mark.parametrize(
    ("twin_type", "message"),
    [
        (
            {"name": "p", "channels": {"a": {"filter": {"model": "kalman9000"}}}},
            "model must be one of random_walk, local_linear_trend",
        ),
        (
            {"name": "p", "channels": {"a": {"filter": {"process_noise": -1}}}},
            "process_noise",
        ),
        (
            {"name": "p", "channels": {"a": {"filter": {"model": "thermal"}}}},
            "tau",
        ),
        (
            {"name": "p", "channels": {"a": {}}, "models": [{"name": "m", "observes": ["zz"], "preset": {}}]},
            "'zz' is not a channel; channels: a",
        ),
        (
            {
                "name": "p",
                "channels": {"a": {}, "b": {}},
                "models": [
                    {"name": "m", "observes": ["a"], "preset": {}},
                    {"name": "n", "observes": ["a", "b"], "preset": {}},
                ],
            },
            "channel 'a' already belongs to model 'm'",
        ),
        (
            {"name": "p", "channels": {"a": {}}, "models": [{"name": "m", "observes": ["a"]}]},
            "give exactly one of preset or matrices",
        ),
        (
            {
                "name": "p",
                "channels": {"a": {"filter": {"model": "local_linear_trend"}}},
                "models": [{"name": "m", "observes": ["a"], "preset": {}}],
            },
            "channels.a.filter: the channel belongs to model 'm'",
        ),
        (
            {
                "name": "p",
                "channels": {"a": {}, "b": {}},
                "models": [{"name": "m", "observes": ["a", "b"], "preset": {"measurement_noise": [1, 2, 3]}}],
            },
            "measurement_noise lists 3 variances for 2 observed channels",
        ),
        (
            {
                "name": "p",
                "channels": {"a": {}},
                "models": [
                    {
                        "name": "m",
                        "observes": ["a"],
                        "matrices": {"A": [[0]], "H": [[1]], "Q": [[-1]], "R": [1], "P0": [[1]]},
                    }
                ],
            },
            "matrix Q is not positive semidefinite",
        ),
        (
            {
                "name": "p",
                "channels": {"a": {}},
                "models": [
                    {
                        "name": "m",
                        "observes": ["a"],
                        "matrices": {"A": [[0, 1], [0, 0]], "H": [[1]], "Q": [[1]], "R": [1], "P0": [[1]]},
                    }
                ],
            },
            "matrix H has shape (1, 1), expected (m, 2)",
        ),
        (
            {"name": "p", "channels": {"a": {}}, "kalman": {"horizons": ["1h", 3600]}},
            "horizons must be distinct",
        ),
        (
            {
                "name": "p",
                "channels": {"a": {}},
                "learners": [{"name": "d", "kind": "adwin", "channels": ["q"]}],
            },
            "learners[0] (d)",
        ),
        (
            {"name": "p", "channels": {"a": {"quality": {"min": 5, "max": 1}}}},
            "min",
        ),
        (
            {"name": "p", "channels": {"a": {}}, "ttl": "forever"},
            "ttl",
        ),
        (
            {
                "name": "p",
                "channels": {"a": {}},
                "alerts": {"rules": [{"kind": "nis", "name": "mm", "level": 10.83, "readings": 5}]},
            },
            "readings 5 can never be reached",
        ),
        ({"name": "p", "channels": {"a": {}}, "anomaly": {"method": "magic"}}, "anomaly.method"),
        ({"name": "p", "channels": {"a": {}}, "anomaly": {"context_bins": 0}}, "anomaly.context_bins"),
        (
            {"name": "p", "channels": {"a": {}}, "anomaly": {"context_halflife": "0s"}},
            "anomaly.context_halflife",
        ),
        ({"name": "p", "channels": {"a": {}}, "anomaly": {"context_after": "soon"}}, "anomaly.context_after"),
        ({"name": "p", "channels": {"a": {}}, "anomaly": {"quiet": -1}}, "anomaly.quiet"),
    ],
)
def test_errors_name_the_field_and_the_problem(twin_type: dict[str, Any], message: str) -> None:
    assert message in _error(twin_type)


def test_fingerprint_follows_layout_not_tuning() -> None:
    base = {"name": "p", "channels": {"a": {}, "b": {"filter": {"model": "local_linear_trend"}}}}
    fp = TwinTypeSpec.model_validate(base).state_fingerprint()
    tuned = {
        "name": "p",
        "channels": {
            "a": {"unit": "C", "filter": {"process_noise": 3}, "quality": {"max": 9}},
            "b": {"filter": {"model": "local_linear_trend", "level_noise": 2}},
        },
        "kalman": {"gate": 30, "horizons": [60]},
        "anomaly": {"level": 0.5, "quiet": 3, "context_halflife": "1d", "context_after": "1h"},
    }
    assert TwinTypeSpec.model_validate(tuned).state_fingerprint() == fp
    for changed in (
        {**base, "version": 2},
        {**base, "channels": {"b": {}, "a": {}}},
        {**base, "channels": {"a": {}, "b": {}}},
        {**base, "kalman": {"adaptive_noise": True}},
        {**base, "learners": [{"name": "d", "kind": "adwin"}]},
        {**base, "anomaly": {"method": "innovation"}},
        {**base, "anomaly": {"context_bins": 48}},
    ):
        assert TwinTypeSpec.model_validate(changed).state_fingerprint() != fp


def test_outputs_and_horizon_names() -> None:
    t = TwinTypeSpec.model_validate(
        {"name": "p", "channels": {"a": {}}, "kalman": {"horizons": [30, "5m", "1d"]}}
    )
    assert t.horizon_names() == ["30s", "5m", "1d"]
    with pytest.raises(ValidationError):
        TwinTypeSpec.model_validate({"name": "p", "channels": {"a": {}}, "outputs": {"nope": True}})
