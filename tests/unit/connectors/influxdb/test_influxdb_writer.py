"""InfluxDBSink's writer logic with a scripted in-process transport (no server needed).

The transport stands in for the network only: retries, backoff, Retry-After, dead letters, the
413 split, backpressure, the drop policy and close are the sink's own code under test. The same
behaviours are shown against real servers in tests/integration/test_influxdb_*.py.
"""

from __future__ import annotations

import itertools
import logging
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from influxdb_helpers import estimates, parse_line

from dte_stream.connectors.influxdb import InfluxDBRejected, InfluxDBSink, InfluxDBUnavailable
from dte_stream.errors import ConnectorError
from dte_stream.metrics import METRICS, exposition
from dte_stream.readiness import READINESS
from dte_stream.spec.influxdb import InfluxDBSinkSpec
from dte_stream.store.dead_letters import DeadLetterLog
from dte_stream.store.sink import DeadLetterOutput

Step = Callable[[bytes], None]


class ScriptedTransport:
    """Answers each write with the next step of a script (then with success); records bodies."""

    target = "InfluxDB at test"

    def __init__(self, script: list[Step] | None = None, check: Step | None = None) -> None:
        self.script = list(script or [])
        self.check_step = check
        self.attempts: list[tuple[float, bytes]] = []
        self.stored: list[bytes] = []
        self.checks = 0
        self.closed = False
        self.lock = threading.Lock()

    def write(self, body: bytes) -> None:
        with self.lock:
            self.attempts.append((time.monotonic(), body))
            step = self.script.pop(0) if self.script else None
        if step is not None:
            step(body)
        with self.lock:
            self.stored.append(body)

    def check(self) -> None:
        self.checks += 1
        if self.check_step is not None:
            self.check_step(b"")

    def close(self) -> None:
        self.closed = True

    def lines(self) -> list[str]:
        return [line for body in self.stored if body for line in body.decode().split("\n")]


def unavailable(retry_after: float | None = None, status: int = 503) -> Step:
    def step(body: bytes) -> None:
        raise InfluxDBUnavailable(f"InfluxDB at test answered {status}", status, retry_after)

    return step


def rejected(status: int = 400, message: str = "unable to parse") -> Step:
    def step(body: bytes) -> None:
        raise InfluxDBRejected(f"InfluxDB at test refused the write ({status}): {message}", status)

    return step


def sleeping(seconds: float) -> Step:
    return lambda body: time.sleep(seconds)


@pytest.fixture(autouse=True)
def _fresh_metrics() -> Iterator[None]:
    METRICS.reset()
    yield
    METRICS.reset()


def _spec(**fields: Any) -> InfluxDBSinkSpec:
    settings: dict[str, Any] = {
        "kind": "influxdb",
        "database": "test",
        "batch_size": 5,
        "max_buffer_lines": 100,
        "flush_interval": 0.05,
        "retries": {"initial_backoff": 0.01, "max_backoff": 0.05},
        "close_timeout": 5,
    }
    settings.update(fields)
    return InfluxDBSinkSpec.model_validate(settings)


def _sink(transport: ScriptedTransport, flow_dead_letters: Path | None = None, **fields: Any) -> InfluxDBSink:
    if flow_dead_letters is None:  # never the default dte-data/ of the working directory
        flow_dead_letters = Path(tempfile.mkdtemp(prefix="dte-dead-")) / "dead_letters.jsonl"
    return InfluxDBSink(_spec(**fields), flow_dead_letters, transport_factory=lambda spec: transport)


def _dead_twins(sink: InfluxDBSink) -> list[str]:
    assert isinstance(sink.dead_letters, DeadLetterOutput)
    return [parse_line(d.raw.decode())[1]["twin_id"] for d in sink.dead_letters.log.read()]


def _run(sink: InfluxDBSink, items: list[Any]) -> None:
    flow = Dataflow("influxdb_writer_test")
    op.output("influxdb", op.input("in", flow, TestingSource(items)), sink)
    run_main(flow)


def _twins(lines: list[str]) -> list[str]:
    return [parse_line(line)[1]["twin_id"] for line in lines]


def test_batches_of_batch_size_and_everything_on_close() -> None:
    transport = ScriptedTransport()
    _run(_sink(transport, flush_interval=60), [estimates([f"t{i}" for i in range(12)])])
    assert [len(body.split(b"\n")) for body in transport.stored] == [5, 5, 2]
    assert _twins(transport.lines()) == [f"t{i}" for i in range(12)]
    assert METRICS.get("influxdb_points_written") == 12
    assert METRICS.get("influxdb_batches_written") == 3
    assert transport.closed


def test_every_stored_point_is_in_the_stored_lag_histogram() -> None:
    start = time.time_ns() - 3 * 10**9  # points 3 s old (1 ms apart) when they are written
    transport = ScriptedTransport()
    before = time.time_ns()
    _run(_sink(transport, flush_interval=60), [estimates([f"t{i}" for i in range(12)], start=start)])
    after = time.time_ns()
    text = exposition(METRICS).decode()
    count = float(re.search(r"^dte_influxdb_stored_lag_seconds_count (\S+)$", text, re.M)[1])  # type: ignore[index]
    total = float(re.search(r"^dte_influxdb_stored_lag_seconds_sum (\S+)$", text, re.M)[1])  # type: ignore[index]
    assert count == 12
    # each point's lag lies between (write start - its time) and (write end - its time)
    times = start + np.arange(12) * 1_000_000
    assert ((before - times).sum() / 1e9) <= total <= ((after - times).sum() / 1e9)
    assert 'dte_influxdb_stored_lag_seconds_bucket{le="2.0"} 0.0' in text
    assert 'dte_influxdb_stored_lag_seconds_bucket{le="+Inf"} 12.0' in text


def test_lines_are_sent_after_flush_interval_without_waiting_for_a_full_batch() -> None:
    transport = ScriptedTransport()
    sink = _sink(transport, batch_size=1000, max_buffer_lines=1000, flush_interval=0.1)
    part = sink.build("influxdb", 0, 1)
    part.write_batch([estimates(["a", "b"])])
    deadline = time.monotonic() + 5
    while len(transport.lines()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _twins(transport.lines()) == ["a", "b"]
    part.close()


def test_retries_with_backoff_until_stored() -> None:
    transport = ScriptedTransport([unavailable(), unavailable(status=500), unavailable(status=429)])
    _run(_sink(transport), [estimates(["a", "b", "c"])])
    assert _twins(transport.lines()) == ["a", "b", "c"]
    assert METRICS.get("influxdb_write_failures") == 3
    assert METRICS.get("influxdb_retries") == 3
    assert METRICS.get("influxdb_points_dropped") == 0
    bodies = [body for _, body in transport.attempts]
    assert len(set(bodies)) == 1  # the same batch, resent unchanged


def test_retry_after_is_honoured() -> None:
    transport = ScriptedTransport([unavailable(retry_after=0.4, status=429)])
    _run(_sink(transport), [estimates(["a"])])
    (t_first, _), (t_second, _) = transport.attempts
    assert t_second - t_first >= 0.39
    assert _twins(transport.lines()) == ["a"]


def test_backoff_grows_and_is_capped(caplog: pytest.LogCaptureFixture) -> None:
    transport = ScriptedTransport([unavailable()] * 6)
    with caplog.at_level(logging.WARNING):
        _run(_sink(transport, retries={"initial_backoff": 0.02, "max_backoff": 0.08}), [estimates(["a"])])
    times = [t for t, _ in transport.attempts]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.01  # 0.02 with jitter of 50-100 %
    assert all(g < 0.5 for g in gaps)
    assert gaps[-1] >= 0.04  # grew to the cap (0.08 with jitter)
    # an outage is logged when it starts and when it ends, not once per attempt
    outage = [r for r in caplog.records if "answered 503" in r.getMessage()]
    assert len(outage) == 1
    assert any("answers again" in r.getMessage() for r in caplog.records)


def test_max_attempts_drops_the_batch_loudly(caplog: pytest.LogCaptureFixture) -> None:
    transport = ScriptedTransport([unavailable()] * 3)
    sink = _sink(transport, retries={"max_attempts": 3, "initial_backoff": 0.01})
    with caplog.at_level(logging.ERROR):
        _run(sink, [estimates(["a", "b"])])
    assert transport.lines() == []
    assert METRICS.get("influxdb_points_dropped") == 2
    assert any("DROPPED 2 points" in r.getMessage() for r in caplog.records)
    assert _dead_twins(sink) == ["a", "b"]  # a drop is a dead letter with its line
    assert METRICS.get("dead_letters") == 2


def test_only_the_refused_lines_of_a_partial_write_are_dead_letters(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """InfluxDB 1.x stores the good lines of a batch and answers 400: only the bad ones are dead."""
    bad = {"t3", "t7", "t12"}

    def partial_write(body: bytes) -> None:
        refused = [line for line in body.decode().split("\n") if parse_line(line)[1]["twin_id"] in bad]
        if refused:
            raise InfluxDBRejected(
                f"InfluxDB at test refused the write (400): partial write: field type conflict "
                f"dropped={len(refused)}",
                400,
            )

    transport = ScriptedTransport([partial_write] * 100)
    path = tmp_path / "dead.jsonl"
    with caplog.at_level(logging.ERROR):
        _run(_sink(transport, path), [estimates([f"t{i}" for i in range(15)])])
    assert sorted(_twins(transport.lines())) == sorted(f"t{i}" for i in range(15) if f"t{i}" not in bad)
    letters = list(DeadLetterLog(path).read())
    assert sorted(parse_line(d.raw.decode())[1]["twin_id"] for d in letters) == sorted(bad)
    assert all("field type conflict" in d.reason and d.source == "influxdb:influxdb" for d in letters)
    assert METRICS.get("influxdb_points_rejected") == 3
    assert METRICS.get("dead_letters") == 3  # the run's summary counts them
    refusals = [r for r in caplog.records if "field type conflict" in r.getMessage()]
    assert len(refusals) == 1  # said once, then counted


def test_a_413_splits_the_batch() -> None:
    def too_large(body: bytes) -> None:
        if body.count(b"\n") + 1 > 2:
            raise InfluxDBRejected("InfluxDB at test: request too large", 413)

    transport = ScriptedTransport([too_large] * 10)
    _run(_sink(transport), [estimates([f"t{i}" for i in range(5)])])
    assert sorted(_twins(transport.lines())) == [f"t{i}" for i in range(5)]
    assert METRICS.get("influxdb_points_rejected") == 0


def test_unwritable_rows_are_dead_lettered_by_the_sink(tmp_path: Path) -> None:
    transport = ScriptedTransport()
    path = tmp_path / "dead.jsonl"
    _run(_sink(transport, path), [estimates(["ok", "", "bad\\"])])
    assert _twins(transport.lines()) == ["ok"]
    reasons = [d.reason for d in DeadLetterLog(path).read()]
    assert len(reasons) == 2
    assert METRICS.get("influxdb_points_invalid") == 2


def test_spec_dead_letters_path_wins(tmp_path: Path) -> None:
    transport = ScriptedTransport()
    own = tmp_path / "influx-dead.jsonl"
    _run(_sink(transport, tmp_path / "flow-dead.jsonl", dead_letters=str(own)), [estimates([""])])
    assert len(list(DeadLetterLog(own).read())) == 1
    assert not (tmp_path / "flow-dead.jsonl").exists()


def test_full_buffer_blocks_the_dataflow_and_drops_nothing() -> None:
    transport = ScriptedTransport([sleeping(0.05)] * 100)
    items = [estimates([f"t{k}-{i}" for i in range(10)]) for k in range(10)]
    _run(_sink(transport, batch_size=10, max_buffer_lines=10, max_block=0.01), items)
    assert len(transport.lines()) == 100
    assert METRICS.get("influxdb_blocked_ms") > 0
    assert METRICS.get("influxdb_points_dropped") == 0


def test_outage_past_max_block_drops_the_oldest(caplog: pytest.LogCaptureFixture) -> None:
    transport = ScriptedTransport([unavailable()] * 10_000)
    sink = _sink(transport, batch_size=5, max_buffer_lines=10, max_block=0.3, close_timeout=0.3)
    part = sink.build("influxdb", 0, 1)
    with caplog.at_level(logging.ERROR):
        start = time.monotonic()
        for k in range(6):
            part.write_batch([estimates([f"t{k}-{i}" for i in range(5)])])
        blocked = time.monotonic() - start
        part.close()
    # 30 lines: 5 in the writer's hands, 10 buffered, the rest dropped; then close drops the lot
    assert 0.2 <= blocked < 3
    assert METRICS.get("influxdb_points_dropped") == 30
    assert METRICS.get("influxdb_points_written") == 0
    assert sorted(_dead_twins(sink)) == sorted(f"t{k}-{i}" for k in range(6) for i in range(5))
    messages = [r.getMessage() for r in caplog.records]
    assert any("DROPPING POINTS" in m for m in messages)
    assert any("close_timeout" in m for m in messages)


def test_close_gives_up_after_close_timeout() -> None:
    transport = ScriptedTransport([unavailable()] * 10_000)
    sink = _sink(transport, close_timeout=0.5)
    part = sink.build("influxdb", 0, 1)
    part.write_batch([estimates(["a", "b", "c"])])
    start = time.monotonic()
    part.close()
    assert time.monotonic() - start < 3
    assert METRICS.get("influxdb_points_dropped") == 3
    assert sorted(_dead_twins(sink)) == ["a", "b", "c"]
    assert transport.closed


def test_a_setting_that_can_never_work_fails_at_build() -> None:
    transport = ScriptedTransport(check=rejected(404, "database not found"))
    with pytest.raises(ConnectorError, match="database not found"):
        _sink(transport).build("influxdb", 0, 1)
    assert transport.closed


def test_a_server_down_at_start_is_checked_again_before_the_first_write() -> None:
    state = {"down": True}

    def check(body: bytes) -> None:
        if state["down"]:
            state["down"] = False
            raise InfluxDBUnavailable("InfluxDB at test is not reachable: connection refused")

    transport = ScriptedTransport(check=check)
    _run(_sink(transport), [estimates(["a"])])
    assert transport.checks == 2
    assert _twins(transport.lines()) == ["a"]


def test_a_rejected_late_check_stops_the_dataflow() -> None:
    calls = {"n": 0}

    def check(body: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise InfluxDBUnavailable("InfluxDB at test is not reachable")
        raise InfluxDBRejected("InfluxDB at test: database 'test' not found", 404)

    transport = ScriptedTransport(check=check)
    part = _sink(transport).build("influxdb", 0, 1)
    part.write_batch([estimates(["a"])])

    def keep_writing() -> None:
        for _ in range(100):
            time.sleep(0.02)
            part.write_batch([estimates(["b"])])
        part.close()

    with pytest.raises(ConnectorError, match="not found"):
        keep_writing()


def test_items_must_be_estimate_batches() -> None:
    part = _sink(ScriptedTransport()).build("influxdb", 0, 1)
    try:
        with pytest.raises(ConnectorError, match="must be EstimateBatch"):
            part.write_batch([("key", estimates(["a"]))])  # type: ignore[list-item]
    finally:
        part.close()


def test_batches_of_one_twin_type_are_serialised_together() -> None:
    transport = ScriptedTransport()
    items = [estimates(["a"], twin_type="pump"), estimates(["b"], twin_type="valve"), estimates(["c"])]
    part = _sink(transport, batch_size=100, max_buffer_lines=100).build("influxdb", 0, 1)
    part.write_batch(items)
    part.close()
    assert len(transport.stored) == 1  # one request
    types = [parse_line(line)[1]["twin_type"] for line in transport.lines()]
    assert sorted(types) == ["pump", "pump", "valve"]


def test_a_stop_while_the_server_is_down_gives_up_without_dropping() -> None:
    """A stop waits close_timeout for the server, then raises (the epoch is not committed);
    close then leaves the lines for the restart: nothing dropped, nothing dead-lettered."""
    from dte_stream import shutdown
    from dte_stream.connectors.influxdb import InfluxDBStopped

    transport = ScriptedTransport([unavailable()] * 10_000)
    sink = _sink(transport, close_timeout=0.5)
    part = sink.build("influxdb", 0, 1)
    part.write_batch([estimates(["a", "b", "c"])])
    shutdown.STOP.set()
    try:
        start = time.monotonic()
        with pytest.raises(InfluxDBStopped, match="stopped with 3 points not written"):
            part.snapshot()
        assert 0.4 <= time.monotonic() - start < 3
        start = time.monotonic()
        part.close()
        assert time.monotonic() - start < 2  # no second close_timeout
    finally:
        shutdown.STOP.clear()
    assert METRICS.get("influxdb_points_dropped") == 0
    assert _dead_twins(sink) == []
    assert transport.lines() == []


def test_a_second_signal_stops_waiting_at_once() -> None:
    from dte_stream import shutdown
    from dte_stream.connectors.influxdb import InfluxDBStopped

    transport = ScriptedTransport([unavailable()] * 10_000)
    part = _sink(transport, close_timeout=30).build("influxdb", 0, 1)
    part.write_batch([estimates(["a"])])
    shutdown.STOP.set()
    shutdown.STOP_NOW.set()
    try:
        start = time.monotonic()
        with pytest.raises(InfluxDBStopped, match="at once"):
            part.snapshot()
        part.close()
        assert time.monotonic() - start < 2
    finally:
        shutdown.STOP.clear()
        shutdown.STOP_NOW.clear()
    assert METRICS.get("influxdb_points_dropped") == 0


def _run_epoch_sink(sink: InfluxDBSink, items: list[Any]) -> None:
    flow = Dataflow("influxdb_epoch_test")
    op.output("influxdb", op.input("in", flow, TestingSource(items)), sink.per_epoch(2))
    run_main(flow)


def test_readyz_knows_the_sink_from_the_start_though_no_writer_was_built() -> None:
    """Bytewax builds an epoch sink's writer only when its first batch comes; the sink's own
    check (its start-up check) is in /readyz from the start, and a write that works clears it."""
    READINESS.reset()
    try:
        transport = ScriptedTransport()
        _run_epoch_sink(_sink(transport), [])  # no batch: no writer
        checks = {c.name: c for c in READINESS.status().checks}
        assert list(checks) == ["sink influxdb"]
        assert checks["sink influxdb"].ok
        assert transport.checks == 1
        assert transport.closed

        READINESS.reset()
        down = ScriptedTransport(check=unavailable())
        _run_epoch_sink(_sink(down), [])
        status = READINESS.status()
        assert not status.ready
        assert status.reasons() == ["sink influxdb: InfluxDB at test answered 503"]

        # The server answers again: the first write that works makes the sink ready.
        state = {"checks": 0}

        def down_at_start(body: bytes) -> None:
            state["checks"] += 1
            if state["checks"] == 1:
                raise InfluxDBUnavailable("InfluxDB at test is not reachable: connection refused")

        READINESS.reset()
        recovering = ScriptedTransport(check=down_at_start)
        _run_epoch_sink(_sink(recovering), [("shard-0", estimates(["a"]))])
        assert _twins(recovering.lines()) == ["a"]
        assert READINESS.status().ready, READINESS.status().reasons()
    finally:
        READINESS.reset()
