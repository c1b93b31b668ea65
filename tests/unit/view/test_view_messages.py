"""The twin view as Kafka records: encode/decode, hostile records, applying them to a local view,
and republishing twins a Kafka writer could not deliver. No broker: these are the pure parts."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from dte_stream.alerts.rules import AlertEngine
from dte_stream.connectors.kafka.view_reader import ViewApplier
from dte_stream.errors import ConfigError
from dte_stream.metrics import METRICS
from dte_stream.readings import DeadLetter
from dte_stream.spec import parse_spec
from dte_stream.spec.view import KafkaViewSpec, SqliteViewSpec, parse_view_url
from dte_stream.twins.bank import TwinBank
from dte_stream.view import TwinQuery, TwinView, ViewCollector, ViewPublisher
from dte_stream.view.messages import (
    MAX_VALUE_BYTES,
    ViewRecordError,
    alert_tombstone,
    decode,
    encode_alert,
    encode_twin,
    encode_type,
    tombstone,
)
from tests.unit.view.test_twin_view import ROOM, S, feed


def _records() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    bank = TwinBank(ROOM)
    engine = AlertEngine("room", ROOM.channel_names(), ROOM.alerts)
    collector = ViewCollector()
    rows = [("r1", "heater", 0, 25.0), ("r1", "temp", S, 20.0), ("r2", "temp", S, 35.0)]
    collector.note(feed(bank, engine, rows))
    records, alerts = collector.records(bank, engine, labels={"site": "n"})
    for r in records:
        r["updated_ns"] = 7 * S
        r["written_by"] = "host:1"
    return records, alerts


def test_twin_alert_and_type_records_round_trip() -> None:
    records, alerts = _records()
    for record in records:
        record["seq"] = 12  # the writer's own counter: not on the topic
        message = decode(*encode_twin(record))
        assert message.kind == "twin"
        assert message.key == record["twin_id"]
        expected = orjson.loads(orjson.dumps({k: v for k, v in record.items() if k != "seq"}))
        assert message.value == expected
    (alert,) = alerts
    message = decode(*encode_alert(alert))
    assert (message.kind, message.key, message.value) == (
        "alert",
        "r2/hot",
        orjson.loads(orjson.dumps(alert)),
    )
    spec = ROOM.model_dump(mode="json")
    message = decode(*encode_type(spec))
    assert (message.kind, message.key, message.value) == ("type", "room", spec)
    assert decode(*tombstone("r1")).value is None
    gone = decode(*alert_tombstone("r2/hot"))
    assert (gone.kind, gone.key, gone.value) == ("alert", "r2/hot", None)


def _twin(**change: object) -> bytes:
    body: dict[str, object] = {
        "twin_id": "p-1", "twin_type": "pump", "labels": {}, "last_seen_ns": 1, "updated_ns": 2,
        "alert_state": "ok", "anomaly_score": None, "channels": {}, "models": [], "alerts": [],
    }  # fmt: skip
    body.update(change)
    return orjson.dumps(body)


HOSTILE: list[tuple[bytes | None, bytes | None, str]] = [
    (None, _twin(), "without a key"),
    (b"\xff\xfe", _twin(), "not UTF-8"),
    (b"p-1\n", _twin(), "control character"),
    (b"", _twin(), "twin id is empty"),
    (b"p-1", b"{not json", "not JSON"),
    (b"p-1", b"[1, 2]", "not a JSON object"),
    (b"p-1", _twin(twin_id="p-2"), "differs from the key"),
    (b"p-1", _twin(twin_type=7), "twin_type must be a string"),
    (b"p-1", _twin(labels={"a": 1}), "labels must be an object of strings"),
    (b"p-1", _twin(updated_ns="soon"), "updated_ns must be an integer"),
    (b"p-1", _twin(last_seen_ns=1.5), "last_seen_ns must be an integer"),
    (b"p-1", _twin(alert_state="burning"), "alert_state must be one of"),
    (b"p-1", _twin(anomaly_score="high"), "anomaly_score must be a finite number"),
    (b"p-1", _twin(channels=[]), "channels must be a JSON object"),
    (b"p-1", _twin(channels={"t": 3}), "each channel must be a JSON object"),
    (b"p-1", _twin(models=[1]), "models and alerts must hold JSON objects"),
    (b"p-1", b" " * (MAX_VALUE_BYTES + 1), "over"),
    (b"\x00type\x00room", None, "only twins and alerts are removed"),
    (b"\x00alert\x00a/1", orjson.dumps({"alert_id": "a/2", "twin_id": "a", "state": "firing"}), "differs"),
    (b"\x00alert\x00a/1", orjson.dumps({"alert_id": "a/1", "state": "firing"}), "twin_id must be"),
    (b"\x00type\x00room", orjson.dumps({"name": "room", "channels": 5}), "not a twin type spec"),
]


@pytest.mark.parametrize(("key", "value", "reason"), HOSTILE, ids=[h[2] for h in HOSTILE])
def test_hostile_records_are_refused_with_the_reason(
    key: bytes | None, value: bytes | None, reason: str
) -> None:
    with pytest.raises(ViewRecordError, match=reason):
        decode(key, value)


def test_applier_skips_bad_records_counts_logs_once_and_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records, alerts = _records()
    view = TwinView.open(tmp_path)
    letters: list[DeadLetter] = []
    applier = ViewApplier(view, "twin view topic t", letters.extend)
    METRICS.reset()
    r1, r2 = (encode_twin(r) for r in records)
    batch = [
        (0, 0, *r1),
        (0, 1, b"p-1", b"{not json"),
        (0, 2, *encode_type(ROOM.model_dump(mode="json"))),
        (1, 0, b"p-2", b"[1]"),
        (1, 1, b"p-3", b"{also not json"),
        (1, 2, *r2),
        (1, 3, *encode_alert(alerts[0])),
    ]
    with caplog.at_level(logging.WARNING, logger="dte_stream.connectors.kafka"):
        assert applier.apply(batch) == 4
    assert [t["twin_id"] for t in view.list_twins(TwinQuery()).twins] == ["r1", "r2"]
    assert view.get_twin("r1") == orjson.loads(encode_twin(records[0])[1]) | {"seq": view.twin_seq("r1")}
    assert view.get_twin("r2")["updated_ns"] == 7 * S  # type: ignore[index]  # the writer's time, kept
    assert list(view.types()) == ["room"]
    assert [a["alert_id"] for a in view.changed_alerts(0)] == ["r2/hot"]
    # three bad records: counted, each dead-lettered with its place, logged once per kind of fault
    assert applier.rejected == 3
    assert METRICS.get("view_records_rejected") == 3
    assert [d.source for d in letters] == [
        "twin view topic t/0@1",
        "twin view topic t/1@0",
        "twin view topic t/1@1",
    ]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings  # "not JSON" twice is one kind
    assert "partition 0 offset 1" in warnings[0]
    assert "not JSON" in warnings[0]
    # and it goes on: the next records apply; the latest record of a key wins; a tombstone removes
    newer = dict(records[0], alert_state="firing", updated_ns=8 * S)
    assert applier.apply([(0, 3, *encode_twin(newer)), (1, 4, *tombstone("r2")), (1, 5, b"x", b"")]) == 2
    assert view.get_twin("r1")["alert_state"] == "firing"  # type: ignore[index]
    assert view.get_twin("r2") is None
    assert view.counts()["total"] == 1


class _FailingWriter:
    """An asynchronous writer that says every record of ``fail`` was not delivered."""

    def __init__(self, fail: set[str]) -> None:
        self.fail = set(fail)
        self.written: list[list[str]] = []

    def put(
        self, records: Sequence[dict[str, Any]], now_ns: int | None, alerts: Iterable[dict[str, Any]] = ()
    ) -> int:
        self.written.append([r["twin_id"] for r in records])
        return 0

    def remove(self, twin_ids: Sequence[str]) -> None:
        pass

    def put_types(self, specs: Sequence[dict[str, Any]]) -> None:
        pass

    def flush(self, timeout: float) -> int:
        return 0

    def take_undelivered(self, twin_ids: Sequence[str]) -> list[str]:
        mine, self.fail = self.fail & set(twin_ids), self.fail - set(twin_ids)
        return sorted(mine)


def test_publisher_publishes_undelivered_twins_again() -> None:
    bank = TwinBank(ROOM)
    engine = AlertEngine("room", ROOM.channel_names(), ROOM.alerts)
    writer = _FailingWriter(set())
    publisher = ViewPublisher(writer, min_interval_s=0.0)
    publisher.note(feed(bank, engine, [("r1", "temp", S, 20.0), ("r2", "temp", S, 21.0)]))
    assert publisher.publish(bank, engine, now_ns=2 * S, force=True)
    writer.fail = {"r2", "elsewhere"}  # r2's record was lost; "elsewhere" is another shard's twin
    assert publisher.publish(bank, engine, now_ns=3 * S, force=True)
    assert writer.written == [["r1", "r2"], ["r2"]]
    assert writer.fail == {"elsewhere"}


def test_view_spec_and_url() -> None:
    spec = parse_view_url("kafka://127.0.0.1:9092,127.0.0.2:9092/plant.view")
    assert (spec.bootstrap_servers, spec.topic, spec.local) == (
        "127.0.0.1:9092,127.0.0.2:9092",
        "plant.view",
        False,
    )
    assert parse_view_url("kafka://k:9092").topic == "dte.twin_view"
    for bad, reason in (
        ("http://k:9092/t", "expected kafka://"),
        ("kafka:///t", "bootstrap_servers"),
        ("kafka://k:9092/bad topic", "not a Kafka topic name"),
    ):
        with pytest.raises(ConfigError, match=reason):
            parse_view_url(bad)
    text = """
version: 1
name: v
sources: [{kind: simulator, twin_type: room, twins: 2}]
twin_types: [{name: room, channels: {temp: {}}}]
sinks: [{kind: local_store, data_dir: d}]
"""
    assert isinstance(parse_spec(yaml.safe_load(text)).view, SqliteViewSpec)
    view = "view: {kind: kafka, bootstrap_servers: 'k:9092', create_topic: {partitions: 3}}\n"
    kafka = parse_spec(yaml.safe_load(text + view))
    assert isinstance(kafka.view, KafkaViewSpec)
    assert kafka.view.create_topic is not None
    assert kafka.view.create_topic.partitions == 3


def test_which_view_the_api_reads() -> None:
    from dte_stream.api.viewsource import view_of

    base = yaml.safe_load(
        "version: 1\nname: v\nsources: [{kind: simulator, twin_type: room}]\n"
        "twin_types: [{name: room, channels: {temp: {}}}]\nsinks: [{kind: local_store}]\n"
    )
    sqlite = parse_spec(base)
    kafka = parse_spec(base | {"view": {"kind": "kafka", "bootstrap_servers": "k:9092"}})
    both = parse_spec(base | {"view": {"kind": "kafka", "bootstrap_servers": "k:9092", "local": True}})
    url = parse_view_url("kafka://other:9092/t")
    assert view_of(sqlite, None) is None
    assert view_of(kafka, None) == kafka.view  # run --http: its processes write no SQLite view
    assert view_of(both, None) is None  # they write the SQLite view of this host too
    assert view_of(None, url) == url  # serve --view kafka://
    assert view_of(kafka, SqliteViewSpec()) is None  # serve --view sqlite


def test_view_url_takes_the_kafka_security_settings(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    url = (
        f"kafka://k1:9093,k2:9093/plant.view?security.protocol=SASL_SSL&sasl.mechanism=SCRAM-SHA-512"
        f"&sasl.username=api&sasl.password=${{KAFKA_PW}}&ssl.ca.location={ca}"
        "&ssl.endpoint.identification.algorithm=https"
    )
    spec = parse_view_url(url, env={"KAFKA_PW": "hunter2"})
    config = spec.client_config()  # what the view's reader, writer and acks clients get
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert config["sasl.username"] == "api"
    assert config["sasl.password"] == "hunter2"
    assert config["ssl.ca.location"] == str(ca)
    assert config["ssl.endpoint.identification.algorithm"] == "https"
    assert (spec.bootstrap_servers, spec.topic) == ("k1:9093,k2:9093", "plant.view")
    assert spec.masked_config()["sasl.password"] == "**********"
    assert "hunter2" not in repr(spec)
    assert (
        parse_view_url("kafka://k:9092/v?security.protocol=ssl", env={}).settings["security.protocol"]
        == "ssl"
    )


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("sasl.password=hunter2", "sasl.password is a secret: give it as sasl.password=\\$\\{ENV_VAR\\}"),
        ("ssl.key.password=hunter2", "ssl.key.password is a secret"),
        ("sasl.password=${NOT_SET}", "sasl.password: environment variable NOT_SET is not set"),
        (
            "security.protocol=SASL_SSLL",
            "settings: .*security.protocol 'SASL_SSLL' is not one of PLAINTEXT, SSL",
        ),
        ("sasl.mechanism=SCRAM", "sasl.mechanism 'SCRAM' is not one of"),
        ("ssl.ca.location=/no/such/ca.pem", "ssl.ca.location: /no/such/ca.pem does not exist"),
        (
            "bootstrap.servers=x:1",
            "'bootstrap.servers' is set by the connector; use the field 'bootstrap_servers'",
        ),
        ("acks=0", "'acks' is set by the connector; use the field 'acks'"),
        ("security.protocol=SSL&security.protocol=PLAINTEXT", "security.protocol is given twice"),
        ("security.protocol", "SETTING=VALUE pairs joined by '&'"),
    ],
)
def test_view_url_errors_name_the_bad_setting(query: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as raised:
        parse_view_url(f"kafka://k:9093/v?sasl.username=api&{query}", env={"PW": "hunter2"})
    assert "hunter2" not in str(raised.value)  # a secret is never echoed


def test_view_url_errors_never_echo_a_secret() -> None:
    with pytest.raises(ConfigError, match="not a Kafka topic name") as raised:
        parse_view_url("kafka://k:9093/bad topic?sasl.password=${PW}", env={"PW": "hunter2"})
    assert "hunter2" not in str(raised.value)
    assert "?..." in str(raised.value)  # the settings are left out of the URL it shows
