"""Logging setup: JSON and text lines, levels, repeats held back, outages said once."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from dte_stream.logs import Outage, RepeatFilter, configure, json_logs


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    configure("warning", "text", stream=io.StringIO())
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)


def test_json_lines_carry_time_level_logger_message_and_the_traceback() -> None:
    stream = io.StringIO()
    configure("info", "json", stream=stream)
    log = logging.getLogger("dte_stream.test.json")
    log.info("twin %s evicted", "pump-1")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("writer thread failed")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["level"] == "INFO"
    assert first["logger"] == "dte_stream.test.json"
    assert first["message"] == "twin pump-1 evicted"
    assert first["time"].endswith("+00:00")
    assert second["level"] == "ERROR"
    assert "ValueError: boom" in second["error"]
    assert json_logs()


def test_text_lines_and_the_level_threshold() -> None:
    stream = io.StringIO()
    configure("warning", "text", stream=stream)
    log = logging.getLogger("dte_stream.test.text")
    log.info("not shown")
    log.warning("InfluxDB at %s does not answer", "http://127.0.0.1:1")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith("WARNING dte_stream.test.text: InfluxDB at http://127.0.0.1:1 does not answer")
    assert lines[0][:4].isdigit()
    assert "Z " in lines[0]
    assert not json_logs()


def test_configure_twice_keeps_one_handler() -> None:
    stream = io.StringIO()
    configure("info", "text", stream=io.StringIO())
    configure("info", "text", stream=stream)
    logging.getLogger("dte_stream.test.once").warning("once")
    assert len(stream.getvalue().splitlines()) == 1


def test_bad_settings_are_refused_with_the_allowed_values() -> None:
    with pytest.raises(ValueError, match="text, json"):
        configure("info", "xml")
    with pytest.raises(ValueError, match="debug, info, warning, error"):
        configure("loud", "text")


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("dte_stream.x", logging.WARNING, __file__, 1, msg, args, None)


def test_repeats_are_held_back_then_counted() -> None:
    now = [0.0]
    f = RepeatFilter(interval=60.0, clock=lambda: now[0])
    assert f.filter(_record("write to %s failed", "a"))
    for k in range(5):
        now[0] = 10.0 + k
        assert not f.filter(_record("write to %s failed", "b"))
    assert f.filter(_record("another message"))
    now[0] = 61.0
    passed = _record("write to %s failed", "c")
    assert f.filter(passed)
    assert passed.getMessage() == "write to c failed (5 more like this in 61 s)"
    now[0] = 62.0
    assert not f.filter(_record("write to %s failed", "d"))


def test_an_outage_is_said_when_it_starts_reminded_and_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("dte_stream.test.outage")
    outage = Outage(log, "InfluxDB at http://127.0.0.1:1", remind_every=0.0)
    with caplog.at_level(logging.DEBUG, logger="dte_stream.test.outage"):
        outage.failed("connection refused")
        outage.failed("connection refused")
        outage.recovered()
        outage.recovered()  # nothing more: it already works
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[0] == "InfluxDB at http://127.0.0.1:1 fails: connection refused; retrying"
    assert warnings[1].startswith("InfluxDB at http://127.0.0.1:1 still fails after 0 s and 2 attempts")
    assert warnings[2].startswith("InfluxDB at http://127.0.0.1:1 works again after")
    assert warnings[2].endswith("and 2 failed attempts")
    assert len(warnings) == 3


def test_messages_that_are_only_placeholders_are_told_apart_by_their_text() -> None:
    f = RepeatFilter(interval=60.0, clock=lambda: 0.0)
    assert f.filter(_record("%s", "serving http://127.0.0.1:8080"))
    assert f.filter(_record("%s", "finished after 3.0 s"))
    assert not f.filter(_record("%s", "finished after 3.0 s"))
