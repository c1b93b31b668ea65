"""Alert chaos: an alert receiver is down while alerts fire; the daemon goes on, counts the
failures, and delivers every alert event once the receiver is back.

The same QoS 1 readings (mqtt_chaos.readings: level shifts on every 97th twin, noise that
crosses the value threshold now and then) run through `dte-stream run` (real Mosquitto and
InfluxDB) with two threshold rules, a local store (the alert log) and one notifier. Run A
delivers to a webhook receiver (a local HTTP server) that listens throughout; its events are
what every other run must deliver. Run B is down from the start until every reading is stored,
then comes back, with each receiver:

* webhook: nothing listens on its port (connection refused), then the receiver starts there;
  it must get exactly A's events (every field that does not name a wall-clock time), each once;
* Alertmanager (the real one, a private instance of the project's service script): stopped,
  then started again with the same command, port and data; Alertmanager's own counters
  (``alertmanager_alerts_received_total``) must show each of A's firing and resolved events
  once, and its v2 API must list as active exactly the alerts still firing at A's end, with
  A's labels and annotations.

In both, the daemon must run throughout, count the failed attempts and drop nothing; the run's
alert log (the local store's ``alerts`` table, read raw) must hold each of A's events once;
points and twin state must equal A's (a notifier that is down never changes what the dataflow
stores). ``DTE_CHAOS_LONG=1`` keeps the receiver down 120 s longer.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mqtt_chaos
import orjson
import pytest
from test_alert_integrations import Receiver, receiver

from dte_stream.alerts.log import ALERTS_TABLE
from dte_stream.alerts.store import alerts_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LONG = os.environ.get("DTE_CHAOS_LONG", "").strip().lower() not in ("", "0", "false", "no")
TWINS, STEPS = 120, 30
DOWN = 120.0 if LONG else 0.0  # the receiver stays down at least this long (s) after the last reading
#: Fields of an alert event that do not depend on when the run happened.
STABLE = (
    "alert_id",
    "state",
    "rule",
    "twin_id",
    "twin_type",
    "severity",
    "channel",
    "message",
    "value",
    "sequence",
)
Event = tuple[Any, ...]  # the STABLE fields of one event
RETRIES = {"backoff": 0.2, "max_backoff": 1.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _alerting(notifier: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """The chaos spec with two threshold rules, ``notifier``, and a local store for the alert log."""

    def tweak(spec: dict[str, Any]) -> None:
        twin_type = dict(spec["twin_types"][0])
        twin_type["alerts"] = {
            "rules": [
                {"kind": "threshold", "name": "shifted", "channels": ["temperature"], "signal": "estimate"}
                | {"above": 27.0, "clear": 25.0, "severity": "critical"},
                {"kind": "threshold", "name": "hot_reading", "channels": ["temperature"], "signal": "value"}
                | {"above": 21.6, "clear": 20.5},
            ]
        }
        spec["twin_types"] = [twin_type]
        spec["notifiers"] = [notifier]
        run_dir = Path(spec["dead_letters"]["path"]).parent
        spec["sinks"].append({"kind": "local_store", "data_dir": str(run_dir / "data")})

    return tweak


def _webhook(url: str) -> dict[str, Any]:
    return {"kind": "webhook", "name": "ops", "url": url, "retries": RETRIES}


def _events(server: Receiver) -> list[Event]:
    bodies = [orjson.loads(b) for b in server.accepted()]
    return sorted(tuple(body.get(f) for f in STABLE) for body in bodies)


def _alert_log(run: mqtt_chaos.Run) -> list[Event]:
    """Every row of the run's alert log, as written (repeats kept)."""
    frame = alerts_store(run.dir / "data").query(ALERTS_TABLE)
    return sorted(tuple(row[f] for f in STABLE) for row in frame.iter_rows(named=True))


def _metric(url: str, name: str, labels: str = "") -> float:
    """The sum of the samples of ``name`` at ``url``/metrics whose labels contain ``labels``."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples = re.findall(rf"^{name}(?:{{([^}}]*)}})? (\S+)$", text, re.M)
    return sum(float(value) for found, value in samples if labels in found)


@pytest.fixture(scope="module")
def messages() -> list[tuple[str, bytes]]:
    return list(mqtt_chaos.readings(TWINS, STEPS))


@pytest.fixture(scope="module")
def uninterrupted(
    mosquitto: Any, influxdb: Any, messages: list[tuple[str, bytes]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[mqtt_chaos.Run, list[Event]]:
    """Run A, the receiver listening throughout: the run and the events it delivered."""
    workdir = tmp_path_factory.mktemp("alerts-a")
    with receiver() as server:
        a = mqtt_chaos.drain(
            mosquitto, influxdb.url, workdir, "a", messages, tweak=_alerting(_webhook(server.url))
        )
    expected = _events(server)
    assert a.processed == [len(messages)]
    assert len(expected) >= 10, expected
    assert {"firing", "resolved"} <= {e[1] for e in expected}, expected[:5]
    assert _alert_log(a) == expected
    return a, expected


def _receiver_down(
    mosquitto: Any,
    influxdb: Any,
    tmp_path: Path,
    messages: list[tuple[str, bytes]],
    notifier: dict[str, Any],
    *,
    back: Callable[[], None],
    delivered: Callable[[], bool],
) -> mqtt_chaos.Run:
    """Run B: the receiver is down (already) until every reading is stored, then ``back()``
    brings it back and the run waits until ``delivered()``. Checks the daemon's counts."""
    total = len(messages)
    metrics = f"http://127.0.0.1:{_free_port()}"

    def down_then_back(daemon: mqtt_chaos.Daemon, run: mqtt_chaos.Run, count: Any) -> mqtt_chaos.Daemon:
        mqtt_chaos.wait(daemon, lambda: count() >= total, 180, f"{total} points in InfluxDB")
        mqtt_chaos.wait(
            daemon,
            lambda: _metric(metrics, "dte_notifier_failed_attempts_total") >= 3,
            60,
            "failed attempts of the notifier",
        )
        failed = _metric(metrics, "dte_notifier_failed_attempts_total")
        sent = _metric(metrics, "dte_notifier_sent_total")
        run.events.append(f"{failed:.0f} failed attempts, {sent:.0f} sent while the receiver was down")
        time.sleep(DOWN)
        daemon.check_alive()
        back()
        mqtt_chaos.wait(daemon, delivered, 120, "every alert event")
        run.events.append(f"{_metric(metrics, 'dte_notifier_dropped_total'):.0f} dropped")
        return daemon

    b = mqtt_chaos.drain(
        mosquitto,
        influxdb.url,
        tmp_path,
        "b",
        messages,
        chaos=down_then_back,
        chaos_at_start=True,
        tweak=_alerting(notifier),
        daemon_args=("--http", metrics.removeprefix("http://")),
    )
    assert "0 sent" in b.events[0], b.events
    assert "0 dropped" in b.events[1], b.events
    log = (b.dir / "daemon.log").read_text()
    assert "Traceback" not in log
    assert "panicked" not in log
    return b


def _assert_same_as(a: mqtt_chaos.Run, expected: list[Event], b: mqtt_chaos.Run, influx_url: str) -> None:
    """B's alert log holds each of A's events once; B's points and twin state equal A's."""
    assert _alert_log(b) == expected
    cmp = mqtt_chaos.compare(influx_url, a, b)
    assert cmp.equal, "\n".join(cmp.examples)


def test_webhook_down_while_alerts_fire_gets_every_event_when_it_returns(
    mosquitto: Any,
    influxdb: Any,
    messages: list[tuple[str, bytes]],
    uninterrupted: tuple[mqtt_chaos.Run, list[Event]],
    tmp_path: Path,
) -> None:
    a, expected = uninterrupted
    port = _free_port()
    servers: list[Receiver] = []
    with contextlib.ExitStack() as stack:
        b = _receiver_down(
            mosquitto,
            influxdb,
            tmp_path,
            messages,
            _webhook(f"http://127.0.0.1:{port}/hook?token=abc"),
            back=lambda: servers.append(stack.enter_context(receiver(port))),
            delivered=lambda: len(servers[0].accepted()) >= len(expected),
        )
        got = _events(servers[0])
    print(f"webhook chaos: {'; '.join(b.events)}; {len(got)} events delivered, {len(expected)} in run A")
    assert got == expected  # every event once: none lost, none twice
    _assert_same_as(a, expected, b, influxdb.url)


@pytest.fixture
def private_alertmanager(devservices_api: Any, tmp_path: Path) -> Iterator[Any]:
    """An Alertmanager of this test alone: it is stopped and started again."""
    with mqtt_chaos.private_service(devservices_api, "alertmanager", tmp_path / "alertmanager") as svc:
        yield svc


def _active_alerts(url: str) -> list[dict[str, Any]]:
    """What Alertmanager's v2 API lists: the alerts active now (resolved ones are not listed)."""
    query = urllib.parse.urlencode({"active": "true", "silenced": "true", "inhibited": "true"})
    with urllib.request.urlopen(f"{url}/api/v2/alerts?{query}", timeout=10) as response:
        data: list[dict[str, Any]] = json.loads(response.read())
    return data


def _still_firing(expected: list[Event]) -> set[tuple[str, str, str, str | None, str | None]]:
    """(alert id, rule, twin, message, value) of the alerts whose last event in A is a firing."""
    index = {f: i for i, f in enumerate(STABLE)}
    last: dict[str, Event] = {}
    for event in sorted(expected, key=lambda e: (e[index["alert_id"]], e[index["sequence"]])):
        last[event[index["alert_id"]]] = event
    return {
        (
            e[index["alert_id"]],
            e[index["rule"]],
            e[index["twin_id"]],
            e[index["message"]],
            None if e[index["value"]] is None else repr(e[index["value"]]),
        )
        for e in last.values()
        if e[index["state"]] == "firing"
    }


def test_alertmanager_down_while_alerts_fire_gets_every_alert_when_it_returns(
    mosquitto: Any,
    influxdb: Any,
    private_alertmanager: Any,
    devservices_api: Any,
    messages: list[tuple[str, bytes]],
    uninterrupted: tuple[mqtt_chaos.Run, list[Event]],
    tmp_path: Path,
) -> None:
    a, expected = uninterrupted
    am = private_alertmanager
    firing = sum(1 for e in expected if e[1] == "firing")
    resolved = sum(1 for e in expected if e[1] == "resolved")
    assert firing + resolved == len(expected)

    def received(status: str) -> float:
        return _metric(am.url, "alertmanager_alerts_received_total", f'status="{status}"')

    devservices_api.stop(am)
    notifier = {
        "kind": "alertmanager",
        "name": "am",
        "url": am.url,
        "retries": RETRIES,
        "resend_interval": 3600,  # no resend of firing alerts during the test: every POST is an event
        "firing_ttl": 7200,
    }
    b = _receiver_down(
        mosquitto,
        influxdb,
        tmp_path,
        messages,
        notifier,
        back=lambda: devservices_api.restart(am),
        delivered=lambda: received("firing") + received("resolved") >= len(expected),
    )
    time.sleep(1.0)  # a repeat, if any, would arrive now
    counts = (received("firing"), received("resolved"), _metric(am.url, "alertmanager_alerts_invalid_total"))
    active = _active_alerts(am.url)
    got = {
        (
            alert["annotations"].get("alert_id"),
            alert["labels"].get("alertname"),
            alert["labels"].get("twin_id"),
            alert["annotations"].get("message"),
            alert["annotations"].get("value"),
        )
        for alert in active
    }
    print(
        f"Alertmanager chaos: {'; '.join(b.events)}; Alertmanager received {counts[0]:.0f} firing and "
        f"{counts[1]:.0f} resolved ({firing} and {resolved} in run A), {counts[2]:.0f} invalid; "
        f"{len(active)} active"
    )
    assert counts == (firing, resolved, 0)  # every event once: none lost, none twice
    assert len(active) == len(got)
    assert got == _still_firing(expected)
    assert all(alert["status"]["state"] == "active" for alert in active)
    _assert_same_as(a, expected, b, influxdb.url)
