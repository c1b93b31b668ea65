"""Acknowledgements of alerts: who may acknowledge what, and the file a running dataflow follows.

:func:`~dte_stream.alerts.store.acknowledge` (``dte-stream alerts ack``, the HTTP API) appends
one JSON line per acknowledgement to ``DATA_DIR/alert_acks.jsonl`` (:func:`append_ack_line`); a
running dataflow reads the lines written since its last look with :func:`read_acks`, through one
:class:`AckInbox` per process that its shards share. :func:`ack_record` checks one line (or one
record of a Kafka view's acknowledgements topic); :func:`check_ack_by` and :func:`check_alert_id`
say what an acknowledger name and an alert id may be.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import orjson

from dte_stream.errors import ConfigError, StoreError

__all__ = [
    "ACKS_FILE",
    "MAX_ACK_BY_CHARS",
    "MAX_ALERT_ID_CHARS",
    "AckInbox",
    "ack_record",
    "append_ack_line",
    "check_ack_by",
    "check_alert_id",
    "read_acks",
]

log = logging.getLogger(__name__)

#: The acknowledgement file in the data directory, one JSON object per line.
ACKS_FILE = "alert_acks.jsonl"
MAX_ACK_BY_CHARS = 128
MAX_ALERT_ID_CHARS = 512


def check_ack_by(by: object) -> str:
    """Return ``by`` if it is an acceptable acknowledger name, else raise :class:`ConfigError`.

    A name is text of 1 to 128 printable characters (no control, format or line-separator
    characters: nothing that can forge log lines or move a terminal cursor), not only spaces.
    """
    if not isinstance(by, str):
        raise ConfigError(f"the acknowledger name must be text, got {type(by).__name__}")
    if not by.strip():
        raise ConfigError("the acknowledger name (--by) is empty; give who takes the alert, e.g. --by ana")
    if len(by) > MAX_ACK_BY_CHARS:
        raise ConfigError(f"the acknowledger name is {len(by)} characters long; at most {MAX_ACK_BY_CHARS}")
    if not by.isprintable():
        raise ConfigError(
            f"the acknowledger name {by!r} holds non-printable characters; use plain printable text"
        )
    return by


def check_alert_id(alert_id: object) -> str:
    """Return ``alert_id`` if it looks like an alert id, else raise :class:`ConfigError`.

    Alert ids are ``TWIN_ID/RULE`` (:func:`dte_stream.batches.alert_id`): printable text
    of at most 512 characters.
    """
    if not isinstance(alert_id, str):
        raise ConfigError(f"an alert id must be text, got {type(alert_id).__name__}")
    if not alert_id or len(alert_id) > MAX_ALERT_ID_CHARS or not alert_id.isprintable():
        shown = alert_id if len(alert_id) <= 80 else alert_id[:80] + "..."
        raise ConfigError(
            f"invalid alert id {shown!r}: alert ids are printable text of 1 to {MAX_ALERT_ID_CHARS} "
            "characters, TWIN_ID/RULE (see `dte-stream alerts list`)"
        )
    return alert_id


def append_ack_line(data_dir: Path, record: dict[str, object]) -> None:
    """Append ``record`` as one line to ``alert_acks.jsonl`` and fsync it (after the alerts table has it)."""
    path = data_dir / ACKS_FILE
    data = orjson.dumps(record) + b"\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StoreError(
            f"the acknowledgement of {record['alert_id']!r} is in the alerts table, but {path} "
            f"could not be written ({exc.strerror or exc}): a running dataflow will not see it"
        ) from None


def ack_record(line: bytes | None) -> dict[str, Any] | None:
    """The acknowledgement on one line of ``alert_acks.jsonl`` (or in one record of a Kafka acks
    topic), or None when it is not a valid one.

    >>> ack_record(b'{"alert_id": "p1/hot", "by": "ana", "time_ns": 5}')
    {'alert_id': 'p1/hot', 'by': 'ana', 'time_ns': 5}
    >>> ack_record(b'{"alert_id": "p1/hot", "by": "", "time_ns": 5}') is None
    True
    """
    try:
        record = orjson.loads(line or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    alert, by, time_ns = record.get("alert_id"), record.get("by"), record.get("time_ns")
    if not isinstance(time_ns, int) or isinstance(time_ns, bool):
        return None
    try:
        check_alert_id(alert)
        check_ack_by(by)
    except ConfigError:
        return None
    return {"alert_id": alert, "by": by, "time_ns": time_ns}


def read_acks(data_dir: Path | str, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The acknowledgements written after byte ``offset`` of ``alert_acks.jsonl``, and the new offset.

    Only complete lines are read: a line still being written is left for the next call. A
    missing file gives ``([], offset)``; malformed lines are skipped with a warning in the log
    (and consumed). A file shorter than ``offset`` was replaced: it is read from the start.
    Each acknowledgement is ``{"alert_id": str, "by": str, "time_ns": int}``.
    """
    if not isinstance(offset, int) or offset < 0:
        raise ConfigError(f"the offset into {ACKS_FILE} must be a whole number >= 0, got {offset!r}")
    path = Path(data_dir) / ACKS_FILE
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < offset:
                log.warning("%s is shorter than the offset %d read before: reading it again", path, offset)
                offset = 0
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    acks: list[dict[str, Any]] = []
    skipped = 0
    for line in data[:end].split(b"\n"):
        if not line.strip():
            continue
        record = ack_record(line)
        if record is None:
            skipped += 1
        else:
            acks.append(record)
    if skipped:
        log.warning("skipped %d malformed line(s) in %s after byte %d", skipped, path, offset)
    return acks, offset + end + 1


class AckInbox:
    """Acknowledgements that ``dte-stream alerts ack`` (or the API) wrote to the data dir.

    One per dataflow process, shared by its shards; each asks for the new acknowledgements of
    a twin type's alerts (an acknowledgement of an alert another shard owns is simply not
    found there). Thread-safe.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._lock = threading.Lock()
        self._offset = 0
        self._pending: list[dict[str, Any]] = []
        self._seen: dict[tuple[int, str], int] = {}  # (reader, twin type) -> how many of _pending it saw

    def new_for(self, twin_type: str, reader: object = None) -> list[dict[str, Any]]:
        """Acknowledgements of ``twin_type`` alerts that ``reader`` (a shard) has not seen yet."""
        with self._lock:
            acks, self._offset = read_acks(self.data_dir, self._offset)
            self._pending += acks
            key = (id(reader), twin_type)
            start = self._seen.get(key, 0)
            self._seen[key] = len(self._pending)
            return self._pending[start:]
