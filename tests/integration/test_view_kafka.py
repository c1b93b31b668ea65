"""The twin view across hosts: a dataflow publishes it to a compacted Kafka topic, and
``dte-stream serve --view kafka://...`` (which shares nothing with the dataflow but the broker)
answers the API from it.

A ``dte-stream run`` cluster of two processes (simulated rooms in real time) publishes its view
to a new topic (``view: {kind: kafka, local: true}``: the SQLite view of the same run is the
reference). A separate ``serve`` process follows the topic: a twin's live updates arrive over
SSE; once the run has ended, its twin list and every twin equal the SQLite view field by field.
A record that is not a view record is put on the topic; a restarted ``serve`` rebuilds the same
view from the compacted topic, is ready only once it has, counts the bad record and skips it.
Without ``local``, ``run --http`` serves its twins from the topic too; records the brokers do not
take are counted, logged once and handed back to be published again. Alerts are listed and
streamed from the topic, acknowledged there through the acknowledgements topic (the dataflow
records the token's name), and leave the topic when resolved or when their twin is evicted.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource

from dte_stream.api.tokens import TokenFile, default_tokens_path
from dte_stream.view import TwinQuery, TwinView

pytestmark = pytest.mark.integration

TWINS = 24

SPEC = """
version: 1
name: view_kafka
sources:
  - kind: simulator
    twin_type: room
    twins: {twins}
    interval: 0.5s
    ticks: 50
    seed: 7
    partitions: 4
twin_types:
  - name: room
    channels:
      temperature: {{unit: degC, filter: {{process_noise: 0.001, measurement_noise: 0.25}}}}
      humidity: {{unit: "%"}}
    alerts:
      rules:
        - {{kind: threshold, name: warm, channels: [temperature], above: 20.5, clear: 20}}
sinks:
  - kind: local_store
    data_dir: {data}
view:
  kind: kafka
  bootstrap_servers: "{servers}"
  topic: {topic}
  local: true
  create_topic: {{partitions: 3}}
engine:
  shards: 4
  epoch_seconds: 2
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _serve(api_dir: Path, url: str, log: Path) -> Iterator[str]:
    port = _free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dte_stream", "serve", "--http", f"127.0.0.1:{port}",
             "--data-dir", str(api_dir), "--view", url],
            stdout=out, stderr=out,
        )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.returncode is not None


def _wait(what: str, check: Any, timeout: float = 120.0, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, json.JSONDecodeError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:.0f} s" + (f"\n{log.read_text()[-3000:]}" if log else ""))
        time.sleep(0.3)


def _strip(record: dict[str, Any]) -> dict[str, Any]:
    """A record without what each reader adds itself (its change counter, ages)."""
    out = {k: v for k, v in record.items() if k not in ("seq", "age_s")}
    out["channels"] = {
        name: {k: v for k, v in ch.items() if k != "age_s"} for name, ch in record.get("channels", {}).items()
    }
    return out


def _same_view(client: httpx.Client, reference: TwinView) -> str | None:
    """None when the API's twins equal the reference view field by field; else the first difference."""
    page = client.get("/api/v1/twins", params={"limit": 1000}).json()
    expected = reference.list_twins(TwinQuery(limit=1000))
    if page["total"] != expected.total:
        return f"{page['total']} twins, expected {expected.total}"
    for entry, reference_entry in zip(page["twins"], expected.twins, strict=True):
        got = {k: v for k, v in entry.items() if k != "age_s"}
        want = {k: v for k, v in reference_entry.items() if k != "seq"}
        if got != want:
            return f"list entry {got} != {want}"
    for summary in expected.twins:
        twin_id = summary["twin_id"]
        got = _strip(client.get(f"/api/v1/twins/{twin_id}").json())
        want = _strip(reference.get_twin(twin_id) or {})
        if got != want:
            keys = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
            return f"twin {twin_id}: fields {keys} differ"
    return None


def _metric(client: httpx.Client, name: str) -> float:
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_serve_on_the_view_topic_answers_like_the_dataflows_view(kafka: Any, tmp_path: Path) -> None:
    servers = kafka.bootstrap_servers
    topic = f"view-{uuid.uuid4().hex[:8]}"
    data, api_dir = tmp_path / "data", tmp_path / "api"
    api_dir.mkdir()
    token = TokenFile(default_tokens_path(api_dir)).create("viewer", "read")
    spec = tmp_path / "flow.yaml"
    spec.write_text(SPEC.format(twins=TWINS, data=data, servers=servers, topic=topic))
    url = f"kafka://{servers}/{topic}"
    run_log, serve_log = tmp_path / "run.log", tmp_path / "serve.log"

    with run_log.open("ab") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "dte_stream", "run", str(spec), "--processes", "2", "--quiet"],
            stdout=out, stderr=out, cwd=tmp_path,
        )  # fmt: skip
    try:
        with (
            _serve(api_dir, url, serve_log) as base,
            httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {token}"}) as client,
        ):
            # the twins of both processes, from the topic alone
            _wait(
                "serve lists every twin of the run",
                lambda: client.get("/api/v1/twins").json()["total"] == TWINS,
                log=serve_log,
            )
            readyz = client.get("/readyz")
            assert readyz.status_code == 200, readyz.text
            # a live update: the twin's record now, then again with a newer reading
            with client.stream("GET", "/api/v1/twins/room-0003/events") as response:
                assert response.status_code == 200
                seen: list[int] = []
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        seen.append(json.loads(line[6:])["last_seen_ns"])
                        if len(seen) == 2:
                            break
            assert seen[1] > seen[0]
            assert run.wait(300) == 0, run_log.read_text()[-4000:]
            # the run is over: the topic holds its final view, which serve shows field by field
            reference = TwinView.open(data)
            assert reference.counts()["total"] == TWINS
            _wait(
                "serve shows the run's final view",
                lambda: _same_view(client, reference) is None,
                log=serve_log,
            )
            types = client.get("/api/v1/twin-types").json()["twin_types"]
            assert [t["name"] for t in types] == ["room"]
            assert _metric(client, "dte_view_records_in_total") >= TWINS
    finally:
        if run.poll() is None:
            run.terminate()
            run.wait(30)

    # the topic was created compacted
    admin = AdminClient({"bootstrap.servers": servers})
    resource = ConfigResource("topic", topic)
    config = admin.describe_configs([resource])[resource].result(30)
    assert config["cleanup.policy"].value == "compact"
    assert len(admin.list_topics(topic, timeout=30).topics[topic].partitions) == 3

    # a hostile record on the topic; a restarted serve rebuilds the same view, ready only then
    producer = Producer({"bootstrap.servers": servers})
    producer.produce(topic, b"{not json", b"room-bad")
    assert producer.flush(30) == 0
    with (
        _serve(api_dir, url, serve_log) as base,
        httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {token}"}) as client,
    ):
        ready = _wait("the restarted serve is ready", lambda: client.get("/readyz").status_code == 200)
        assert ready
        checks = {c["name"]: c for c in client.get("/readyz").json()["checks"]}
        assert checks[f"view:{topic}"]["ok"]
        assert _same_view(client, reference) is None  # complete as soon as it says it is ready
        assert client.get("/api/v1/twins/room-bad").status_code == 404
        assert _metric(client, "dte_view_records_rejected_total") == 1
    assert "is not a twin view record" in serve_log.read_text()
    rejected = (api_dir / "view_dead_letters.jsonl").read_text().splitlines()
    assert len(rejected) == 1
    assert json.loads(rejected[0])["source"].startswith(f"twin view topic {topic}/")
    reference.close()


def test_undelivered_view_records_are_counted_logged_once_and_published_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No broker at the address: the writer never blocks the dataflow, counts each record it could
    not deliver, logs the outage once, and hands the twins back to be published again."""
    from dte_stream.connectors.kafka.view import KafkaViewWriter
    from dte_stream.metrics import METRICS
    from dte_stream.spec.view import KafkaViewSpec

    spec = KafkaViewSpec(
        kind="kafka", bootstrap_servers=f"127.0.0.1:{_free_port()}", topic="nowhere", delivery_timeout=1.0
    )
    METRICS.reset()
    writer = KafkaViewWriter(spec)
    record = {
        "twin_id": "p-1", "twin_type": "pump", "labels": {}, "last_seen_ns": 1, "alert_state": "ok",
        "anomaly_score": None, "channels": {}, "models": [], "alerts": [],
    }  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="dte_stream.connectors.kafka"):
        writer.put([dict(record), dict(record, twin_id="p-2")], 5, [])
        writer.remove(["p-3"])
        _wait(
            "the records time out",
            lambda: writer.flush(0.5) == 0 and METRICS.get("view_delivery_errors") == 3,
        )
    assert writer.take_undelivered(["p-2", "p-9"]) == ["p-2"]
    assert writer.take_undelivered(["p-1", "p-2"]) == ["p-1"]
    assert writer.take_undelivered(["p-1", "p-2"]) == []
    warnings = [r.getMessage() for r in caplog.records if "was not delivered" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "nowhere" in warnings[0]
    writer.close()


def test_run_http_reads_its_own_view_from_the_topic(kafka: Any, tmp_path: Path) -> None:
    """``view: {kind: kafka}`` without ``local``: no SQLite view is written, and the API of
    ``run --http`` serves the twins from the topic, like ``serve`` on another host."""
    topic = f"view-{uuid.uuid4().hex[:8]}"
    data = tmp_path / "data"
    data.mkdir()
    token = TokenFile(default_tokens_path(data)).create("viewer", "read")
    text = SPEC.format(twins=6, data=data, servers=kafka.bootstrap_servers, topic=topic)
    spec = tmp_path / "flow.yaml"
    spec.write_text(text.replace("local: true", "local: false").replace("ticks: 50", "ticks: 2000"))
    port, log = _free_port(), tmp_path / "run.log"
    with log.open("ab") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "dte_stream", "run", str(spec), "--quiet", "--http", f"127.0.0.1:{port}"],
            stdout=out, stderr=out, cwd=tmp_path,
        )  # fmt: skip
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=30, headers={"Authorization": f"Bearer {token}"}
        ) as client:
            _wait(
                "run --http lists its twins",
                lambda: client.get("/api/v1/twins").json()["total"] == 6,
                log=log,
            )
            checks = {c["name"]: c for c in client.get("/readyz").json()["checks"]}
            assert checks[f"view:{topic}"]["ok"]
            twin = client.get("/api/v1/twins/room-0001").json()
            assert set(twin["channels"]) == {"temperature", "humidity"}
            assert twin["written_by"].endswith(f":{run.pid}")
        assert not (data / "twin_view.sqlite3").exists()
    finally:
        run.terminate()
        run.wait(60)


def test_alerts_flow_through_the_topic_and_acknowledgements_come_back(kafka: Any, tmp_path: Path) -> None:
    """On a host with only the topic: alerts are listed and streamed from it, and an
    acknowledgement made there reaches the dataflow (its alert log records the token's name) and
    comes back on the topic."""
    from dte_stream.alerts.store import alert_table

    topic = f"view-{uuid.uuid4().hex[:8]}"
    data, api_dir = tmp_path / "data", tmp_path / "api"
    api_dir.mkdir()
    tokens = TokenFile(default_tokens_path(api_dir))
    reader, operator = tokens.create("viewer", "read"), tokens.create("ana", "operate")
    text = SPEC.format(twins=6, data=data, servers=kafka.bootstrap_servers, topic=topic)
    spec = tmp_path / "flow.yaml"
    spec.write_text(text.replace("local: true", "local: false").replace("ticks: 50", "ticks: 2000"))
    run_log, serve_log = tmp_path / "run.log", tmp_path / "serve.log"
    with run_log.open("ab") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "dte_stream", "run", str(spec), "--quiet"],
            stdout=out, stderr=out, cwd=tmp_path,
        )  # fmt: skip
    try:
        with (
            _serve(api_dir, f"kafka://{kafka.bootstrap_servers}/{topic}", serve_log) as base,
            httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {reader}"}) as client,
        ):
            listed = _wait(
                "serve lists a firing alert from the topic",
                lambda: client.get("/api/v1/alerts", params={"state": "firing"}).json()["alerts"],
                log=run_log,
            )
            alert = listed[0]
            assert alert["state"] == "firing"
            assert alert["rule"] == "warm"
            assert alert["acked_by"] is None
            assert alert["since_ns"] > 0
            assert client.get("/api/v1/alerts", params={"rule": "nope"}).json()["total"] == 0
            alert_id = alert["alert_id"]
            with client.stream("GET", "/api/v1/alerts/events", params={"after": 0}) as stream:
                assert stream.status_code == 200
                lines = (line for line in stream.iter_lines() if line.startswith("data: "))
                first = json.loads(next(lines)[6:])
            assert first["alert_id"].endswith("/warm")
            assert first["state"] in ("pending", "firing", "resolved")
            # reading is not enough to acknowledge; an operator can, once
            assert client.post(f"/api/v1/alerts/{alert_id}/ack").status_code == 403
            operate = {"Authorization": f"Bearer {operator}"}
            acked = client.post(f"/api/v1/alerts/{alert_id}/ack", headers=operate)
            assert acked.status_code == 200, acked.text
            assert acked.json()["acked_by"] == "ana"
            assert client.post(f"/api/v1/alerts/{alert_id}/ack", headers=operate).status_code == 409
            assert client.post("/api/v1/alerts/room-0099%2Fwarm/ack", headers=operate).status_code == 404
            # the dataflow applied it: its alert log has the token's name, and its row came back
            _wait(
                "the dataflow records the acknowledgement",
                lambda: _acked_in_log(alert_table, data, alert_id),
                log=run_log,
            )

            def echoed() -> bool:
                rows = client.get("/api/v1/alerts", params={"twin_id": alert["twin_id"]}).json()["alerts"]
                return any(r["alert_id"] == alert_id and r["acked_by"] == "ana" for r in rows)

            _wait("the acknowledged row comes back on the topic", echoed, log=run_log)
    finally:
        run.terminate()
        run.wait(60)


def _acked_in_log(alert_table: Any, data: Path, alert_id: str) -> bool:
    from dte_stream.errors import StoreError

    try:
        table = alert_table(data, "all")
    except StoreError:  # the alert log is not written yet
        return False
    rows = table.filter(table["alert_id"] == alert_id).to_dicts()
    return bool(rows) and rows[0]["acked_by"] == "ana"


def test_resolved_alerts_and_evicted_twins_leave_the_topic(kafka: Any, tmp_path: Path) -> None:
    """Tombstones: a resolved alert (after ``resolved_keep_s``) and the alerts of an evicted twin
    are deleted from the compacted topic; a reader that starts afterwards never sees them."""
    from dte_stream.connectors.kafka.view import KafkaViewWriter
    from dte_stream.connectors.kafka.view_reader import KafkaViewReader
    from dte_stream.readiness import Readiness
    from dte_stream.spec.view import KafkaViewSpec
    from dte_stream.view import AlertQuery

    spec = KafkaViewSpec(
        kind="kafka",
        bootstrap_servers=kafka.bootstrap_servers,
        topic=f"view-{uuid.uuid4().hex[:8]}",
        create_topic={"partitions": 2},
    )
    writer = KafkaViewWriter.open(spec)
    writer.resolved_keep_s = 0.0
    twin = {
        "twin_type": "pump", "labels": {}, "last_seen_ns": 1, "alert_state": "firing",
        "anomaly_score": None, "channels": {}, "models": [], "alerts": [],
    }  # fmt: skip

    def alert(twin_id: str, state: str) -> dict[str, Any]:
        return {"alert_id": f"{twin_id}/hot", "twin_id": twin_id, "twin_type": "pump", "rule": "hot",
                "state": state, "severity": "warning", "starts_ns": 1, "time_ns": 2}  # fmt: skip

    ids = ["p-1", "p-2", "p-3"]
    writer.put([dict(twin, twin_id=t) for t in ids], 5, [alert(t, "firing") for t in ids])
    assert writer.flush(30) == 0
    writer.put([], 6, [alert("p-1", "resolved")])  # resolved: its row, then (keep 0 s) a tombstone
    writer.remove(["p-2"])  # evicted: the twin's tombstone and its alert's
    writer.put([], 7, [])
    assert writer.flush(30) == 0
    writer.close()

    view = TwinView.open(tmp_path)
    follower = KafkaViewReader(spec, view, readiness=Readiness()).start()
    try:
        assert follower.caught_up.wait(60)
        _wait("the reader has applied the tombstones", lambda: view.count_alerts(AlertQuery()) == 1)
        assert [a["alert_id"] for a in view.list_alerts(AlertQuery())] == ["p-3/hot"]
        assert view.get_alert("p-1/hot") is None
        assert view.get_twin("p-2") is None
        assert view.counts()["total"] == 2
    finally:
        follower.stop()
        view.close()
