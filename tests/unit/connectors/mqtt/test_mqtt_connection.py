"""The connection's outage bookkeeping, driven through paho's callbacks without a broker: one
warning per outage however many reconnect attempts, a tug of war over one client id reported
once, a broker's "session taken over" fatal, and reason codes translated for people."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from paho.mqtt.client import ConnectFlags, DisconnectFlags
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from dte_stream.connectors.mqtt._client import MqttConnection, reason_text
from dte_stream.errors import ConnectorError
from dte_stream.metrics import METRICS
from dte_stream.spec.mqtt import MqttSourceSpec

SPEC = MqttSourceSpec(
    kind="mqtt",
    url="mqtt://127.0.0.1:1883",
    username="dte",
    password="hunter2-secret",
    subscriptions=[{"topic": "a/#"}],
)
LOST = ReasonCode(PacketTypes.DISCONNECT, identifier=0x80)  # what paho reports for a dropped socket
SUCCESS = ReasonCode(PacketTypes.CONNACK, identifier=0)


@pytest.fixture
def conn() -> Iterator[MqttConnection]:
    connection = MqttConnection(SPEC, client_id="unit-0", who="source unit", clean_start=False)
    connection._started = True  # as after a successful start()
    connection._stable_after = 0.0
    yield connection
    connection.close()


def _connect(conn: MqttConnection, session_present: bool = True) -> None:
    conn._on_connect(conn.client, None, ConnectFlags(session_present), SUCCESS, None)


def _lose(conn: MqttConnection, reason: ReasonCode = LOST) -> None:
    conn._on_disconnect(conn.client, None, DisconnectFlags(False), reason, None)


def _messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_an_outage_is_logged_once_and_its_end_once(
    conn: MqttConnection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "dte_stream.connectors.mqtt")
    disconnects, reconnects = METRICS.get("mqtt_disconnects"), METRICS.get("mqtt_reconnects")
    _connect(conn)
    _lose(conn)
    for _ in range(10):  # failed attempts: paho reports them through on_connect_fail, no callback here
        conn.check()
    _connect(conn)
    conn.check()
    assert len(_messages(caplog, "lost the connection to mqtt://127.0.0.1:1883")) == 1
    assert len(_messages(caplog, "reconnected to mqtt://127.0.0.1:1883")) == 1
    assert "session resumed" in _messages(caplog, "reconnected")[0]
    assert METRICS.get("mqtt_disconnects") == disconnects + 1
    assert METRICS.get("mqtt_reconnects") == reconnects + 1
    # a second outage is logged again
    _lose(conn)
    assert len(_messages(caplog, "lost the connection")) == 2
    assert "hunter2-secret" not in caplog.text


def test_refusals_during_an_outage_are_logged_once_per_reason(
    conn: MqttConnection, caplog: pytest.LogCaptureFixture
) -> None:
    _connect(conn)
    _lose(conn)
    refused = ReasonCode(PacketTypes.CONNACK, identifier=0x87)
    for _ in range(5):
        conn._on_connect(conn.client, None, ConnectFlags(False), refused, None)
    assert len(_messages(caplog, "refuses to reconnect: Not authorized (0x87)")) == 1


def test_a_connection_that_breaks_after_every_reconnect_is_one_outage(
    conn: MqttConnection, caplog: pytest.LogCaptureFixture
) -> None:
    conn._stable_after = 60.0  # no reconnection holds long enough to end the outage
    _connect(conn)
    for _ in range(8):
        _lose(conn)
        _connect(conn)
        conn.check()
    assert len(_messages(caplog, "lost the connection")) == 1
    assert _messages(caplog, "reconnected") == []
    [error] = _messages(caplog, "breaks right after every reconnect")
    assert "same client id 'unit-0'" in error


def test_session_taken_over_stops_the_connection(conn: MqttConnection) -> None:
    _connect(conn)
    _lose(conn, ReasonCode(PacketTypes.DISCONNECT, identifier=0x8E))
    with pytest.raises(ConnectorError, match=r"Session taken over \(0x8E\).*'unit-0'"):
        conn.check()


def test_a_fresh_session_on_reconnect_is_reported(
    conn: MqttConnection, caplog: pytest.LogCaptureFixture
) -> None:
    fresh: list[int] = []
    conn._on_new_session = lambda: fresh.append(conn.session)
    _connect(conn, session_present=True)
    _lose(conn)
    _connect(conn, session_present=False)
    assert fresh == [1]
    assert _messages(caplog, "messages queued for it while it was away are lost")


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (0x86, "Bad user name or password (0x86): check username and password"),
        (0x87, "Not authorized (0x87)"),
        (0x84, 'try protocol: "3.1.1"'),
        (0x9E, "shared subscriptions"),
        (0x00, "Success (0x00)"),
    ],
)
def test_reason_codes_read_well(code: int, words: str) -> None:
    packet = PacketTypes.SUBACK if code == 0x9E else PacketTypes.CONNACK
    assert words in reason_text(ReasonCode(packet, identifier=code))


def test_subscription_refusals_at_start_are_collected(conn: MqttConnection) -> None:
    conn._subscriptions = [("a/#", 1), ("$share/g/b", 1)]
    conn._sub_mid = 5
    conn._started = False
    granted = ReasonCode(PacketTypes.SUBACK, identifier=1)
    refused = ReasonCode(PacketTypes.SUBACK, identifier=0x9E)
    conn._on_subscribe(conn.client, None, 5, [granted, refused], None)
    assert conn._sub_failures == [
        "subscription '$share/g/b': Shared subscription not supported (0x9E): the broker does not "
        "support shared subscriptions ($share/...)"
    ]
