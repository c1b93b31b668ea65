"""The spec watcher (SIGHUP, a changed file) and the notifier sink's hand-over of a reload."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from dte_stream.connectors.alerting.sink import NotifierSink
from dte_stream.metrics import METRICS
from dte_stream.reload import LiveSpec, SpecWatcher
from dte_stream.spec import load_spec

SPEC = """\
version: VERSION
name: plant
sources: [{kind: simulator, twin_type: pump}]
twin_types:
  - name: pump
    channels: {temperature: {}CHANNELS}
    alerts: {rules: [{kind: threshold, name: hot, above: ABOVE}]}
sinks: [{kind: local_store}]
notifiers: NOTIFIERS
"""


def write(path: Path, version: int, above: float, channels: str = "", notifiers: str = "[]") -> None:
    text = SPEC.replace("VERSION", str(version)).replace("ABOVE", str(above))
    path.write_text(text.replace("CHANNELS", channels).replace("NOTIFIERS", notifiers))
    stamp = path.stat().st_mtime_ns + version * 10**9  # a later mtime however fast the test runs
    os.utime(path, ns=(stamp, stamp))


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "plant.yaml"
    write(path, 1, 90)
    return path


def test_a_changed_file_is_reloaded_once_and_counted(
    spec_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    METRICS.reset()
    live = LiveSpec(load_spec(spec_file))
    watcher = SpecWatcher(spec_file, live, load_spec)
    assert watcher.check() is None  # nothing changed
    write(spec_file, 2, 80)
    with caplog.at_level(logging.INFO, logger="dte_stream.reload"):
        result = watcher.check()
    assert result is not None
    assert result.applied
    assert live.spec.version == 2
    assert live.generation == 1
    assert live.spec.twin_types[0].alerts.rules[0].above == 80  # type: ignore[union-attr]
    assert [r.getMessage() for r in caplog.records] == [
        "spec reloaded: version 1 -> 2; changed: twin_types.pump.alerts, version "
        f"(the file changed: {spec_file})"
    ]
    assert watcher.check() is None  # seen already
    assert METRICS.get("spec_reloads", result="applied") == 1
    assert METRICS.gauge("spec_version") == 2


def test_a_touched_file_is_not_a_reload_but_sighup_always_is(spec_file: Path) -> None:
    live = LiveSpec(load_spec(spec_file))
    watcher = SpecWatcher(spec_file, live, load_spec)
    os.utime(spec_file, ns=(1, 1))
    assert watcher.check() is None
    result = watcher.check(asked=True)
    assert result is not None
    assert result.applied
    assert result.changed == []
    assert result.line(1) == "spec reloaded: nothing changed (version 1)"


def test_a_spec_that_does_not_validate_or_does_not_fit_is_refused(
    spec_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    METRICS.reset()
    live = LiveSpec(load_spec(spec_file))
    watcher = SpecWatcher(spec_file, live, load_spec)
    spec_file.write_text(spec_file.read_text().replace("above: 90", "abov: 90"))
    with caplog.at_level(logging.WARNING, logger="dte_stream.reload"):
        invalid = watcher.check(asked=True)
        write(spec_file, 3, 80, channels=", flow: {}")
        misfit = watcher.check()
    assert invalid is not None
    assert not invalid.applied
    assert "unknown field 'abov'" in invalid.problems[0]
    assert misfit is not None
    assert misfit.problems == [
        "twin type 'pump': channels added: flow (the saved state has no place for them)"
    ]
    assert live.spec.version == 1
    assert live.generation == 0
    assert all(
        r.getMessage().startswith("spec reload refused, still running version 1: ") for r in caplog.records
    )
    assert len(caplog.records) == 2
    assert METRICS.get("spec_reloads", result="refused") == 2


def test_the_watcher_thread_reloads_on_request(spec_file: Path) -> None:
    live = LiveSpec(load_spec(spec_file))
    with SpecWatcher(spec_file, live, load_spec, interval=60) as watcher:
        write(spec_file, 2, 70)
        watcher.request()  # what SIGHUP does; the 60 s poll would not come in time
        for _ in range(200):
            if live.generation:
                break
            time.sleep(0.05)
    assert live.spec.version == 2


def test_the_notifier_sink_swaps_its_dispatcher_after_a_reload(spec_file: Path) -> None:
    live = LiveSpec(load_spec(spec_file))
    sink = NotifierSink(live.spec.notifiers, close_timeout=1.0, live=live)
    partition = sink.build("alert_notifiers", 0, 1)
    first = sink.dispatcher()
    assert first.names == []
    write(spec_file, 2, 90, notifiers="[{kind: webhook, name: ops, url: 'http://127.0.0.1:9/hook'}]")
    assert live.offer(load_spec(spec_file)).applied
    second = sink.dispatcher()
    assert second is not first
    assert second.names == ["ops"]
    write(spec_file, 3, 80, notifiers="[{kind: webhook, name: ops, url: 'http://127.0.0.1:9/hook'}]")
    assert live.offer(load_spec(spec_file)).applied
    assert sink.dispatcher() is second  # the notifiers did not change: the same dispatcher
    partition.close()
