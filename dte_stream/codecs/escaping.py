r"""Escaping for InfluxDB line protocol, shared by the line-protocol codec and the InfluxDB sink.

Line protocol escapes with a backslash: commas and spaces in measurements; commas, equals signs
and spaces in tag keys, tag values and field keys; double quotes and backslashes inside string
field values. A backslash before any other character is a literal backslash, and two
backslashes read as one (the InfluxDB 2 rules). So a backslash is doubled only where it would
otherwise be read as an escape: before a special character, before another backslash, or at
the end. Strings without such backslashes come out exactly as every InfluxDB version expects;
the few with them (``a\,b``, a trailing ``\``) are exact for InfluxDB 2 and for this codec
(InfluxDB 1.x keeps the doubled backslash). Line breaks cannot be represented anywhere in line
protocol, and InfluxDB 1.x skips tabs and NUL as whitespace between elements: the escape
functions refuse (``ValueError``) any control character in measurements, tag keys, tag values
and field keys, and line breaks in string fields, instead of letting a value start a new point.

>>> escape_tag("pump 1,a=b")
'pump\\ 1\\,a\\=b'
>>> escape_measurement("my measurement,x=1")
'my\\ measurement\\,x=1'
>>> escape_string_field('say "hi" \\ bye')
'say \\"hi\\" \\\\ bye'
>>> unescape_tag(escape_tag("C:\\temp\\"))
'C:\\temp\\'
"""

from __future__ import annotations

import re

__all__ = [
    "escape_field_key",
    "escape_measurement",
    "escape_string_field",
    "escape_tag",
    "unescape_field_key",
    "unescape_measurement",
    "unescape_string_field",
    "unescape_tag",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# A backslash that would be read as an escape: before a special character, a backslash or the end.
_KEY_BACKSLASH = re.compile(r"\\(?=[,= \\]|\Z)")
_KEY_SPECIAL = re.compile(r"([,= ])")
_MEASUREMENT_BACKSLASH = re.compile(r"\\(?=[, \\]|\Z)")
_MEASUREMENT_SPECIAL = re.compile(r"([, ])")
_STRING_SPECIAL = re.compile(r'(["\\])')

_UNESCAPE_KEY = re.compile(r"\\([,= \\])")
_UNESCAPE_MEASUREMENT = re.compile(r"\\([, \\])")
_UNESCAPE_STRING = re.compile(r'\\(["\\])')


def _refuse_control(text: str, what: str) -> None:
    if _CONTROL.search(text):
        raise ValueError(f"line protocol cannot hold a control character in a {what}: {text[:40]!r}")


def _refuse_breaks(text: str, what: str) -> None:
    if "\n" in text or "\r" in text:
        raise ValueError(f"line protocol cannot hold a line break in a {what}: {text[:40]!r}")


def escape_tag(text: str) -> str:
    """Escape a tag key or tag value: commas, equals signs and spaces (and needed backslashes)."""
    _refuse_control(text, "tag")
    if "\\" in text:
        text = _KEY_BACKSLASH.sub(r"\\\\", text)
    if "," in text or "=" in text or " " in text:
        text = _KEY_SPECIAL.sub(r"\\\1", text)
    return text


def escape_field_key(text: str) -> str:
    """Escape a field key: the same rules as a tag key."""
    _refuse_control(text, "field key")
    if "\\" in text:
        text = _KEY_BACKSLASH.sub(r"\\\\", text)
    if "," in text or "=" in text or " " in text:
        text = _KEY_SPECIAL.sub(r"\\\1", text)
    return text


def escape_measurement(text: str) -> str:
    """Escape a measurement name: commas and spaces (and needed backslashes); ``=`` stays."""
    _refuse_control(text, "measurement")
    if "\\" in text:
        text = _MEASUREMENT_BACKSLASH.sub(r"\\\\", text)
    if "," in text or " " in text:
        text = _MEASUREMENT_SPECIAL.sub(r"\\\1", text)
    return text


def escape_string_field(text: str) -> str:
    """Escape the content of a string field value: every ``"`` and ``\\``.

    The caller adds the surrounding double quotes: ``f'msg="{escape_string_field(s)}"'``.
    """
    _refuse_breaks(text, "string field")
    if '"' in text or "\\" in text:
        text = _STRING_SPECIAL.sub(r"\\\1", text)
    return text


def unescape_tag(text: str) -> str:
    """Read an escaped tag key or value back (``\\,`` ``\\=`` ``\\ `` ``\\\\``)."""
    return _UNESCAPE_KEY.sub(r"\1", text) if "\\" in text else text


def unescape_field_key(text: str) -> str:
    """Read an escaped field key back: the same rules as a tag key."""
    return _UNESCAPE_KEY.sub(r"\1", text) if "\\" in text else text


def unescape_measurement(text: str) -> str:
    """Read an escaped measurement back (``\\,`` ``\\ `` ``\\\\``; ``\\=`` stays as is)."""
    return _UNESCAPE_MEASUREMENT.sub(r"\1", text) if "\\" in text else text


def unescape_string_field(text: str) -> str:
    """Read the content of a string field value back (without its quotes)."""
    return _UNESCAPE_STRING.sub(r"\1", text) if "\\" in text else text
