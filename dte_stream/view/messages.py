"""The twin view as Kafka records: what the view topic holds, encoded and checked.

A compacted topic keeps the latest record of each key, so the topic is the view:

=================================== =============================================================
key                                 value (JSON)
=================================== =============================================================
the twin id (UTF-8)                 the twin's view record (:mod:`dte_stream.view.records`, with
                                    ``updated_ns`` and ``written_by``); none (a tombstone) when
                                    the twin was evicted
``\\x00alert\\x00`` + alert id        the alert's latest row (:func:`~dte_stream.view.records.alert_row`);
                                    none (a tombstone) once it is resolved (a while after) or
                                    its twin was evicted
``\\x00type\\x00`` + twin type name   the twin type's spec (what-if rebuilds the models from it)
=================================== =============================================================

Twin ids never hold control characters (:func:`dte_stream.readings.id_problem`), so the NUL
prefix cannot clash with a twin. :func:`decode` checks every record a reader gets: a record that
is not one of these raises :class:`ViewRecordError` naming what is wrong, and the reader counts
it and goes on.

>>> key, value = encode_twin({"twin_id": "p-1", "twin_type": "pump", "labels": {},
...     "last_seen_ns": 5, "updated_ns": 9, "alert_state": "ok", "anomaly_score": None,
...     "channels": {}, "models": [], "alerts": [], "seq": 3})
>>> key, b'"seq"' in value
(b'p-1', False)
>>> message = decode(key, value)
>>> message.kind, message.key, message.value["updated_ns"]
('twin', 'p-1', 9)
>>> decode(b"p-1", None).value is None
True
>>> decode(b"p-1", b"[1]")
Traceback (most recent call last):
...
dte_stream.view.messages.ViewRecordError: the value is not a JSON object [twin 'p-1']
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import ValidationError

from dte_stream.errors import DteStreamError
from dte_stream.readings import id_problem
from dte_stream.spec.twins import TwinTypeSpec

__all__ = [
    "ALERT_PREFIX",
    "MAX_VALUE_BYTES",
    "TYPE_PREFIX",
    "ViewMessage",
    "ViewRecordError",
    "alert_tombstone",
    "decode",
    "encode_alert",
    "encode_twin",
    "encode_type",
    "tombstone",
]

ALERT_PREFIX = b"\x00alert\x00"
TYPE_PREFIX = b"\x00type\x00"
#: Larger values are refused by readers (a twin record with a 20-state model is about 10 kB).
MAX_VALUE_BYTES = 4 * 2**20

Kind = Literal["twin", "alert", "type"]
_ALERT_STATES = frozenset({"firing", "pending", "ok"})
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class ViewRecordError(DteStreamError):
    """A record on the view topic that is not a view record; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class ViewMessage:
    """One decoded record: its kind, its key (twin id, alert id or type name) and its value
    (None: a tombstone, the key is gone)."""

    kind: Kind
    key: str
    value: dict[str, Any] | None


def encode_twin(record: dict[str, Any]) -> tuple[bytes, bytes]:
    """``(key, value)`` of a twin record; its ``seq`` (a reader's own counter) is left out."""
    body = {k: v for k, v in record.items() if k != "seq"}
    return str(record["twin_id"]).encode(), orjson.dumps(body, option=_OPTIONS)


def tombstone(twin_id: str) -> tuple[bytes, None]:
    """The record that removes a twin from the view (compaction drops it and, later, itself)."""
    return twin_id.encode(), None


def alert_tombstone(alert_id: str) -> tuple[bytes, None]:
    """The record that removes an alert from the view (resolved, or its twin evicted)."""
    return ALERT_PREFIX + alert_id.encode(), None


def encode_alert(row: dict[str, Any]) -> tuple[bytes, bytes]:
    """``(key, value)`` of an alert row (without ``seq``)."""
    body = {k: v for k, v in row.items() if k != "seq"}
    return ALERT_PREFIX + str(row["alert_id"]).encode(), orjson.dumps(body, option=_OPTIONS)


def encode_type(spec: dict[str, Any]) -> tuple[bytes, bytes]:
    """``(key, value)`` of a twin type's spec (JSON mode dump of a TwinTypeSpec)."""
    return TYPE_PREFIX + str(spec["name"]).encode(), orjson.dumps(spec, option=_OPTIONS)


def decode(key: bytes | None, value: bytes | None) -> ViewMessage:
    """The view message of a Kafka record, or :class:`ViewRecordError` saying what is wrong."""
    if key is None:
        raise ViewRecordError("a record without a key (view records are keyed by twin id)")
    kind: Kind = "twin"
    raw = key
    for prefix, prefixed_kind in ((ALERT_PREFIX, "alert"), (TYPE_PREFIX, "type")):
        if key.startswith(prefix):
            kind, raw = prefixed_kind, key[len(prefix) :]  # type: ignore[assignment]
    try:
        name = raw.decode()
    except UnicodeDecodeError:
        raise ViewRecordError(f"the key {key[:40]!r} is not UTF-8") from None
    problem = id_problem("twin id" if kind == "twin" else f"{kind} key", name)
    if problem:
        raise ViewRecordError(f"bad key: {problem}")
    what = f"{kind} {name!r}"
    if value is None:
        if kind == "type":
            raise ViewRecordError(f"a tombstone, but only twins and alerts are removed [{what}]")
        return ViewMessage(kind, name, None)
    if len(value) > MAX_VALUE_BYTES:
        raise ViewRecordError(f"the value is {len(value)} bytes, over {MAX_VALUE_BYTES} [{what}]")
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ViewRecordError(f"the value is not JSON ({exc}) [{what}]") from None
    if not isinstance(body, dict):
        raise ViewRecordError(f"the value is not a JSON object [{what}]")
    check = _check_twin if kind == "twin" else _check_alert if kind == "alert" else _check_type
    check(name, body, what)
    return ViewMessage(kind, name, body)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    return (isinstance(x, int | float) and not isinstance(x, bool)) and math.isfinite(x)


def _check_twin(twin_id: str, body: dict[str, Any], what: str) -> None:
    if body.get("twin_id") != twin_id:
        raise ViewRecordError(f"twin_id {str(body.get('twin_id'))[:40]!r} differs from the key [{what}]")
    problem = id_problem("twin_type", body.get("twin_type"))
    if problem:
        raise ViewRecordError(f"{problem} [{what}]")
    labels = body.get("labels")
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ViewRecordError(f"labels must be an object of strings [{what}]")
    for field in ("last_seen_ns", "updated_ns"):
        x = body.get(field)
        if not (_is_int(x) or (x is None and field == "last_seen_ns")):
            raise ViewRecordError(f"{field} must be an integer of nanoseconds [{what}]")
    if body.get("alert_state") not in _ALERT_STATES:
        raise ViewRecordError(f"alert_state must be one of {', '.join(sorted(_ALERT_STATES))} [{what}]")
    score = body.get("anomaly_score")
    if score is not None and not _is_number(score):
        raise ViewRecordError(f"anomaly_score must be a finite number or null [{what}]")
    for field, expected in (("channels", dict), ("models", list), ("alerts", list)):
        if not isinstance(body.get(field, expected()), expected):
            raise ViewRecordError(
                f"{field} must be a JSON {'object' if expected is dict else 'array'} [{what}]"
            )
    for channel in body.get("channels", {}).values():
        if not isinstance(channel, dict):
            raise ViewRecordError(f"each channel must be a JSON object [{what}]")
    for entry in (*body.get("models", []), *body.get("alerts", [])):
        if not isinstance(entry, dict):
            raise ViewRecordError(f"models and alerts must hold JSON objects [{what}]")


def _check_alert(alert_id: str, body: dict[str, Any], what: str) -> None:
    if body.get("alert_id") != alert_id:
        raise ViewRecordError(f"alert_id differs from the key [{what}]")
    for field in ("twin_id", "state"):
        if not isinstance(body.get(field), str) or not body[field]:
            raise ViewRecordError(f"{field} must be a non-empty string [{what}]")
    for field in ("starts_ns", "time_ns"):
        if body.get(field) is not None and not _is_int(body[field]):
            raise ViewRecordError(f"{field} must be an integer of nanoseconds [{what}]")


def _check_type(name: str, body: dict[str, Any], what: str) -> None:
    if body.get("name") != name:
        raise ViewRecordError(f"name differs from the key [{what}]")
    try:
        TwinTypeSpec.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise ViewRecordError(f"not a twin type spec ({where}: {first['msg']}) [{what}]") from None
