"""What-if simulation: closed-form propagation, sampling bands, scenarios, and a predicted crossing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from dte_stream.alerts.rules import AlertEngine
from dte_stream.errors import ConfigError
from dte_stream.readings import ReadingBatch
from dte_stream.spec.twins import TwinTypeSpec
from dte_stream.twins.bank import TwinBank
from dte_stream.twins.routing import TypedBatch
from dte_stream.view import ViewCollector
from dte_stream.whatif import Scenario, simulate

S = 10**9
TAU, Q, R = 600.0, 0.002, 0.04

ROOM = TwinTypeSpec.model_validate(
    {
        "name": "room",
        "channels": {
            "temp": {"unit": "degC"},
            "heater": {},
            "pressure": {"filter": {"model": "local_linear_trend"}},
        },
        "models": [
            {
                "name": "air",
                "preset": {"model": "thermal", "tau": TAU, "noise": Q, "measurement_noise": R},
                "observes": ["temp"],
                "controls": ["heater"],
            }
        ],
        "alerts": {
            "rules": [
                {"kind": "threshold", "name": "hot", "channels": ["temp"], "signal": "estimate", "above": 30},
                {
                    "kind": "threshold",
                    "name": "cold_reading",
                    "channels": ["temp"],
                    "below": 5,
                    "holds_for": 30,
                },
            ]
        },
    }
)


def apply(bank: TwinBank, rows: list[tuple[str, str, int, float]]) -> None:
    ids, chans, times, values = zip(*rows, strict=True)
    rb = ReadingBatch.from_columns(list(ids), list(chans), list(times), list(values))
    index = np.array([bank.channels.index(c) for c in chans])
    bank.update(TypedBatch("room", rb, index), now_ns=max(times))


def record_of(bank: TwinBank, twin: str = "r1") -> dict:
    collector = ViewCollector()
    # the collector publishes twins it saw change: tell it through one empty-score row per twin
    from dte_stream.batches import EstimateBatch
    from dte_stream.twins.bank import BankUpdate

    f = np.array([np.nan])
    one = EstimateBatch(
        "room", np.array([twin]), np.array(["temp"]), np.array([0]), f, np.array([""]), f, f, f, f
    )
    collector.note(BankUpdate(one, []))
    records, _ = collector.records(bank, None)
    return records[0]


def warm_room(seed: int = 1) -> tuple[TwinBank, float, int]:
    """A room heated towards 25 degC: 100 readings, one a minute; returns the bank, truth, time."""
    rng = np.random.default_rng(seed)
    bank = TwinBank(ROOM)
    apply(bank, [("r1", "heater", 0, 25.0)])
    x, t = 15.0, 0
    for _ in range(100):
        t += 60 * S
        x = 25.0 + (x - 25.0) * math.exp(-60 / TAU) + rng.normal(0, math.sqrt(Q * 60))
        apply(
            bank,
            [("r1", "temp", t, x + rng.normal(0, math.sqrt(R))), ("r1", "pressure", t, 4.0 + t / S * 1e-4)],
        )
    return bank, x, t


def test_thermal_mean_and_bands_match_the_closed_form() -> None:
    bank, _, t_end = warm_room()
    record = record_of(bank)
    air = next(m for m in record["models"] if m["group"] == "air")
    x0, p0 = air["mean"][0], air["cov"][0][0]
    power = 35.0  # heater set point raised from 25 to 35 at the start
    n = 4000
    out = simulate(
        ROOM,
        record,
        horizon_s=1800,
        step_s=30,
        samples=n,
        seed=7,
        scenario=Scenario(controls={"heater": [(0, power)]}),
    )
    t = np.asarray(out.times_s)
    a = np.exp(-t / TAU)
    mean = power + (x0 - power) * a
    var = p0 * a * a + Q * TAU / 2 * (1 - a * a)
    temp = out.channels["temp"]
    np.testing.assert_allclose(temp["mean"], mean, rtol=0, atol=1e-9)
    np.testing.assert_allclose(out.states["air.temperature"]["mean"], mean, rtol=0, atol=1e-9)
    np.testing.assert_allclose(temp["std"], np.sqrt(var), rtol=1e-9)
    # the 5-95 % sample band: mean +- 1.645 std, within sampling error (std of a quantile ~ 2.1 std/sqrt(n))
    tol = 5 * 2.1 * np.sqrt(var) / np.sqrt(n)
    assert np.all(np.abs(np.asarray(temp["low"]) - (mean - 1.6449 * np.sqrt(var))) < tol)
    assert np.all(np.abs(np.asarray(temp["high"]) - (mean + 1.6449 * np.sqrt(var))) < tol)
    assert out.start_ns == t_end


def test_trend_channel_extrapolates_its_slope_exactly() -> None:
    bank, _, _ = warm_room()
    record = record_of(bank)
    trend = next(m for m in record["models"] if m["group"] == "local_linear_trend")
    (level, slope), cov = trend["mean"], np.asarray(trend["cov"])
    out = simulate(ROOM, record, horizon_s=600, step_s=60, samples=50, seed=1)
    t = np.asarray(out.times_s)
    np.testing.assert_allclose(out.channels["pressure"]["mean"], level + slope * t, rtol=0, atol=1e-9)
    q_level, q_slope = 0.01, 1e-6  # the preset's defaults
    var = cov[0, 0] + 2 * t * cov[0, 1] + t * t * cov[1, 1] + q_level * t + q_slope * t**3 / 3
    np.testing.assert_allclose(out.channels["pressure"]["std"], np.sqrt(var), rtol=1e-9)


def test_held_channel_pulls_the_state_and_silent_sensor_cannot_fire() -> None:
    bank, _, _ = warm_room()
    record = record_of(bank)
    held = simulate(
        ROOM, record, horizon_s=600, step_s=60, samples=200, seed=3, scenario=Scenario(hold={"temp": 40.0})
    )
    assert held.channels["temp"]["mean"][-1] > 39.0
    assert held.channels["temp"]["std"][-1] < 0.2
    cold = Scenario(controls={"heater": [(0, -100.0)]})
    fires = simulate(ROOM, record, horizon_s=3600, step_s=60, samples=200, seed=3, scenario=cold)
    silent = simulate(
        ROOM, record, horizon_s=3600, step_s=60, samples=200, seed=3,
        scenario=Scenario(controls=cold.controls, silent={"temp": 0.0}),
    )  # fmt: skip
    odds = {r["rule"]: r for r in fires.rules}
    assert odds["cold_reading"]["probability"] == 1.0
    assert {r["rule"]: r for r in silent.rules}["cold_reading"]["probability"] == 0.0
    assert odds["hot"]["probability"] == 0.0
    assert odds["hot"]["median_s"] is None


def test_refuses_impossible_requests_naming_the_problem() -> None:
    bank, _, _ = warm_room()
    record = record_of(bank)
    with pytest.raises(ConfigError, match="not a control channel"):
        simulate(ROOM, record, horizon_s=60, step_s=10, scenario=Scenario(controls={"temp": [(0, 1.0)]}))
    with pytest.raises(ConfigError, match="not an observed channel"):
        simulate(ROOM, record, horizon_s=60, step_s=10, scenario=Scenario(hold={"heater": 1.0}))
    with pytest.raises(ConfigError, match="samples x steps"):
        simulate(ROOM, record, horizon_s=5000, step_s=1, samples=1000)
    with pytest.raises(ConfigError, match="at most 10,000"):
        simulate(ROOM, record, horizon_s=3600, step_s=5e-324, samples=1)
    with pytest.raises(ConfigError, match="horizon and step"):
        simulate(ROOM, record, horizon_s=10, step_s=60)


def test_predicted_crossing_matches_what_the_thermal_twin_then_did() -> None:
    """Heat the room (set point 35): the what-if says when the estimate passes 30; then it happens."""
    rng = np.random.default_rng(11)
    bank, x, t = warm_room(seed=11)
    engine = AlertEngine("room", ROOM.channel_names(), ROOM.alerts)
    apply(bank, [("r1", "heater", t, 35.0)])
    record = record_of(bank)
    out = simulate(ROOM, record, horizon_s=3600, step_s=10, samples=2000, seed=5)
    hot = next(r for r in out.rules if r["rule"] == "hot")
    assert hot["probability"] > 0.95
    # now the room really heats: readings every 10 s from the same physics
    fired_at = None
    for k in range(1, 361):
        x = 35.0 + (x - 35.0) * math.exp(-10 / TAU) + rng.normal(0, math.sqrt(Q * 10))
        rb = ReadingBatch.from_columns(["r1"], ["temp"], [t + k * 10 * S], [x + rng.normal(0, math.sqrt(R))])
        update = bank.update(TypedBatch("room", rb, np.array([0])), now_ns=t + k * 10 * S)
        events = engine.update(update.estimates, t + k * 10 * S)
        if any(e.rule == "hot" and e.state == "firing" for e in events):
            fired_at = k * 10.0
            break
    assert fired_at is not None
    spread = hot["p90_s"] - hot["median_s"]
    assert abs(fired_at - hot["median_s"]) <= 2.5 * spread + 10, (fired_at, hot)


def test_whatif_command_reads_the_view_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from dte_stream.cli.main import main
    from dte_stream.view import TwinView

    bank, _, _ = warm_room()
    view = TwinView.open(tmp_path)
    view.put_types([ROOM.model_dump(mode="json")])
    view.put([record_of(bank)], now_ns=1)
    args = ["whatif", "r1", "--data-dir", str(tmp_path), "--horizon", "30m", "--step", "1m", "--seed", "1"]
    plot = str(tmp_path / "w.png")
    assert main([*args, "--control", "heater=40@5m", "--format", "json", "--plot", plot]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["times_s"]) == 31
    assert (tmp_path / "w.png").stat().st_size > 10_000
    assert main([*args, "--control", "heater=warm"]) == 2
    assert "--control 'heater=warm'" in capsys.readouterr().err
    assert main(["whatif", "nope", "--data-dir", str(tmp_path)]) == 2
