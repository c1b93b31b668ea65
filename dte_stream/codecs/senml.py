"""The ``senml`` codec: RFC 8428 Sensor Measurement Lists in JSON, numeric records only.

A pack is a JSON array of records. Base fields (``bn``, ``bt``, ``bu``, ``bv``, ``bver``) apply
to their record and carry forward to the following ones until another record sets them. The
resolved name ``bn + n`` is split into twin id and channel (see :class:`SenMLCodec`); the
resolved time ``bt + t`` is computed in integer nanoseconds (each part converted on its own,
so an integer ``bt`` and a small fractional ``t`` keep full precision), and a result below
2**28 s is relative to ``context.received_ns`` as RFC 8428 says.

A record-level dead letter carries the record re-serialised by orjson; a payload-level one (not
JSON, not an array, an unsupported ``bver``, a malformed base field) carries the whole payload.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

from dte_stream.codecs._common import (
    CodecBase,
    EncodeError,
    ReadingColumns,
    check_encodable,
    describe,
    seconds_to_ns,
)
from dte_stream.codecs.base import DecodeContext
from dte_stream.readings import ReadingBatch
from dte_stream.times import NS_PER_S

__all__ = ["SENML_RELATIVE_LIMIT_NS", "SENML_SUPPORTED_VERSION", "SenMLCodec"]

#: Highest SenML version (``bver``) understood; RFC 8428 is version 10.
SENML_SUPPORTED_VERSION = 10
#: Resolved times below 2**28 seconds are relative to "now" (RFC 8428 section 4.5.3).
SENML_RELATIVE_LIMIT_NS = 2**28 * NS_PER_S
#: The encoder writes a new ``bt`` when a record is this far from the current one, which keeps
#: every relative ``t`` exact to the nanosecond as a float.
_MAX_RELATIVE_NS = 2**46

_SEPARATORS = (":", "/", ".")
_OTHER_VALUES = {"vs": "string value (vs)", "vb": "boolean value (vb)", "vd": "data value (vd)"}


def _strip_separator(base_name: str) -> str:
    """The twin id of a base name: ``bn`` without one trailing ':' '/' or '.'."""
    return base_name[:-1] if base_name.endswith(_SEPARATORS) else base_name


def _record_bytes(record: object, payload: bytes) -> bytes:
    try:
        return orjson.dumps(record)
    except (TypeError, ValueError):  # pragma: no cover - anything orjson parsed, it can dump
        return payload


def _version_problem(pack: list[Any]) -> str | None:
    """Why the pack's ``bver`` forbids reading it, or None."""
    for index, record in enumerate(pack):
        if isinstance(record, dict) and "bver" in record:
            version = record["bver"]
            if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                return f"record {index}: bver {describe(version)} is not a positive integer"
            if version > SENML_SUPPORTED_VERSION:
                return (
                    f"record {index}: SenML version (bver) {version} is not supported "
                    f"(at most {SENML_SUPPORTED_VERSION}); pack not read"
                )
    return None


class _Base:
    """The base fields in force while walking a pack."""

    __slots__ = ("name", "time_ns", "unit", "value")

    def __init__(self) -> None:
        self.name = ""
        self.time_ns = 0
        self.unit = ""
        self.value: int | float | None = None

    def update(self, record: dict[str, Any]) -> str | None:
        """Apply the record's base fields; return why one is malformed, or None."""
        if "bn" in record:
            name = record["bn"]
            if not isinstance(name, str):
                return f"bn {describe(name)} is not a string"
            self.name = name
        if "bt" in record:
            base_time = record["bt"]
            if isinstance(base_time, bool) or not isinstance(base_time, int | float):
                return f"bt {describe(base_time)} is not a number"
            try:
                self.time_ns = seconds_to_ns(base_time)
            except ValueError as exc:
                return f"bt: {exc}"
        if "bu" in record:
            unit = record["bu"]
            if not isinstance(unit, str):
                return f"bu {describe(unit)} is not a string"
            self.unit = unit
        if "bv" in record:
            value = record["bv"]
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"bv {describe(value)} is not a number"
            self.value = value
        return None


class SenMLCodec(CodecBase):
    """SenML (RFC 8428) JSON packs of numeric records.

    Twin id and channel from the resolved name: when a base name ``bn`` is in force, the twin
    id is ``bn`` without one trailing ':' '/' or '.', and the channel is ``n`` (or the
    context's channel when ``n`` is absent). Without ``bn``, the name ``n`` is split at its
    last ':' or '/'; a name with neither is the channel, and the twin id comes from the context.
    Names are not limited to RFC 8428's character set: any valid dte-stream id is accepted.

    >>> from dte_stream.codecs.base import DecodeContext
    >>> pack = b'[{"bn": "pump-1:", "bt": 1767323045, "bu": "Cel", "n": "temp", "v": 21.5},'
    >>> pack += b' {"n": "temp", "t": 10, "v": 21.7}]'
    >>> result = SenMLCodec().decode(pack, DecodeContext("doc"))
    >>> for r in result.readings:
    ...     print(r.twin_id, r.channel, r.time_ns, r.value, r.unit)
    pump-1 temp 1767323045000000000 21.5 Cel
    pump-1 temp 1767323055000000000 21.7 Cel
    >>> print(SenMLCodec().encode(result.readings).decode().replace("},{", "},\\n{"))
    [{"bn":"pump-1:","bt":1767323045,"n":"temp","u":"Cel","v":21.5},
    {"n":"temp","u":"Cel","t":10.0,"v":21.7}]
    """

    name: ClassVar[str] = "senml"
    min_encodable_time_ns: ClassVar[int] = SENML_RELATIVE_LIMIT_NS

    def _decode_into(self, payload: bytes, context: DecodeContext, out: ReadingColumns) -> None:
        try:
            pack = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            out.reject(f"invalid JSON: {exc}", payload)
            return
        if not isinstance(pack, list):
            out.reject(f"a SenML pack must be a JSON array of records, got {describe(pack)}", payload)
            return
        version_problem = _version_problem(pack)
        if version_problem is not None:
            out.reject(version_problem, payload)
            return
        base = _Base()
        for index, record in enumerate(pack):
            if not isinstance(record, dict):
                out.reject(
                    f"record {index}: expected a SenML record object, got {describe(record)}",
                    _record_bytes(record, payload),
                )
                continue
            base_problem = base.update(record)
            if base_problem is not None:
                out.reject(
                    f"record {index}: {base_problem}; records {index}..{len(pack) - 1} "
                    "not read because their base fields cannot be resolved",
                    payload,
                )
                return
            problem = self._record(record, base, context, out)
            if problem is not None:
                out.reject(f"record {index}: {problem}", _record_bytes(record, payload))

    @staticmethod
    def _record(
        record: dict[str, Any], base: _Base, context: DecodeContext, out: ReadingColumns
    ) -> str | None:
        """Add the record's reading; return why it cannot be one, or None."""
        for key in record:
            if key.endswith("_"):
                return f"field {describe(key)} must be understood and is not supported"
        value = record.get("v")
        others = [label for key, label in _OTHER_VALUES.items() if key in record]
        if value is None:
            if others:
                return f"{others[0]} is not supported; only numeric values (v) become readings"
            if "s" in record:
                return "sum (s) is not supported; only numeric values (v) become readings"
            return "no value (v)"
        if others:
            return f"more than one value field (v and {others[0]})"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"v {describe(value)} is not a number"
        if base.value is not None:
            value = base.value + value

        name = record.get("n", "")
        if not isinstance(name, str):
            return f"n {describe(name)} is not a string"
        twin: str | None
        channel: str | None
        if base.name:
            twin = _strip_separator(base.name)
            channel = name or context.channel
            if channel is None:
                return f"name {describe(base.name)} has no channel: give n, or a channel in the context"
        elif not name:
            return "no name: neither n nor a base name bn"
        else:
            cut = max(name.rfind(":"), name.rfind("/"))
            if cut >= 0:
                twin, channel = name[:cut], name[cut + 1 :]
            else:
                twin, channel = context.twin_id, name
                if twin is None:
                    return (
                        f"name {describe(name)} has no twin id part (before ':' or '/') "
                        "and the context gives none"
                    )

        time_ns = base.time_ns
        if "t" in record:
            time = record["t"]
            if isinstance(time, bool) or not isinstance(time, int | float):
                return f"t {describe(time)} is not a number"
            try:
                time_ns += seconds_to_ns(time)
            except ValueError as exc:
                return f"t: {exc}"
        if time_ns < SENML_RELATIVE_LIMIT_NS:
            time_ns += context.received_ns

        unit = record.get("u", base.unit)
        if not isinstance(unit, str):
            return f"u {describe(unit)} is not a string"
        return out.add(twin, channel, time_ns, value, unit)

    def encode(self, readings: ReadingBatch) -> bytes:
        """One pack; records grouped by twin (first-seen order, each twin's readings in order).

        The first record of each twin sets ``bn`` to the twin id plus ':'; ``bt`` is a whole
        number of seconds, written on the first record and again whenever a reading is more than
        about 19 hours away from it; ``t`` is then relative and exact to the nanosecond.
        Times before 2**28 s (1978-07-05) cannot be written: RFC 8428 reads them as relative.
        """
        check_encodable(readings, self.name)
        if len(readings) and int(readings.time_ns.min()) < SENML_RELATIVE_LIMIT_NS:
            raise EncodeError(
                "senml: cannot encode a time before 2**28 s (1978-07-05): "
                "RFC 8428 reads such times as relative to now"
            )
        twins = readings.twin_id.tolist()
        channels = readings.channel.tolist()
        times = readings.time_ns.tolist()
        values = readings.value.tolist()
        units = readings.unit.tolist()
        groups: dict[str, list[int]] = {}
        for index, twin in enumerate(twins):
            groups.setdefault(twin, []).append(index)
        records: list[dict[str, object]] = []
        base_ns: int | None = None
        for twin, indexes in groups.items():
            first = True
            for i in indexes:
                record: dict[str, object] = {}
                if first:
                    record["bn"] = twin + ":"
                    first = False
                time_ns = times[i]
                if base_ns is None or abs(time_ns - base_ns) >= _MAX_RELATIVE_NS:
                    base_s = time_ns // NS_PER_S
                    record["bt"] = base_s
                    base_ns = base_s * NS_PER_S
                record["n"] = channels[i]
                if units[i]:
                    record["u"] = units[i]
                delta = time_ns - base_ns
                if delta:
                    record["t"] = delta / NS_PER_S
                record["v"] = values[i]
                records.append(record)
        return orjson.dumps(records)
