"""Alert chaos: the webhook receiver is down while alerts fire; the daemon goes on, counts the
failures, and delivers every alert event once the receiver is back.

The same QoS 1 readings (mqtt_chaos.readings: level shifts on every 97th twin, noise that
crosses the value threshold now and then) run through `dte-stream run` (real Mosquitto and
InfluxDB) with a webhook notifier and two threshold rules: run A with the receiver (a local
HTTP server) listening, run B with nothing listening on its port (connection refused) until
every reading is stored, then the receiver starts on that port. B's receiver must get exactly
A's alert events (every field that does not name a wall-clock time), each once; the daemon
must run throughout, and its metrics must count the failed attempts. Points and twin state
are compared too: a notifier that is down never changes what the dataflow stores.
``DTE_CHAOS_LONG=1`` keeps the receiver down 120 s longer.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import mqtt_chaos
import orjson
import pytest
from test_alert_integrations import Receiver, receiver

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LONG = os.environ.get("DTE_CHAOS_LONG", "").strip().lower() not in ("", "0", "false", "no")
TWINS, STEPS = 120, 30
DOWN = 120.0 if LONG else 0.0  # the receiver stays down at least this long (s) after the last reading
#: Fields of a webhook body that do not depend on when the run happened.
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _alerting(url: str) -> Any:
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
        spec["notifiers"] = [
            {"kind": "webhook", "name": "ops", "url": url, "retries": {"backoff": 0.2, "max_backoff": 1.0}}
        ]

    return tweak


def _events(server: Receiver) -> list[tuple[Any, ...]]:
    bodies = [orjson.loads(b) for b in server.accepted()]
    return sorted(tuple(body.get(f) for f in STABLE) for body in bodies)


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_alert_receiver_down_while_alerts_fire_gets_every_event_when_it_returns(
    mosquitto: Any, influxdb: Any, devservices_api: Any, tmp_path: Path
) -> None:
    messages = list(mqtt_chaos.readings(TWINS, STEPS))
    total = len(messages)
    with receiver() as server_a:
        a = mqtt_chaos.drain(mosquitto, influxdb.url, tmp_path, "a", messages, tweak=_alerting(server_a.url))
    expected = _events(server_a)
    assert a.processed == [total]
    states = {e[1] for e in expected}
    assert len(expected) >= 10, expected
    assert {"firing", "resolved"} <= states, expected[:5]

    port = _free_port()
    http_port = devservices_api.free_ports(1)[0]
    url = f"http://127.0.0.1:{port}/hook?token=abc"
    stack = contextlib.ExitStack()
    servers: list[Receiver] = []

    def receiver_down(daemon: mqtt_chaos.Daemon, run: mqtt_chaos.Run, count: Any) -> mqtt_chaos.Daemon:
        # the daemon of drain() has no --http: replace it by one that has, before it reads anything
        daemon.kill()
        daemon = mqtt_chaos.Daemon(
            run.dir / "flow.yaml",
            run.recovery_dir,
            run.dir / "daemon.log",
            "--http",
            f"127.0.0.1:{http_port}",
        )
        mqtt_chaos.wait(daemon, lambda: count() >= total, 180, f"{total} points in InfluxDB")
        mqtt_chaos.wait(
            daemon,
            lambda: _metric(http_port, "dte_notifier_failed_attempts_total") >= 3,
            60,
            "failed attempts of the notifier",
        )
        failed = _metric(http_port, "dte_notifier_failed_attempts_total")
        sent = _metric(http_port, "dte_notifier_sent_total")
        run.events.append(f"{failed:.0f} failed attempts, {sent:.0f} sent while the receiver was down")
        time.sleep(DOWN)
        daemon.check_alive()
        servers.append(stack.enter_context(receiver(port)))
        mqtt_chaos.wait(daemon, lambda: len(servers[0].accepted()) >= len(expected), 120, "every alert event")
        dropped = _metric(http_port, "dte_notifier_dropped_total")
        run.events.append(f"{dropped:.0f} dropped")
        return daemon

    with stack:
        b = mqtt_chaos.drain(
            mosquitto,
            influxdb.url,
            tmp_path,
            "b",
            messages,
            chaos=receiver_down,
            chaos_at_start=True,
            tweak=_alerting(url),
        )
        got = _events(servers[0])
    print(f"alert chaos: {'; '.join(b.events)}; {len(got)} events delivered, {len(expected)} in run A")
    assert "0 sent" in b.events[0]
    assert "0 dropped" in b.events[1]
    assert got == expected  # every event once: none lost, none twice
    log = (b.dir / "daemon.log").read_text()
    assert "Traceback" not in log
    assert "panicked" not in log
    cmp = mqtt_chaos.compare(influxdb.url, a, b)
    assert cmp.equal, "\n".join(cmp.examples)
