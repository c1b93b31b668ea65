"""MQTT topics in specs: subscription filters, source templates and output topics.

Pure (no broker): a spec is checked completely when it is loaded. :class:`TopicFilter` is a
subscription filter, possibly ``$share/GROUP/...``; :class:`TopicTemplate` names topic levels
(``plant/{site}/pump/{twin}/{channel}``: ``{twin}`` and ``{channel}`` give a payload's default
twin id and channel); :class:`OutputTopic` is where a sink publishes (``{twin_type}``,
``{twin_id}``), each level escaped by :func:`escape_level`.

>>> TopicTemplate.parse("plant/{site}/pump/{twin}/{channel}").match("plant/north/pump/p-1/temp")
('p-1', 'temp')
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from dte_stream.readings import id_problem

__all__ = [
    "CONTROL_CHARACTERS",
    "OUTPUT_FIELDS",
    "TEMPLATE_FIELDS",
    "OutputTopic",
    "TopicFilter",
    "TopicTemplate",
    "escape_level",
]

#: Longest topic or filter MQTT can carry (bytes of UTF-8).
_MAX_TOPIC_BYTES = 65535
_PLACEHOLDER = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
#: Characters no topic, id or host may hold.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
_SHARE = "$share/"
#: Placeholders of a source template that feed the decode context; other names are ignored.
TEMPLATE_FIELDS = ("twin", "channel")
#: Placeholders an output topic may use.
OUTPUT_FIELDS = ("twin_type", "twin_id")


def _topic_problem(text: str, what: str) -> str | None:
    """Why ``text`` cannot be an MQTT topic or filter at all (length, NUL, control characters)."""
    if not text:
        return f"{what} is empty"
    if len(text.encode("utf-8", "surrogatepass")) > _MAX_TOPIC_BYTES:
        return f"{what} is longer than {_MAX_TOPIC_BYTES} bytes"
    if CONTROL_CHARACTERS.search(text):
        return f"{what} {text[:60]!r} contains a control character"
    return None


# --------------------------------------------------------------------------------------------
# Topic filters and templates
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TopicFilter:
    """A subscription filter, split into levels; ``group`` is set for ``$share/GROUP/filter``.

    >>> f = TopicFilter.parse("$share/dte/plant/+/pump/#")
    >>> f.group, f.levels, f.matches("plant/north/pump/p-1/temp"), f.matches("plant/north/valve")
    ('dte', ('plant', '+', 'pump', '#'), True, False)
    """

    text: str
    levels: tuple[str, ...]
    group: str | None = None

    @classmethod
    def parse(cls, text: str) -> TopicFilter:
        """Parse and check a filter; raises ``ValueError`` saying what is wrong."""
        problem = _topic_problem(text, "topic filter")
        if problem:
            raise ValueError(problem)
        group = None
        body = text
        if text.startswith(_SHARE):
            group, sep, body = text[len(_SHARE) :].partition("/")
            if not sep or not group or not body:
                raise ValueError(f"{text!r}: a shared subscription is $share/GROUP/FILTER")
            if any(c in group for c in "+#"):
                raise ValueError(f"{text!r}: the share group {group!r} may not contain '+' or '#'")
        elif text.startswith("$share"):
            raise ValueError(f"{text!r}: a shared subscription is $share/GROUP/FILTER")
        levels = tuple(body.split("/"))
        for i, level in enumerate(levels):
            if "#" in level and (level != "#" or i != len(levels) - 1):
                raise ValueError(f"{text!r}: '#' must be a whole level and the last one")
            if "+" in level and level != "+":
                raise ValueError(f"{text!r}: '+' must be a whole level (level {i + 1} is {level!r})")
        return cls(text, levels, group)

    def matches(self, topic: str) -> bool:
        """True when a message published on ``topic`` matches this filter (MQTT rules)."""
        return self.matches_levels(topic.split("/"))

    def matches_levels(self, levels: list[str]) -> bool:
        """:meth:`matches` on a topic already split at ``/``."""
        # A filter starting with a wildcard does not match topics starting with '$' (4.7.2).
        if levels and levels[0].startswith("$") and self.levels[0] in ("+", "#"):
            return False
        for i, want in enumerate(self.levels):
            if want == "#":
                return True
            if i >= len(levels):
                return False
            if want != "+" and want != levels[i]:
                return False
        return len(levels) == len(self.levels)

    def overlaps(self, other: TopicFilter) -> bool:
        """True when some topic matches both filters (share groups aside)."""
        a, b = self.levels, other.levels
        for i in range(max(len(a), len(b))):
            x = a[i] if i < len(a) else None
            y = b[i] if i < len(b) else None
            if x == "#" or y == "#":
                return True
            if x is None or y is None:
                return False
            if "+" not in (x, y) and x != y:
                return False
        return True


@dataclass(frozen=True, slots=True)
class TopicTemplate:
    """Names for the levels of a topic: ``plant/{site}/pump/{twin}/{channel}``.

    A level is a literal (it must be equal), ``{name}`` (any non-empty level, remembered under
    that name) or ``+`` (any non-empty level, ignored). A topic matches only with exactly as
    many levels as the template. ``{twin}`` and ``{channel}`` are the default twin id and
    channel of the message's readings; other names document the topic and are ignored.

    >>> t = TopicTemplate.parse("plant/{site}/pump/{twin}/{channel}")
    >>> t.match("plant/north/pump/p 1,a=b/temp"), t.match("plant/north/valve/v-1/temp")
    (('p 1,a=b', 'temp'), "level 3 is 'valve', the template wants 'pump'")
    """

    text: str
    #: Each level: the literal text, or None for a placeholder.
    literals: tuple[str | None, ...]
    #: Each level: the placeholder's name, or None (literal or '+').
    names: tuple[str | None, ...]
    twin_level: int | None
    channel_level: int | None

    @classmethod
    def parse(cls, text: str) -> TopicTemplate:
        """Parse and check a template; raises ``ValueError`` saying what is wrong."""
        problem = _topic_problem(text, "template")
        if problem:
            raise ValueError(problem)
        if text.startswith("$share"):
            raise ValueError(f"template {text!r}: describe the topic without the $share/GROUP/ prefix")
        literals: list[str | None] = []
        names: list[str | None] = []
        for i, level in enumerate(text.split("/")):
            m = _PLACEHOLDER.match(level)
            if m:
                name = m.group(1)
                if name in names:
                    raise ValueError(f"template {text!r}: placeholder {{{name}}} is used twice")
                literals.append(None)
                names.append(name)
            elif level == "+":
                literals.append(None)
                names.append(None)
            elif "#" in level:
                raise ValueError(
                    f"template {text!r}: '#' is not allowed; a template names every level "
                    "(use '+' for a level to ignore)"
                )
            elif any(c in level for c in "{}+"):
                raise ValueError(
                    f"template {text!r}: level {i + 1} {level!r} must be a literal, '+' or a whole "
                    "{name} placeholder (letters, digits and '_')"
                )
            elif not level:
                raise ValueError(f"template {text!r}: level {i + 1} is empty")
            else:
                literals.append(level)
                names.append(None)
        twin = names.index("twin") if "twin" in names else None
        channel = names.index("channel") if "channel" in names else None
        return cls(text, tuple(literals), tuple(names), twin, channel)

    def check_against(self, topic_filter: TopicFilter) -> None:
        """Raise ``ValueError`` when no topic the filter delivers could match this template."""
        levels = topic_filter.levels
        has_hash = levels[-1] == "#"
        fixed = levels[:-1] if has_hash else levels
        n = len(self.literals)
        if not has_hash and n != len(fixed):
            raise ValueError(
                f"template {self.text!r} has {n} levels but filter {topic_filter.text!r} "
                f"delivers topics of {len(fixed)}"
            )
        if has_hash and n < len(fixed):
            raise ValueError(
                f"template {self.text!r} has {n} levels but filter {topic_filter.text!r} "
                f"delivers topics of at least {len(fixed)}"
            )
        for i, want in enumerate(fixed):
            literal = self.literals[i]
            if want != "+" and literal is not None and literal != want:
                raise ValueError(
                    f"template {self.text!r}: level {i + 1} is {literal!r} but filter "
                    f"{topic_filter.text!r} has {want!r} there, so no topic could match"
                )

    def match(self, topic: str) -> tuple[str | None, str | None] | str:
        """``(twin, channel)`` from a topic, or the reason it does not fit (a string)."""
        return self.match_levels(topic.split("/"))

    def match_levels(self, levels: list[str]) -> tuple[str | None, str | None] | str:
        """:meth:`match` on a topic already split at ``/``."""
        if len(levels) != len(self.literals):
            return f"the topic has {len(levels)} levels, the template {self.text!r} has {len(self.literals)}"
        for i, (level, literal) in enumerate(zip(levels, self.literals, strict=True)):
            if not level:
                return f"level {i + 1} is empty"
            if literal is not None and level != literal:
                return f"level {i + 1} is {level[:60]!r}, the template wants {literal!r}"
        twin = channel = None
        if self.twin_level is not None:
            twin = levels[self.twin_level]
            problem = id_problem("twin id", twin)
            if problem:
                return f"level {self.twin_level + 1} {{twin}}: {problem}"
        if self.channel_level is not None:
            channel = levels[self.channel_level]
            problem = id_problem("channel", channel)
            if problem:
                return f"level {self.channel_level + 1} {{channel}}: {problem}"
        return twin, channel

    def render(self, values: Mapping[str, str]) -> str:
        """A topic for ``values`` (placeholder name -> level); the inverse of matching, for tests."""
        out = []
        for literal, name in zip(self.literals, self.names, strict=True):
            out.append(literal if literal is not None else values[name or "+"])
        return "/".join(out)


#: Characters of an id that cannot appear in a published topic level, and their escapes.
_OUTPUT_ESCAPES = {"%": "%25", "/": "%2F", "+": "%2B", "#": "%23"}
_OUTPUT_UNSAFE = re.compile(r"[%/+#\x00-\x1f\x7f]")


def escape_level(text: str) -> str:
    """An id made safe as (part of) one topic level: ``% / + #`` and controls percent-encoded.

    Reversible with ``urllib.parse.unquote``. Ids are otherwise kept as they are (spaces,
    commas, quotes, unicode are legal in MQTT topics).

    >>> escape_level("pump/1+#2"), escape_level("Kühlung 3")
    ('pump%2F1%2B%232', 'Kühlung 3')
    """
    if not _OUTPUT_UNSAFE.search(text):
        return text
    return _OUTPUT_UNSAFE.sub(lambda m: _OUTPUT_ESCAPES.get(m.group(0), f"%{ord(m.group(0)):02X}"), text)


@dataclass(frozen=True, slots=True)
class OutputTopic:
    """The topic template of a sink: ``dte/{twin_type}/{twin_id}/estimates``.

    Placeholders may stand anywhere in a level; their values are escaped with
    :func:`escape_level`, so an id can never add a level or a wildcard. A topic whose first
    character would be ``$`` (reserved for the broker) gets it escaped as ``%24``.

    >>> OutputTopic.parse("dte/{twin_type}/{twin_id}/estimates").render("pump", "p/1")
    'dte/pump/p%2F1/estimates'
    """

    text: str
    parts: tuple[str, ...]

    @classmethod
    def parse(cls, text: str, allowed: tuple[str, ...] = OUTPUT_FIELDS) -> OutputTopic:
        """Parse and check an output topic template; raises ``ValueError`` naming the problem."""
        problem = _topic_problem(text, "topic")
        if problem:
            raise ValueError(problem)
        parts = re.split(r"(\{[^{}]*\})", text)
        for i, part in enumerate(parts):
            if i % 2:
                name = part[1:-1]
                if name not in allowed:
                    shown = ", ".join("{" + a + "}" for a in allowed) or "none"
                    raise ValueError(f"topic {text!r}: unknown placeholder {part}; allowed: {shown}")
            elif "{" in part or "}" in part:
                raise ValueError(f"topic {text!r}: unbalanced '{{' or '}}'")
        sample = "".join(p if i % 2 == 0 else "x" for i, p in enumerate(parts))
        if "+" in sample or "#" in sample:
            raise ValueError(f"topic {text!r}: a published topic may not contain '+' or '#'")
        if any(not level for level in sample.split("/")):
            raise ValueError(f"topic {text!r}: has an empty level (leading, trailing or double '/')")
        if sample.startswith("$"):
            raise ValueError(f"topic {text!r}: topics starting with '$' are reserved for the broker")
        return cls(text, tuple(parts))

    def render(self, twin_type: str = "", twin_id: str = "") -> str:
        """The topic for one twin; ids are escaped."""
        values = {"twin_type": twin_type, "twin_id": twin_id}
        topic = "".join(p if i % 2 == 0 else escape_level(values[p[1:-1]]) for i, p in enumerate(self.parts))
        return "%24" + topic[1:] if topic.startswith("$") else topic


# --------------------------------------------------------------------------------------------
# Field types
# --------------------------------------------------------------------------------------------
