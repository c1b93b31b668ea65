"""``dte-stream alerts list/ack`` and :mod:`dte_stream.alerts.store` on a crafted alert log.

The data directory holds events of several alerts (firing, resolved, acknowledged, re-fired,
stored twice by a replay), appended in several files as a dataflow would.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dte_stream.alerts.log import events_frame
from dte_stream.alerts.store import (
    ACKS_FILE,
    acknowledge,
    alert_table,
    alerts_store,
    check_ack_by,
    read_acks,
)
from dte_stream.batches import AlertEvent
from dte_stream.cli.main import main
from dte_stream.errors import ConfigError, StoreError
from dte_stream.times import format_time_ns

T0 = 1_767_312_000_000_000_000  # 2026-01-02T00:00:00Z
S = 1_000_000_000


def ev(twin: str, rule: str, state: str, seq: int, t: int, starts: int, **kw: object) -> AlertEvent:
    return AlertEvent(
        f"{twin}/{rule}",
        twin,
        "pump",
        rule,
        state,  # type: ignore[arg-type]
        str(kw.pop("severity", "critical")),
        starts_ns=starts,
        time_ns=t,
        sequence=seq,
        **kw,  # type: ignore[arg-type]
    )


def crafted_events() -> list[list[AlertEvent]]:
    """Batches of events, each appended as its own file."""
    hot1 = [
        ev("pump-1", "overheat", "firing", 1, T0, T0, message="temp 97.5 > 95", value=97.5, channel="temp"),
        ev(
            "pump-1",
            "overheat",
            "firing",
            2,
            T0 + 60 * S,
            T0,
            message="temp 98 > 95",
            value=98.0,
            channel="temp",
            renotify=True,
            labels={"site": "north"},
        ),
    ]
    # pump-2: fired, acknowledged by ana, still firing
    hot2 = [
        ev("pump-2", "overheat", "firing", 1, T0 + 10 * S, T0 + 10 * S, message="temp 96", value=96.0),
        ev("pump-2", "overheat", "acknowledged", 2, T0 + 20 * S, T0 + 10 * S, acked_by="ana", value=96.0),
    ]
    # pump-3: fired, acked, resolved, then fired again (a new episode: not acknowledged)
    hot3 = [
        ev("pump-3", "overheat", "firing", 1, T0 + 1 * S, T0 + 1 * S),
        ev("pump-3", "overheat", "acknowledged", 2, T0 + 2 * S, T0 + 1 * S, acked_by="bob"),
        ev("pump-3", "overheat", "resolved", 3, T0 + 3 * S, T0 + 1 * S, acked_by="bob", ends_ns=T0 + 3 * S),
        ev("pump-3", "overheat", "firing", 4, T0 + 30 * S, T0 + 30 * S, severity="warning"),
    ]
    # pump-1/dry: resolved; its events arrive out of order in the files
    dry = [
        ev("pump-1", "dry", "resolved", 2, T0 + 5 * S, T0, ends_ns=T0 + 5 * S, severity="warning"),
        ev("pump-1", "dry", "firing", 1, T0, T0, severity="warning"),
    ]
    return [hot1, hot2 + dry[:1], hot3, dry[1:], hot2[:1]]  # the last batch: a replayed duplicate


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    store = alerts_store(tmp_path)
    for batch in crafted_events():
        store.append("alerts", events_frame(batch))
    return tmp_path


def cli(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------- alert_table


def test_alert_table_folds_events_into_current_state(data_dir: Path) -> None:
    table = alert_table(data_dir)
    assert table["alert_id"].to_list() == [
        "pump-3/overheat",  # firing, since T0+30s
        "pump-2/overheat",  # firing, since T0+10s
        "pump-1/overheat",  # firing, since T0
        "pump-1/dry",  # resolved
    ]
    rows = {r["alert_id"]: r for r in table.with_columns(pl.col(pl.Datetime).dt.epoch("ns")).to_dicts()}
    one = rows["pump-1/overheat"]
    assert (one["state"], one["events"], one["value"], one["message"]) == ("firing", 2, 98.0, "temp 98 > 95")
    assert (one["acked_by"], one["acked_at"], one["since"], one["last_event"]) == (
        None,
        None,
        T0,
        T0 + 60 * S,
    )
    two = rows["pump-2/overheat"]
    assert (two["state"], two["acked_by"], two["acked_at"], two["events"]) == (
        "firing",
        "ana",
        T0 + 20 * S,
        2,
    )
    three = rows["pump-3/overheat"]
    assert (three["state"], three["acked_by"], three["severity"], three["events"]) == (
        "firing",
        None,
        "warning",
        4,
    )
    dry = rows["pump-1/dry"]
    assert (dry["state"], dry["ended"], dry["events"]) == ("resolved", T0 + 5 * S, 2)
    assert table.columns[:2] == ["alert_id", "state"]
    assert table.columns[-1] == "events"


def test_alert_table_state_and_twin_filters(data_dir: Path) -> None:
    assert alert_table(data_dir, "resolved")["alert_id"].to_list() == ["pump-1/dry"]
    assert alert_table(data_dir, "firing").height == 3
    assert alert_table(data_dir, twin_id="pump-1")["alert_id"].to_list() == ["pump-1/overheat", "pump-1/dry"]
    with pytest.raises(ConfigError, match="unknown alert state 'acked'"):
        alert_table(data_dir, "acked")  # type: ignore[arg-type]


def test_alert_table_ties_on_sequence_are_broken_by_time(tmp_path: Path) -> None:
    # an ack recorded by the CLI and a resolution by an engine that had not seen it share a sequence
    alerts_store(tmp_path).append(
        "alerts",
        events_frame(
            [
                ev("p", "r", "firing", 1, T0, T0),
                ev("p", "r", "resolved", 2, T0 + 9 * S, T0, ends_ns=T0 + 9 * S),
                ev("p", "r", "acknowledged", 2, T0 + 5 * S, T0, acked_by="ana"),
            ]
        ),
    )
    row = alert_table(tmp_path).row(0, named=True)
    assert (row["state"], row["acked_by"]) == ("resolved", "ana")


def test_alert_table_without_alerts_and_without_directory(tmp_path: Path) -> None:
    assert alert_table(tmp_path).height == 0
    with pytest.raises(StoreError, match="no data directory"):
        alert_table(tmp_path / "missing")


# ------------------------------------------------------------------------------- CLI list


def test_list_table_is_aligned(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(["alerts", "list", "--data-dir", str(data_dir)], capsys)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == [
        "alert_id",
        "state",
        "severity",
        "since",
        "acked_by",
        "events",
        "value",
        "message",
    ]
    assert set(lines[1]) <= {"-", " "}
    assert len(lines) == 2 + 4
    assert lines[2].startswith("pump-3/overheat  firing")
    assert "ana" in lines[3]
    assert format_time_ns(T0 + 10 * S) in lines[3]
    # columns line up: every row has "state" at the header's offset
    col = lines[0].index("state")
    assert [line[col : col + 8].strip() for line in lines[2:]] == ["firing"] * 3 + ["resolved"]


def test_list_json_and_filters(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(
        ["alerts", "list", "--data-dir", str(data_dir), "--format", "json", "--state", "firing"], capsys
    )
    objs = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [o["alert_id"] for o in objs] == [
        "pump-3/overheat",
        "pump-2/overheat",
        "pump-1/overheat",
    ]
    two = objs[1]
    assert two["acked_by"] == "ana"
    assert two["acked_at_ns"] == T0 + 20 * S
    assert two["acked_at"] == format_time_ns(T0 + 20 * S)
    assert two["since_ns"] == T0 + 10 * S
    assert two["ended"] is None
    assert two["events"] == 2

    code, out, _ = cli(
        [
            "alerts",
            "list",
            "--data-dir",
            str(data_dir),
            "--format",
            "json",
            "--twin",
            "pump-1",
            "--state",
            "resolved",
        ],
        capsys,
    )
    assert [json.loads(line)["alert_id"] for line in out.splitlines()] == ["pump-1/dry"]


def test_list_empty_and_nothing_matching(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(["alerts", "list", "--data-dir", str(empty)], capsys) == (
        0,
        "",
        f"no alerts recorded in {empty}\n",
    )
    code, out, err = cli(["alerts", "list", "--data-dir", str(data_dir), "--twin", "pump-9"], capsys)
    assert (code, out) == (0, "")
    assert "no alerts with twin 'pump-9'" in err
    code, out, err = cli(["alerts", "list", "--data-dir", str(tmp_path / "nope")], capsys)
    assert code == 2
    assert "no data directory" in err


def test_list_table_neutralises_control_characters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alerts_store(tmp_path).append(
        "alerts", events_frame([ev("p", "r", "firing", 1, T0, T0, message="boom\x1b[2J\nfake line\u202e")])
    )
    _, out, _ = cli(["alerts", "list", "--data-dir", str(tmp_path)], capsys)
    assert "\x1b" not in out
    assert "\u202e" not in out
    assert len(out.splitlines()) == 3
    _, out, _ = cli(["alerts", "list", "--data-dir", str(tmp_path), "--format", "json"], capsys)
    assert json.loads(out)["message"] == "boom\x1b[2J\nfake line\u202e"  # json keeps the data exact


# ------------------------------------------------------------------------------- ack


def test_ack_records_event_and_ack_line(data_dir: Path) -> None:
    event = acknowledge(data_dir, "pump-1/overheat", "carol", now_ns=T0 + 90 * S)
    assert (event.state, event.acked_by, event.sequence, event.time_ns) == (
        "acknowledged",
        "carol",
        3,
        T0 + 90 * S,
    )
    assert (event.starts_ns, event.channel, event.labels, event.severity) == (
        T0,
        "temp",
        {"site": "north"},
        "critical",
    )
    row = alert_table(data_dir, twin_id="pump-1").row(0, named=True)
    assert (row["alert_id"], row["state"], row["acked_by"], row["events"]) == (
        "pump-1/overheat",
        "firing",
        "carol",
        3,
    )
    stored = (
        alerts_store(data_dir)
        .query("alerts")
        .filter(pl.col("state") == "acknowledged", pl.col("acked_by") == "carol")
    )
    assert stored.height == 1
    assert stored["sequence"].to_list() == [3]
    lines = (data_dir / ACKS_FILE).read_bytes().splitlines()
    assert [orjson.loads(line) for line in lines] == [
        {"alert_id": "pump-1/overheat", "by": "carol", "time_ns": T0 + 90 * S}
    ]
    acks, offset = read_acks(data_dir, 0)
    assert acks == [{"alert_id": "pump-1/overheat", "by": "carol", "time_ns": T0 + 90 * S}]
    assert offset == (data_dir / ACKS_FILE).stat().st_size


def test_ack_cli_default_by_and_messages(
    data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("USER", "dora")
    code, out, err = cli(["alerts", "ack", "--data-dir", str(data_dir), "pump-3/overheat"], capsys)
    assert (code, err) == (0, "")
    assert out.startswith("acknowledged pump-3/overheat by dora at ")
    monkeypatch.delenv("USER")
    code, out, _ = cli(["alerts", "ack", "--data-dir", str(data_dir), "pump-1/overheat"], capsys)
    assert code == 0
    assert "by cli at" in out
    code, out, _ = cli(["alerts", "ack", "--data-dir", str(data_dir), "pump-1/overheat", "--by", "x"], capsys)
    assert code == 2
    assert out == ""


@pytest.mark.parametrize(
    ("alert", "message"),
    [
        ("pump-1/overheet", r"unknown alert 'pump-1/overheet'.*did you mean 'pump-1/overheat'"),
        ("pump-1", r"unknown alert 'pump-1'.*'pump-1/dry'"),
        ("pump-1/dry", r"'pump-1/dry' is not firing: it resolved at 2026-01-02T00:00:05\.000000000Z"),
        ("pump-2/overheat", r"already acknowledged by 'ana' at 2026-01-02T00:00:20\.000000000Z"),
    ],
)
def test_ack_refusals(data_dir: Path, capsys: pytest.CaptureFixture[str], alert: str, message: str) -> None:
    before = alerts_store(data_dir).query("alerts").height
    with pytest.raises(ConfigError, match=message):
        acknowledge(data_dir, alert, "eve")
    code, _, err = cli(["alerts", "ack", "--data-dir", str(data_dir), alert, "--by", "eve"], capsys)
    assert code == 2
    assert err.startswith("dte-stream: error: ")
    assert alerts_store(data_dir).query("alerts").height == before
    assert not (data_dir / ACKS_FILE).exists()


def test_ack_firing_takes_every_unacknowledged_firing_alert(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(["alerts", "ack", "--data-dir", str(data_dir), "--firing", "--by", "ana"], capsys)
    assert (code, err) == (0, "")
    # pump-1/overheat and pump-3/overheat (its new episode); pump-2's is taken, pump-1/dry resolved
    acked = sorted(line.split()[1] for line in out.splitlines())
    assert acked == ["pump-1/overheat", "pump-3/overheat"]
    table = alert_table(data_dir, "firing")
    assert set(table["acked_by"].to_list()) == {"ana"}  # pump-2's stays ana's, the others are now hers
    code, out, err = cli(["alerts", "ack", "--data-dir", str(data_dir), "--firing", "--by", "ana"], capsys)
    assert (code, out) == (0, "")
    assert "nothing to acknowledge" in err


def test_ack_firing_of_one_twin(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["alerts", "ack", "--data-dir", str(data_dir), "--firing", "--twin", "pump-3", "--by", "bo"]
    code, out, _ = cli(argv, capsys)
    assert code == 0
    assert [line.split()[1] for line in out.splitlines()] == ["pump-3/overheat"]
    assert alert_table(data_dir, "firing", twin_id="pump-1")["acked_by"].to_list() == [None]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "name one alert id, or --firing"),
        (["pump-1/overheat", "--firing"], "name one alert id, or --firing"),
        (["pump-1/overheat", "--twin", "pump-1"], "--twin goes with --firing"),
    ],
)
def test_ack_needs_an_id_or_firing(
    data_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = cli(["alerts", "ack", "--data-dir", str(data_dir), *argv], capsys)
    assert (code, out) == (2, "")
    assert message in err


def test_ack_twice_refuses_the_second(data_dir: Path) -> None:
    acknowledge(data_dir, "pump-3/overheat", "ana", now_ns=T0 + 40 * S)
    with pytest.raises(ConfigError, match=r"already acknowledged by 'ana' at 2026-01-02T00:00:40"):
        acknowledge(data_dir, "pump-3/overheat", "bob")
    assert len(read_acks(data_dir, 0)[0]) == 1


def test_concurrent_acks_of_one_alert_record_exactly_one(data_dir: Path) -> None:
    def attempt(name: str) -> str:
        try:
            return acknowledge(data_dir, "pump-1/overheat", name).acked_by or ""
        except ConfigError:
            return ""

    with ThreadPoolExecutor(max_workers=6) as pool:
        winners = [w for w in pool.map(attempt, [f"op{i}" for i in range(6)]) if w]
    assert len(winners) == 1
    assert [a["by"] for a in read_acks(data_dir, 0)[0]] == winners
    assert alert_table(data_dir, twin_id="pump-1").row(0, named=True)["acked_by"] == winners[0]


def test_ack_in_empty_or_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no alerts recorded"):
        acknowledge(tmp_path, "p/r", "ana")
    with pytest.raises(StoreError, match="no data directory"):
        acknowledge(tmp_path / "missing", "p/r", "ana")


@pytest.mark.parametrize(
    "by",
    [
        "",
        "   ",
        "a" * 129,
        "ana\nFAKE LOG LINE",
        "\x1b[31mred",
        "tab\there",
        "rtl\u202eoverride",
        "zero\u200bwidth",
        "nul\x00",
        "line\u2028sep",
        "\ud800",
    ],
)
def test_hostile_by_values_are_refused(data_dir: Path, by: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="acknowledger name"):
        acknowledge(data_dir, "pump-1/overheat", by)
    assert not (data_dir / ACKS_FILE).exists()
    if "\x00" not in by and "\ud800" not in by:  # argv cannot carry these
        code, _, err = cli(
            ["alerts", "ack", "--data-dir", str(data_dir), "pump-1/overheat", "--by", by], capsys
        )
        assert code == 2
        assert "acknowledger name" in err


@pytest.mark.parametrize("by", ["ana", "a" * 128, "Zoë Ünal", "ops team (night)", "名前", 'quote"and\\slash'])
def test_reasonable_by_values_are_accepted(data_dir: Path, by: str) -> None:
    assert acknowledge(data_dir, "pump-1/overheat", by).acked_by == by
    assert read_acks(data_dir, 0)[0][0]["by"] == by
    assert alert_table(data_dir, twin_id="pump-1").row(0, named=True)["acked_by"] == by


@pytest.mark.parametrize("alert", ["", "p/\n", "x" * 513, "p/\x1b"])
def test_invalid_alert_ids_are_refused(data_dir: Path, alert: str) -> None:
    with pytest.raises(ConfigError, match="invalid alert id"):
        acknowledge(data_dir, alert, "ana")


@given(st.text(max_size=140))
def test_check_ack_by_accepts_only_printable_bounded_names(by: str) -> None:
    ok = bool(by.strip()) and len(by) <= 128 and by.isprintable()
    try:
        assert check_ack_by(by) == by
        assert ok
    except ConfigError:
        assert not ok


# ------------------------------------------------------------------------------- read_acks


def line(alert: str, by: str, t: int) -> bytes:
    return orjson.dumps({"alert_id": alert, "by": by, "time_ns": t}) + b"\n"


def test_read_acks_offsets_and_partial_lines(tmp_path: Path) -> None:
    assert read_acks(tmp_path, 0) == ([], 0)  # no file yet
    assert read_acks(tmp_path, 17) == ([], 17)
    path = tmp_path / ACKS_FILE
    first = line("p/r", "ana", 1)
    second = line("q/r", "bob", 2)
    path.write_bytes(first + second[:10])  # the second is being written
    acks, offset = read_acks(tmp_path, 0)
    assert acks == [{"alert_id": "p/r", "by": "ana", "time_ns": 1}]
    assert offset == len(first)
    assert read_acks(tmp_path, offset) == ([], offset)
    with path.open("ab") as f:
        f.write(second[10:])
    acks, offset = read_acks(tmp_path, offset)
    assert acks == [{"alert_id": "q/r", "by": "bob", "time_ns": 2}]
    assert offset == len(first + second)
    assert read_acks(tmp_path, offset) == ([], offset)
    # a file replaced by a shorter one is read from its start
    path.write_bytes(second)
    assert read_acks(tmp_path, offset) == ([{"alert_id": "q/r", "by": "bob", "time_ns": 2}], len(second))
    with pytest.raises(ConfigError, match="offset"):
        read_acks(tmp_path, -1)


def test_read_acks_skips_malformed_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = line("p/r", "ana", 1)
    bad = [
        b"not json\n",
        b"[1, 2]\n",
        b'{"alert_id": "p/r", "by": "ana"}\n',
        b'{"alert_id": "p/r", "by": "ana", "time_ns": "1"}\n',
        b'{"alert_id": "p/r", "by": "ana", "time_ns": true}\n',
        line("p/r", "evil\nname", 1),
        line("p/r", "", 1),
        b'{"alert_id": 5, "by": "ana", "time_ns": 1}\n',
        b"\xff\xfe\n",
        b"\n",
    ]
    data = good + b"".join(bad) + good
    (tmp_path / ACKS_FILE).write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="dte_stream.alerts.acks"):
        acks, offset = read_acks(tmp_path, 0)
    assert acks == [{"alert_id": "p/r", "by": "ana", "time_ns": 1}] * 2
    assert offset == len(data)
    assert "skipped 9 malformed line(s)" in caplog.text


def test_acks_of_cli_reach_read_acks_in_order(data_dir: Path) -> None:
    acknowledge(data_dir, "pump-1/overheat", "ana", now_ns=T0 + 100 * S)
    acks, offset = read_acks(data_dir, 0)
    acknowledge(data_dir, "pump-3/overheat", "bob", now_ns=T0 + 101 * S)
    more, end = read_acks(data_dir, offset)
    assert [a["alert_id"] for a in acks + more] == ["pump-1/overheat", "pump-3/overheat"]
    assert end == os.path.getsize(data_dir / ACKS_FILE)
