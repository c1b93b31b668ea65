"""The connector contract (connector_contract.py) run on every connector that needs no service.

Each case is a factory over a fresh folder; the same checks run on each. Kafka, MQTT and
InfluxDB get theirs in tests/integration/test_connector_contract_services.py.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from connector_contract import SinkCase, SourceCase, sink_checks, source_checks

from dte_stream.batches import AlertEvent, EstimateBatch
from dte_stream.connectors.alerting.sink import NotifierSink
from dte_stream.connectors.file.source import FileSource
from dte_stream.connectors.simulator.source import SimulatorSource
from dte_stream.readings import DeadLetter
from dte_stream.spec.model import FileSourceSpec, SimulatorSourceSpec
from dte_stream.spec.notify import WebhookNotifierSpec
from dte_stream.store.dead_letters import DeadLetterLog
from dte_stream.store.local import LocalStore
from dte_stream.store.sink import DeadLetterSink, LocalStoreSink

T0 = 1_767_323_045_000_000_000
BAD_LINE = b'{"twin_id": "pump-1", "channel": "temp", "value": '


def _file_source(tmp: Path, codec: str) -> SourceCase:
    path = tmp / f"input.{codec}"
    if codec == "json":
        lines = [
            json.dumps({"twin_id": f"pump-{i % 3}", "channel": "temp", "time_ns": T0 + i, "value": i + 0.5})
            for i in range(10)
        ]
        body = "\n".join(lines[:4]) + "\n" + BAD_LINE.decode() + "\n" + "\n".join(lines[4:]) + "\n"
        bad: bytes | None = BAD_LINE
    else:
        lines = [f"m,twin_id=pump-{i % 3},channel=temp value={i + 0.5} {T0 + i}" for i in range(10)]
        body = "\n".join(lines[:4]) + "\nnot line protocol at all\n" + "\n".join(lines[4:]) + "\n"
        bad = b"not line protocol at all"
    path.write_text(body)
    spec = FileSourceSpec(kind="file", path=path, codec=codec, batch_lines=3)  # type: ignore[arg-type]
    return SourceCase(f"file ({codec})", lambda: FileSource(spec), expected=10, bad=bad)


def _simulator_source(tmp: Path) -> SourceCase:
    spec = SimulatorSourceSpec(
        kind="simulator", twin_type="pump", twins=7, ticks=5, partitions=3, start=T0, rate=0
    )
    return SourceCase("simulator", lambda: SimulatorSource(spec, ["temp", "flow"]), expected=7 * 5 * 2)


SOURCES: dict[str, Callable[[Path], SourceCase]] = {
    "file-json": lambda tmp: _file_source(tmp, "json"),
    "file-line-protocol": lambda tmp: _file_source(tmp, "line_protocol"),
    "simulator": _simulator_source,
}


def estimates(n: int, twin_ids: list[str] | None = None) -> EstimateBatch:
    """An estimate batch of ``n`` rows (three twins, one channel)."""
    ids = np.array(twin_ids or [f"pump-{i % 3}" for i in range(n)], dtype=np.str_)
    f = np.arange(n, dtype=np.float64) + 0.5
    return EstimateBatch(
        "pump", ids, np.full(n, "temp"), T0 + np.arange(n, dtype=np.int64), f, np.full(n, ""), f, f, f, f
    )


def _local_store(tmp: Path) -> SinkCase:
    good = [("readings", estimates(4)), ("readings", estimates(3))]

    def read_back() -> list[Any]:
        store = LocalStore(tmp)
        if "readings" not in store.tables():
            return []
        frame = store.query("readings")
        times = frame["time"].dt.epoch("ns").to_list()
        return sorted(zip(frame["twin_id"].to_list(), times, strict=True))

    def expected() -> list[Any]:
        return sorted(
            (t, ts) for _, b in good for t, ts in zip(b.twin_id.tolist(), b.time_ns.tolist(), strict=True)
        )

    return SinkCase(
        "local store",
        lambda: LocalStoreSink(tmp, flush_rows=1_000, flush_seconds=60.0, fsync=False),
        good,
        expected,
        read_back,
        bad=("readings", "not a frame"),
    )


def _dead_letter_file(tmp: Path) -> SinkCase:
    path = tmp / "dead.jsonl"
    good = [DeadLetter(f"test:{i}", f"reason {i}", b"raw %d" % i, T0 + i) for i in range(5)]

    def read_back() -> list[Any]:
        if not path.exists():
            return []
        return sorted(json.loads(line)["source"] for line in path.read_text().splitlines())

    return SinkCase(
        "dead-letter file",
        lambda: DeadLetterSink(path),
        good,
        lambda: sorted(d.source for d in good),
        read_back,
        bad="not a dead letter",
    )


class _Receiver(http.server.BaseHTTPRequestHandler):
    """A webhook receiver on 127.0.0.1: keeps every JSON body it is sent."""

    bodies: list[Any]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).bodies.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:  # quiet
        return


def _notifiers(tmp: Path) -> SinkCase:
    handler = type("Handler", (_Receiver,), {"bodies": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    spec = WebhookNotifierSpec(kind="webhook", name="hook", url=url)
    good = [
        AlertEvent(f"a-{i}", f"pump-{i}", "pump", "hot", "firing", "warning", T0, T0 + i) for i in range(4)
    ]
    return SinkCase(
        "alert notifiers (webhook)",
        lambda: NotifierSink([spec], close_timeout=10.0),
        good,
        lambda: sorted(e.alert_id for e in good),
        lambda: sorted(b["alert_id"] for b in handler.bodies),
        bad="not an alert event",
        extra={"server": server},
    )


SINKS: dict[str, Callable[[Path], SinkCase]] = {
    "local-store": _local_store,
    "dead-letter-file": _dead_letter_file,
    "alert-notifiers": _notifiers,
}


@pytest.mark.parametrize("check", list(source_checks()), ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", SOURCES)
def test_source_contract(name: str, check: Callable[[Any, SourceCase], None], tmp_path: Path) -> None:
    case = SOURCES[name](tmp_path)
    check(case.build(), case)


@pytest.mark.parametrize("check", list(sink_checks()), ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", SINKS)
def test_sink_contract(name: str, check: Callable[[Any, SinkCase], None], tmp_path: Path) -> None:
    case = SINKS[name](tmp_path)
    try:
        check(case.build(), case)
    finally:
        if "server" in case.extra:
            case.extra["server"].shutdown()
            case.extra["server"].server_close()


def test_dead_letter_log_reads_back_what_the_contract_wrote(tmp_path: Path) -> None:
    """The dead-letter case reads its file as JSON lines: the log's own format."""
    DeadLetterLog(tmp_path / "d.jsonl").append([DeadLetter("s", "r", b"x", T0)])
    (row,) = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert (row["source"], row["reason"], row["raw"]) == ("s", "r", "x")
