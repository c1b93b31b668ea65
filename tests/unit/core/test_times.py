"""Time parsing: UTC nanoseconds inside, clear errors for anything else."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dte_stream.errors import ConfigError
from dte_stream.times import (
    MAX_TIME_NS,
    epoch_seconds_to_ns,
    format_time_ns,
    parse_duration_ns,
    parse_time,
    parse_time_or_relative,
)


@given(st.integers(0, MAX_TIME_NS - 1))
def test_format_then_parse_is_exact(ns: int) -> None:
    assert parse_time(format_time_ns(ns)) == ns


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("2026-01-01T00:00:00", "no timezone"),
        ("2026-01-01T00:00:00.1234567891Z", "more than 9 fractional digits"),
        ("yesterday", "not an ISO 8601 timestamp"),
        ("", "empty timestamp"),
        ("1969-12-31T23:59:59Z", "outside 1970..2262"),
    ],
)
def test_bad_timestamps_say_why(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_time(text)


@pytest.mark.parametrize("value", [1e300, -1e300, float("nan"), float("inf"), 10**15, True])
def test_bad_epoch_seconds_raise_value_error(value: float) -> None:
    with pytest.raises(ValueError, match=r"not a finite number|outside 1970\.\.2262"):
        epoch_seconds_to_ns(value)


def test_offsets_and_durations() -> None:
    assert parse_time("2026-01-01T01:00:00+01:00") == parse_time("2026-01-01T00:00:00Z")
    assert parse_duration_ns("250ms") == 250_000_000
    assert parse_time_or_relative("2h", now=10 * 3600 * 10**9) == 8 * 3600 * 10**9
    assert parse_time_or_relative("1767225600") == parse_time("2026-01-01T00:00:00Z")
    with pytest.raises(ConfigError, match="is not a time"):
        parse_time_or_relative("soonish")
