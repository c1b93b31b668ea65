"""The twin state view: records from a real twin bank and alert engine, the SQLite file, pacing,
and the writer process that builds and writes the records away from the dataflow."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dte_stream.alerts.rules import AlertEngine
from dte_stream.errors import StoreError
from dte_stream.readings import ReadingBatch
from dte_stream.spec.twins import TwinTypeSpec
from dte_stream.twins.bank import BankUpdate, TwinBank
from dte_stream.twins.routing import TypedBatch
from dte_stream.view import AlertQuery, TwinQuery, TwinView, ViewCollector, ViewPublisher
from dte_stream.view.process import ViewProcess
from dte_stream.view.records import build_records, gather, record_chunks

S = 10**9

ROOM = TwinTypeSpec.model_validate(
    {
        "name": "room",
        "channels": {"temp": {"unit": "degC"}, "heater": {}, "humidity": {"unit": "%"}},
        "models": [
            {
                "name": "air",
                "preset": {"model": "thermal", "tau": 600, "noise": 0.001, "measurement_noise": 0.04},
                "observes": ["temp"],
                "controls": ["heater"],
            }
        ],
        "alerts": {"rules": [{"kind": "threshold", "name": "hot", "channels": ["temp"], "above": 30}]},
    }
)


def feed(bank: TwinBank, engine: AlertEngine, rows: list[tuple[str, str, int, float]]) -> BankUpdate:
    ids, chans, times, values = zip(*rows, strict=True)
    rb = ReadingBatch.from_columns(list(ids), list(chans), list(times), list(values))
    index = np.array([bank.channels.index(c) for c in chans])
    update = bank.update(TypedBatch("room", rb, index), now_ns=max(times))
    events = engine.update(update.estimates, max(times))
    return BankUpdate(update.estimates, update.rejected, events)


def test_records_carry_state_estimates_and_alerts(tmp_path: Path) -> None:
    bank = TwinBank(ROOM)
    engine = AlertEngine("room", ROOM.channel_names(), ROOM.alerts)
    collector = ViewCollector()
    collector.note(
        feed(
            bank,
            engine,
            [
                ("r1", "heater", 0, 25.0),
                ("r1", "temp", S, 20.0),
                ("r2", "temp", S, 35.0),
                ("r2", "humidity", 2 * S, 40.0),
            ],
        )
    )
    records, alerts = collector.records(bank, engine, labels={"site": "north"})
    by_id = {r["twin_id"]: r for r in records}
    assert sorted(by_id) == ["r1", "r2"]
    r1 = by_id["r1"]
    (air,) = [m for m in r1["models"] if m["group"] == "air"]
    assert air["channels"] == ["temp"]
    assert air["controls"] == ["heater"]
    assert air["u"] == [25.0]
    assert air["time_ns"] == S
    assert r1["channels"]["temp"]["estimate"] == pytest.approx(air["mean"][0])
    assert r1["channels"]["temp"]["std"] == pytest.approx(np.sqrt(air["cov"][0][0]))
    assert r1["channels"]["temp"]["value"] == 20.0
    assert r1["channels"]["temp"]["unit"] == "degC"
    assert r1["alert_state"] == "ok"
    assert r1["labels"] == {"site": "north"}
    r2 = by_id["r2"]
    assert r2["alert_state"] == "firing"
    assert [a["rule"] for a in r2["alerts"]] == ["hot"]
    assert {m["group"] for m in r2["models"]} == {"air", "random_walk"}
    assert [a["alert_id"] for a in alerts] == ["r2/hot"]
    # nothing changed since: nothing to publish
    assert not collector
    assert collector.records(bank, engine) == ([], [])


def test_view_file_lists_filters_and_reports_changes(tmp_path: Path) -> None:
    bank = TwinBank(ROOM)
    engine = AlertEngine("room", ROOM.channel_names(), ROOM.alerts)
    view = TwinView.open(tmp_path)
    publisher = ViewPublisher(view, min_interval_s=10.0)
    rows = [(f"r{i}", "temp", S, 20.0 + i * 5) for i in range(4)]  # r3 is at 35: hot
    publisher.note(feed(bank, engine, rows))
    assert publisher.publish(bank, engine, now_ns=5 * S)
    seq = view.seq()
    page = view.list_twins(TwinQuery(limit=2))
    assert page.total == 4
    assert [t["twin_id"] for t in page.twins] == ["r0", "r1"]
    assert view.list_twins(TwinQuery(alert_state="firing")).twins[0]["twin_id"] == "r3"
    assert view.list_twins(TwinQuery(search="r2")).total == 1
    assert view.list_twins(TwinQuery(twin_type="pump")).total == 0
    assert view.list_twins(TwinQuery(seen_within_s=1, now_ns=2 * S)).total == 4
    assert view.list_twins(TwinQuery(silent_for_s=1, now_ns=3 * S)).total == 4
    assert view.list_alerts(AlertQuery(state="firing"))[0]["alert_id"] == "r3/hot"
    # paced: a second batch within the interval waits, unless forced (end of an epoch)
    publisher.note(feed(bank, engine, [("r1", "temp", 2 * S, 21.0)]))
    assert not publisher.publish(bank, engine, now_ns=6 * S)
    assert publisher.due_ns() is not None
    assert publisher.publish(bank, engine, now_ns=6 * S, force=True)
    changed = view.changed_twins(seq)
    assert [r["twin_id"] for r in changed] == ["r1"]
    assert changed[0]["channels"]["temp"]["value"] == 21.0
    assert view.twin_seq("r1") == view.seq() > seq
    publisher.evicted(["r0"])
    assert view.get_twin("r0") is None
    assert view.counts()["total"] == 3
    view.close()


WRITER = """
import sys
from dte_stream.view.store import TwinView
view = TwinView.open(sys.argv[1])
for i in range(50):
    rec = {"twin_id": f"{sys.argv[2]}{i}", "twin_type": "t", "labels": {}, "last_seen_ns": i,
           "alert_state": "ok"}
    view.put([rec], now_ns=i)
view.close()
"""


def test_two_processes_write_one_view(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), p], stderr=subprocess.PIPE, text=True)
        for p in ("a", "b")
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    view = TwinView.open(tmp_path)
    assert view.list_twins(TwinQuery(limit=1000)).total == 100
    assert view.seq() == 100  # every write got its own change number
    assert (
        sqlite3.connect(tmp_path / "twin_view.sqlite3").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    )
    view.close()


def _start(data_dir: Path, max_share: float = 0.25) -> ViewProcess:
    return ViewProcess.start({"data_dir": str(data_dir), "kafka": None}, max_share)


def test_the_child_writes_the_records_the_dataflow_would_have_built(tmp_path: Path) -> None:
    bank = TwinBank(ROOM)
    engine = AlertEngine("room", ROOM.channel_names(), ROOM.alerts)
    child = _start(tmp_path, max_share=1e-9)
    child.budget.trickle = 0.0  # after its first write the child's allowance stays overdrawn
    publisher = ViewPublisher(child, min_interval_s=0.0)
    update = feed(bank, engine, [("r1", "heater", 0, 25.0), ("r1", "temp", S, 20.0), ("r2", "temp", S, 35.0)])
    publisher.note(update)
    expected = build_records(gather(bank, np.arange(2), engine))
    assert publisher.publish(bank, engine, now_ns=2 * S)
    assert child.busy(id(publisher))  # in flight, then over its allowance: the next waits in the bank
    publisher.note(feed(bank, engine, [("r1", "temp", 2 * S, 21.0)]))
    assert not publisher.publish(bank, engine, now_ns=3 * S)
    assert child.wait_idle(id(publisher), 30)
    publisher.finish(bank, engine, now_ns=4 * S)  # the end of the input: at once, whatever the pace
    child.close()
    view = TwinView.open(tmp_path)
    r2 = view.get_twin("r2")
    assert r2 is not None
    for key in ("channels", "models", "alerts", "alert_state", "last_seen_ns", "anomaly_score"):
        assert r2[key] == expected[1][key], key
    assert r2["updated_ns"] == 2 * S
    r1 = view.get_twin("r1")
    assert r1 is not None
    assert r1["channels"]["temp"]["value"] == 21.0  # the change that waited was written at the end
    assert r1["updated_ns"] == 4 * S
    assert [a["alert_id"] for a in view.list_alerts(AlertQuery())] == ["r2/hot"]
    view.close()


def test_record_chunks_are_the_records_in_twin_id_order() -> None:
    bank = TwinBank(ROOM)
    engine = AlertEngine("room", ROOM.channel_names(), ROOM.alerts)
    feed(bank, engine, [(f"r{i}", "temp", S, 20.0 + 3 * i) for i in range(7)])  # r4 and up are hot
    cols = gather(bank, np.array([5, 0, 6, 2, 1, 4, 3]), engine)
    chunks = list(record_chunks(cols, size=3))
    assert [len(c) for c in chunks] == [3, 3, 1]
    assert [r for chunk in chunks for r in chunk] == build_records(cols)


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("updated_ns", "seq", "written_by")}


def test_many_changed_twins_go_in_bounded_writes_and_the_view_ends_at_the_last_state(
    tmp_path: Path,
) -> None:
    bank = TwinBank(ROOM)
    engine = AlertEngine("room", ROOM.channel_names(), ROOM.alerts)
    child = _start(tmp_path, max_share=1.0)
    sent: list[int] = []
    put_columns = child.put_columns

    def counting(tag: int, columns: list[Any], now_ns: int, alerts: list[dict[str, Any]]) -> None:
        sent.append(sum(len(c) for c in columns))
        put_columns(tag, columns, now_ns, alerts)

    child.put_columns = counting  # type: ignore[method-assign]
    publisher = ViewPublisher(child, min_interval_s=0.0, max_twins=4)
    twins = [f"r{i:02d}" for i in range(11)]
    for step in range(1, 9):  # every twin changes at every step, faster than the writes go
        rows = [(t, "temp", step * S, 20.0 + step + i) for i, t in enumerate(twins)]
        publisher.note(feed(bank, engine, rows))
        publisher.publish(bank, engine, now_ns=step * S)
    publisher.finish(bank, engine, now_ns=10 * S)
    child.close()
    assert sent
    assert max(sent) <= 4
    expected = build_records(gather(bank, np.arange(len(twins)), engine))
    view = TwinView.open(tmp_path)
    got = [view.get_twin(t) for t in twins]
    view.close()
    assert [_comparable(r) for r in got if r is not None] == [_comparable(r) for r in expected]
    assert [r["channels"]["temp"]["value"] for r in expected] == [28.0 + i for i in range(11)]


def test_the_child_waits_for_its_cpu_allowance(tmp_path: Path) -> None:
    child = _start(tmp_path, max_share=1e-9)
    child.budget.trickle = 0.0  # any write overdraws the allowance
    bank = TwinBank(ROOM)
    engine = AlertEngine("room", ROOM.channel_names(), ROOM.alerts)
    feed(bank, engine, [("r1", "temp", S, 20.0)])
    child.put_columns(1, [gather(bank, np.arange(1), engine)], 2 * S, [])
    assert child.wait_idle(1, 30)
    assert child.busy(1)  # written, but resting
    assert child.busy(2)  # the rest is the child's: every publisher waits
    child.close()


def test_a_view_that_cannot_be_opened_fails_at_start_with_the_reason(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create the data directory"):
        _start(blocker / "view")


def test_a_child_that_dies_is_logged_once_and_the_dataflow_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bank = TwinBank(ROOM)
    engine = AlertEngine("room", ROOM.channel_names(), ROOM.alerts)
    feed(bank, engine, [("r1", "temp", S, 20.0)])
    child = _start(tmp_path)
    with caplog.at_level(logging.ERROR):
        child._proc.kill()  # what an OOM kill would do
        child._proc.wait()
        for _ in range(3):
            child.put_columns(1, [gather(bank, np.arange(1), engine)], 2 * S, [])
        assert not child.wait_idle(1, 30)
        child._reader.join(30)  # it noticed the end (and logged it) before it ended itself
    assert child.busy(1)
    assert sum("writer process ended" in r.getMessage() for r in caplog.records) == 1
    child.close()


def test_a_failed_write_leaves_the_view_as_it_was_and_names_the_file(tmp_path: Path) -> None:
    view = TwinView.open(tmp_path)
    good = {"twin_id": "p1", "twin_type": "pump", "labels": {}, "last_seen_ns": 1, "alert_state": "ok"}
    seq = view.put([dict(good)], now_ns=10)
    # a record without its twin id fails half-way: the twin written before it is rolled back too
    with pytest.raises(KeyError, match="twin_id"):
        view.put([{**good, "twin_id": "p2"}, {"twin_type": "pump"}], now_ns=20)
    assert view.seq() == seq
    assert view.get_twin("p2") is None
    assert view.get_twin("p1")["updated_ns"] == 10  # type: ignore[index]
    # an SQLite error in any write becomes a StoreError that names the view's file
    other = sqlite3.connect(tmp_path / "twin_view.sqlite3")
    other.execute("DROP TABLE alerts")  # what a damaged or foreign file could do
    other.execute("DROP TABLE twin_types")
    other.close()
    writes = (
        lambda: view.remove(["p1"]),
        lambda: view.remove_alerts(["a"]),
        lambda: view.put_types([{"name": "x"}]),
    )
    for write in writes:
        with pytest.raises(StoreError, match=r"cannot write the twin view .*twin_view.*no such table"):
            write()
    assert view.seq() == seq  # each of them rolled back
    assert view.get_twin("p1") is not None
    view.close()
