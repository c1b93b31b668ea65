"""Time handling: timezone-aware UTC at the edges, int64 nanoseconds inside.

>>> parse_time("2026-01-02T03:04:05Z")
1767323045000000000
>>> format_time_ns(1767323045000000000)
'2026-01-02T03:04:05.000000000Z'
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime, timedelta

from dte_stream.errors import ConfigError

__all__ = [
    "MAX_TIME_NS",
    "MIN_TIME_NS",
    "NS_PER_S",
    "format_time_ns",
    "now_ns",
    "parse_duration_ns",
    "parse_time",
    "parse_time_or_relative",
]

NS_PER_S = 1_000_000_000
#: Readings must lie in [1970, 2262): int64 nanoseconds cover up to 2262-04-11.
MIN_TIME_NS = 0
MAX_TIME_NS = 9_214_646_400 * NS_PER_S  # 2262-01-01T00:00:00Z

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h|d|w)\s*$")
_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": NS_PER_S,
    "m": 60 * NS_PER_S,
    "h": 3600 * NS_PER_S,
    "d": 86400 * NS_PER_S,
    "w": 7 * 86400 * NS_PER_S,
}


def now_ns() -> int:
    """The current wall-clock time as int64 nanoseconds since the Unix epoch (UTC)."""
    return time.time_ns()


def datetime_to_ns(value: datetime) -> int:
    """Convert a timezone-aware datetime to int64 nanoseconds; naive datetimes are refused."""
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError(f"timestamp {value.isoformat()!r} has no timezone; add 'Z' or an offset")
    delta = value - _EPOCH
    return (delta.days * 86400 + delta.seconds) * NS_PER_S + delta.microseconds * 1000


def parse_time(text: str) -> int:
    """Parse an RFC 3339 / ISO 8601 timestamp with a timezone into int64 nanoseconds.

    Fractions of a second are kept to the nanosecond. Raises ``ValueError`` naming the problem.
    """
    s = text.strip()
    if not s:
        raise ValueError("empty timestamp")
    frac_ns = 0
    m = re.match(r"^(.*T\d{2}:\d{2}:\d{2})\.(\d+)(.*)$", s)
    if m:
        digits = m.group(2)
        if len(digits) > 9:
            raise ValueError(f"{text!r} has more than 9 fractional digits (nanoseconds are the limit)")
        frac_ns = int(digits.ljust(9, "0"))
        s = m.group(1) + m.group(3)
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 timestamp") from None
    ns = datetime_to_ns(dt) + frac_ns
    if not MIN_TIME_NS <= ns < MAX_TIME_NS:
        raise ValueError(f"timestamp {text!r} is outside 1970..2262")
    return ns


def epoch_seconds_to_ns(seconds: float) -> int:
    """Convert epoch seconds (int or float) to nanoseconds, refusing NaN and out-of-range."""
    if isinstance(seconds, bool) or not math.isfinite(seconds):
        raise ValueError(f"timestamp {seconds!r} is not a finite number")
    if not -1e12 < seconds < 1e12:  # far outside int64 nanoseconds; keeps round() from overflowing
        raise ValueError(f"timestamp {seconds!r} s is outside 1970..2262")
    ns = seconds * NS_PER_S if isinstance(seconds, int) else round(seconds * NS_PER_S)
    if not MIN_TIME_NS <= ns < MAX_TIME_NS:
        raise ValueError(f"timestamp {seconds!r} s is outside 1970..2262")
    return int(ns)


def format_time_ns(ns: int) -> str:
    """Format int64 nanoseconds as an RFC 3339 UTC timestamp with nanoseconds."""
    secs, frac = divmod(int(ns), NS_PER_S)
    dt = _EPOCH + timedelta(seconds=secs)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def parse_duration_ns(text: str) -> int:
    """Parse a duration such as ``"250ms"``, ``"10s"``, ``"5m"``, ``"2h"``, ``"1d"``."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration; use a number and one of ns, us, ms, s, m, h, d, w")
    return int(float(m.group(1)) * _UNIT_NS[m.group(2)])


def parse_time_or_relative(text: str, *, now: int | None = None) -> int:
    """Parse an absolute timestamp, epoch seconds, or a duration meaning "that long ago".

    Used for ``--since``/``--until`` arguments; raises :class:`ConfigError` with the allowed forms.
    """
    current = now_ns() if now is None else now
    try:
        return current - parse_duration_ns(text)
    except ValueError:
        pass
    try:
        return parse_time(text)
    except ValueError:
        pass
    try:
        return epoch_seconds_to_ns(float(text))
    except ValueError:
        pass
    raise ConfigError(
        f"{text!r} is not a time: use an ISO 8601 timestamp with timezone "
        "(2026-01-02T03:04:05Z), epoch seconds, or a duration ago (30s, 15m, 2h, 7d)"
    )
