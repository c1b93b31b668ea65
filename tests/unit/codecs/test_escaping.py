"""Line-protocol escaping on hostile strings: exact round trips and no structure leaks."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dte_stream.codecs.escaping import (
    escape_field_key,
    escape_measurement,
    escape_string_field,
    escape_tag,
    unescape_field_key,
    unescape_measurement,
    unescape_string_field,
    unescape_tag,
)

# What one element may look like on the wire: a backslash always pairs with the next character.
KEY_TOKEN = re.compile(r"(?:[^,= \\]|\\.)+", re.DOTALL)
MEASUREMENT_TOKEN = re.compile(r"(?:[^, \\]|\\.)+", re.DOTALL)
STRING_CONTENT = re.compile(r'(?:[^"\\]|\\.)*', re.DOTALL)
CONTROL = re.compile(r"[\x00-\x1f\x7f]")

PAIRS: list[tuple[Callable[[str], str], Callable[[str], str], re.Pattern[str]]] = [
    (escape_tag, unescape_tag, KEY_TOKEN),
    (escape_field_key, unescape_field_key, KEY_TOKEN),
    (escape_measurement, unescape_measurement, MEASUREMENT_TOKEN),
    (escape_string_field, unescape_string_field, STRING_CONTENT),
]

hostile = st.text(
    alphabet=st.sampled_from(list(" ,=\"\\'#é中🚀\u2028\x85\t{}a"))
    | st.characters(exclude_characters="\n\r"),
    min_size=1,
    max_size=40,
)


@pytest.mark.parametrize(
    ("text", "tag", "measurement", "string"),
    [
        ("plain", "plain", "plain", "plain"),
        ("a b", "a\\ b", "a\\ b", "a b"),
        ("a,b", "a\\,b", "a\\,b", "a,b"),
        ("a=b", "a\\=b", "a=b", "a=b"),
        ('say "hi"', 'say\\ "hi"', 'say\\ "hi"', 'say \\"hi\\"'),
        ("C:\\temp", "C:\\temp", "C:\\temp", "C:\\\\temp"),
        ("trailing\\", "trailing\\\\", "trailing\\\\", "trailing\\\\"),
        ("a\\,b", "a\\\\\\,b", "a\\\\\\,b", "a\\\\,b"),
        ("a\\=b", "a\\\\\\=b", "a\\=b", "a\\\\=b"),
        ("\\\\", "\\\\\\\\", "\\\\\\\\", "\\\\\\\\"),
        ("é 中🚀", "é\\ 中🚀", "é\\ 中🚀", "é 中🚀"),
    ],
)
def test_known_escapes(text: str, tag: str, measurement: str, string: str) -> None:
    assert escape_tag(text) == tag
    assert escape_field_key(text) == tag
    assert escape_measurement(text) == measurement
    assert escape_string_field(text) == string


@pytest.mark.parametrize(
    ("wire", "read"),
    [("\\", "\\"), ("\\\\", "\\"), ("\\\\\\", "\\\\"), ("\\\\\\\\", "\\\\"), ("a\\b", "a\\b"), ("\\=", "=")],
)
def test_unescape_follows_the_influxdb_backslash_table(wire: str, read: str) -> None:
    assert unescape_tag(wire) == read


@pytest.mark.parametrize(("escape", "unescape", "token"), PAIRS)
@settings(max_examples=300, deadline=None)
@given(text=hostile)
def test_hostile_strings_round_trip_and_stay_one_token(
    escape: Callable[[str], str], unescape: Callable[[str], str], token: re.Pattern[str], text: str
) -> None:
    if escape is not escape_string_field and CONTROL.search(text):
        with pytest.raises(ValueError, match="control character"):
            escape(text)
        return
    escaped = escape(text)
    assert unescape(escaped) == text
    assert token.fullmatch(escaped), escaped


@pytest.mark.parametrize("escape", [escape_tag, escape_field_key, escape_measurement])
@pytest.mark.parametrize("text", ["a\nb", "a\rb", "\n", "a\tb", "nul\x00", "del\x7f", "\x1f"])
def test_control_characters_are_refused_in_names_and_tags(escape: Callable[[str], str], text: str) -> None:
    with pytest.raises(ValueError, match="control character"):
        escape(text)


@pytest.mark.parametrize("text", ["a\nb", "a\rb", "\n"])
def test_line_breaks_are_refused_in_string_fields(text: str) -> None:
    with pytest.raises(ValueError, match="line break"):
        escape_string_field(text)


def test_tabs_are_kept_in_string_fields() -> None:
    assert escape_string_field("a\tb") == "a\tb"
