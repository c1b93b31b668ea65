"""Topic filters, source templates and output topics, with property-based checks of the matchers."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from dte_stream.readings import id_problem
from dte_stream.spec.mqtt import OutputTopic, TopicFilter, TopicTemplate, escape_level

# Levels as sensors publish them: anything printable but '/', '+', '#' (which MQTT forbids in
# published topics), including spaces, commas, equals signs, quotes and unicode.
LEVEL_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/+#"),
    min_size=1,
    max_size=40,
)
VALID_ID = LEVEL_TEXT.filter(lambda s: id_problem("twin id", s) is None)
SMALL_LEVEL = st.sampled_from(["a", "b", "c", ""])
SMALL_TOPIC = st.lists(SMALL_LEVEL, min_size=1, max_size=5).map("/".join).filter(bool)
FILTER_LEVEL = st.sampled_from(["a", "b", "c", "", "+"])


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(FILTER_LEVEL, min_size=1, max_size=5))
    if draw(st.booleans()):
        levels.append("#")
    text = "/".join(levels)
    assume(text)
    return text


@st.composite
def templates_with_values(draw: st.DrawFn) -> tuple[str, dict[str, str], list[str]]:
    """A template of literals, '+', {twin}, {channel} and other names, and values for a topic."""
    n = draw(st.integers(1, 6))
    kinds = draw(st.lists(st.sampled_from(["literal", "plus", "named"]), min_size=n, max_size=n))
    placeholders = iter(["twin", "channel", "site", "area", "unit_no", "x"])
    levels: list[str] = []
    topic: list[str] = []
    values: dict[str, str] = {}
    for kind in kinds:
        if kind == "literal":
            # (a template may not start with $share: that prefix belongs to the filter)
            literal = draw(
                LEVEL_TEXT.filter(
                    lambda s: "{" not in s and "}" not in s and not (not levels and s.startswith("$share"))
                )
            )
            levels.append(literal)
            topic.append(literal)
        elif kind == "plus":
            levels.append("+")
            topic.append(draw(LEVEL_TEXT))
        else:
            name = next(placeholders)
            value = draw(VALID_ID if name in ("twin", "channel") else LEVEL_TEXT)
            levels.append("{" + name + "}")
            values[name] = value
            topic.append(value)
    return "/".join(levels), values, topic


@settings(max_examples=300, deadline=None)  # a loaded machine is slow, not wrong
@given(templates_with_values())
def test_template_matching_recovers_twin_and_channel_exactly(
    case: tuple[str, dict[str, str], list[str]],
) -> None:
    text, values, levels = case
    template = TopicTemplate.parse(text)
    topic = "/".join(levels)
    assert template.match(topic) == (values.get("twin"), values.get("channel"))
    # one level more or one less never matches
    assert isinstance(template.match(topic + "/extra"), str)
    if len(levels) > 1:
        assert isinstance(template.match("/".join(levels[:-1])), str)


@settings(max_examples=200, deadline=None)  # a loaded machine is slow, not wrong
@given(templates_with_values(), st.data())
def test_a_changed_literal_level_does_not_match(
    case: tuple[str, dict[str, str], list[str]], data: st.DataObject
) -> None:
    text, _, levels = case
    template = TopicTemplate.parse(text)
    literal_levels = [i for i, literal in enumerate(template.literals) if literal is not None]
    assume(literal_levels)
    index = data.draw(st.sampled_from(literal_levels))
    other = data.draw(LEVEL_TEXT.filter(lambda s: s != levels[index]))
    changed = [*levels]
    changed[index] = other
    reason = template.match("/".join(changed))
    assert isinstance(reason, str)
    assert f"level {index + 1}" in reason


@pytest.mark.parametrize(
    "twin",
    ["pump 1", "pump,1", "pump=1", 'pump"1"', "pump'1'", "Pumpe-Ä-ß-水", "p\\1", "a b,c=d\"e'f", "🚰"],
)
def test_hostile_but_legitimate_levels_are_kept_verbatim(twin: str) -> None:
    template = TopicTemplate.parse("plant/{site}/pump/{twin}/{channel}")
    assert template.match(f"plant/north/pump/{twin}/temp, °C") == (twin, "temp, °C")


@pytest.mark.parametrize(
    ("topic", "words"),
    [
        ("plant/north/pump//temp", "level 4 is empty"),
        ("plant//pump/p1/temp", "level 2 is empty"),
        ("plant/north/pump/p1/temp/x", "the topic has 6 levels"),
        ("plant/north/pump/p1", "the topic has 4 levels"),
        ("plant/north/valve/p1/temp", "level 3 is 'valve', the template wants 'pump'"),
        ("plant/north/pump/ p1/temp", "level 4 {twin}: twin id ' p1' has leading or trailing whitespace"),
        ("plant/north/pump/p1/te\tmp", "level 5 {channel}: channel 'te\\tmp' contains a control character"),
        ("plant/north/pump/" + "x" * 300 + "/temp", "longer than 256"),
    ],
)
def test_topics_that_do_not_fit_say_why(topic: str, words: str) -> None:
    reason = TopicTemplate.parse("plant/{site}/pump/{twin}/{channel}").match(topic)
    assert isinstance(reason, str)
    assert words in reason


@settings(max_examples=500, deadline=None)  # a loaded machine is slow, not wrong
@given(filters(), SMALL_TOPIC)
def test_filter_matching_agrees_with_paho(text: str, topic: str) -> None:
    topic_filter = TopicFilter.parse(text)
    assert topic_filter.matches(topic) == topic_matches_sub(text, topic)
    shared = TopicFilter.parse("$share/group/" + text)
    assert shared.group == "group"
    assert shared.matches(topic) == topic_matches_sub(text, topic)


def test_wildcards_do_not_match_dollar_topics() -> None:
    assert not TopicFilter.parse("#").matches("$SYS/broker/uptime")
    assert not TopicFilter.parse("+/broker/uptime").matches("$SYS/broker/uptime")
    assert TopicFilter.parse("$SYS/#").matches("$SYS/broker/uptime")
    assert TopicFilter.parse("a/#").matches("a")


def _witness(a: tuple[str, ...], b: tuple[str, ...]) -> str | None:
    """A topic matching both filters, built level by level, or None if there is none."""

    def concrete(levels: tuple[str, ...]) -> list[str]:
        out = []
        for level in levels:
            if level == "#":
                break
            out.append("w" if level == "+" else level)
        return out

    out: list[str] = []
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else None
        y = b[i] if i < len(b) else None
        if x == "#":
            return "/".join(out + concrete(b[i:]))
        if y == "#":
            return "/".join(out + concrete(a[i:]))
        if x is None or y is None:
            return None
        if x == "+" or y == "+":
            out.append(y if x == "+" and y != "+" else x if x != "+" else "w")
        elif x == y:
            out.append(x)
        else:
            return None
    return "/".join(out)


@settings(max_examples=500, deadline=None)  # a loaded machine is slow, not wrong
@given(filters(), filters(), SMALL_TOPIC)
def test_overlap_is_exact(a_text: str, b_text: str, topic: str) -> None:
    a, b = TopicFilter.parse(a_text), TopicFilter.parse(b_text)
    if a.matches(topic) and b.matches(topic):
        assert a.overlaps(b)
        assert b.overlaps(a)
    if a.overlaps(b):
        witness = _witness(a.levels, b.levels)
        assert witness is not None
        assert a.matches(witness), (a_text, b_text, witness)
        assert b.matches(witness), (a_text, b_text, witness)


@settings(max_examples=300, deadline=None)  # a loaded machine is slow, not wrong
@given(st.text(min_size=1, max_size=60))
def test_escaped_levels_are_safe_and_reversible(text: str) -> None:
    escaped = escape_level(text)
    assert not any(c in escaped for c in "/+#\x00")
    assert all(ord(c) >= 0x20 and c != "\x7f" for c in escaped)
    assert unquote(escaped, errors="surrogatepass") == text


@settings(max_examples=200, deadline=None)  # a loaded machine is slow, not wrong
@given(VALID_ID | st.sampled_from(["p/1", "p+1", "p#1", "100%", "$p", "a\x00b"]), VALID_ID)
def test_output_topics_keep_their_shape(twin_id: str, twin_type: str) -> None:
    topic = OutputTopic.parse("dte/{twin_type}/{twin_id}/estimates").render(twin_type, twin_id)
    levels = topic.split("/")
    assert len(levels) == 4
    assert [levels[0], levels[3]] == ["dte", "estimates"]
    assert unquote(levels[2]) == twin_id
    assert "+" not in topic
    assert "#" not in topic
    first = OutputTopic.parse("{twin_id}/state").render("pump", twin_id)
    assert not first.startswith("$")
    assert unquote(first.split("/")[0]) == twin_id


def test_output_topic_examples() -> None:
    topic = OutputTopic.parse("dte/{twin_type}/{twin_id}/estimates")
    assert topic.render("pump", 'pump 7, Halle=3 "Süd"') == 'dte/pump/pump 7, Halle=3 "Süd"/estimates'
    assert topic.render("pump", "a/b+c#d%e") == "dte/pump/a%2Fb%2Bc%23d%25e/estimates"
    assert OutputTopic.parse("{twin_id}").render("t", "$SYS") == "%24SYS"
    assert OutputTopic.parse("out/twin-{twin_id}/v1").render("t", "7") == "out/twin-7/v1"
