"""The alerts as people see them: current state from the alert log, and acknowledgements.

The ``alerts`` table of the local store holds every alert event (:mod:`dte_stream.alerts.log`).
:func:`alert_table` folds them into one row per alert (its latest event, by ``sequence``).
:func:`acknowledge` is what ``dte-stream alerts ack`` and the HTTP API call: it appends an
``acknowledged`` event to the table and a line to ``DATA_DIR/alert_acks.jsonl``, which a running
dataflow polls with :func:`read_acks` so that its rule engine knows the alert was taken.

>>> import tempfile
>>> from dte_stream.batches import AlertEvent
>>> tmp = tempfile.TemporaryDirectory()
>>> e = AlertEvent("p1/hot", "p1", "pump", "hot", "firing", "critical", 10**18, 10**18, "91 > 90")
>>> _ = alerts_store(tmp.name).append("alerts", events_frame([e]))
>>> acknowledge(tmp.name, "p1/hot", by="ana", now_ns=10**18 + 5).sequence
1
>>> alert_table(tmp.name).select("alert_id", "state", "acked_by", "events").row(0)
('p1/hot', 'firing', 'ana', 2)
>>> read_acks(tmp.name, 0)[0][0]["by"]
'ana'
>>> tmp.cleanup()
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import orjson
import polars as pl

from dte_stream.alerts.log import ALERTS_SCHEMA, ALERTS_TABLE, events_frame
from dte_stream.batches import AlertEvent
from dte_stream.errors import ConfigError, StoreError
from dte_stream.store.local import LocalStore
from dte_stream.store.schema import TABLE_SCHEMAS
from dte_stream.times import format_time_ns
from dte_stream.times import now_ns as _now_ns

__all__ = [
    "ACKS_FILE",
    "ALERT_COLUMNS",
    "MAX_ACK_BY_CHARS",
    "MAX_ALERT_ID_CHARS",
    "AckInbox",
    "AlertStateFilter",
    "ack_record",
    "acknowledge",
    "alert_table",
    "alerts_store",
    "check_ack_by",
    "check_alert_id",
    "read_acks",
]

log = logging.getLogger(__name__)

#: The acknowledgement file in the data directory, one JSON object per line.
ACKS_FILE = "alert_acks.jsonl"
_ACKS_LOCK = ".alert_acks.lock"
MAX_ACK_BY_CHARS = 128
MAX_ALERT_ID_CHARS = 512

AlertStateFilter = Literal["firing", "resolved", "all"]
_STATE_FILTERS = ("firing", "resolved", "all")

_TIME = pl.Datetime("ns", "UTC")
#: The columns of :func:`alert_table`, in order.
ALERT_COLUMNS = pl.Schema(
    {
        "alert_id": pl.String(),
        "state": pl.String(),
        "twin_id": pl.String(),
        "twin_type": pl.String(),
        "rule": pl.String(),
        "severity": pl.String(),
        "channel": pl.String(),
        "message": pl.String(),
        "value": pl.Float64(),
        "since": _TIME,
        "ended": _TIME,
        "acked_by": pl.String(),
        "acked_at": _TIME,
        "last_event": _TIME,
        "events": pl.UInt32(),
    }
)


def alerts_store(data_dir: Path | str) -> LocalStore:
    """A :class:`LocalStore` that reads and writes the ``alerts`` table with :data:`ALERTS_SCHEMA`.

    With the schema registered, files whose all-null columns were stored as ``Null`` still
    scan together with the others, and appended frames are cast to the schema.
    """
    return LocalStore(data_dir, schemas={**TABLE_SCHEMAS, ALERTS_TABLE: ALERTS_SCHEMA})


# ------------------------------------------------------------------------------- validation


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


# ------------------------------------------------------------------------------- reading


def _events(data_dir: Path, twin_id: str | None = None) -> pl.DataFrame:
    """All alert events (exact repeats from replays dropped); empty when none were recorded."""
    if not data_dir.is_dir():
        raise StoreError(
            f"no data directory {data_dir}: point --data-dir at the directory a dataflow writes to"
        )
    store = alerts_store(data_dir)
    if ALERTS_TABLE not in store.tables():
        return pl.DataFrame(schema=ALERTS_SCHEMA)
    frame = store.query(ALERTS_TABLE, twin_id=twin_id)
    # at-least-once delivery can store an event twice: the same alert, sequence, state and time
    return frame.unique(subset=["alert_id", "sequence", "state", "time"], keep="first", maintain_order=True)


def _current(events: pl.DataFrame) -> pl.DataFrame:
    """One row per alert: its latest event, the acknowledgement of its current episode, a count."""
    ordered = events.sort("alert_id", "sequence", "time")
    latest = ordered.group_by("alert_id", maintain_order=True).agg(
        pl.all().exclude("alert_id").last(), pl.len().alias("events")
    )
    # an episode is one firing period: the events sharing `starts`; its first ack is the ack
    acks = (
        ordered.filter(pl.col("state") == "acknowledged")
        .sort("time")
        .group_by("alert_id", "starts", maintain_order=True)
        .agg(pl.col("acked_by").first().alias("_ack_by"), pl.col("time").first().alias("acked_at"))
    )
    joined = latest.join(acks, on=["alert_id", "starts"], how="left")
    return joined.select(
        "alert_id",
        pl.when(pl.col("state") == "resolved")
        .then(pl.lit("resolved"))
        .otherwise(pl.lit("firing"))
        .alias("state"),
        "twin_id",
        "twin_type",
        "rule",
        "severity",
        "channel",
        "message",
        "value",
        pl.col("starts").alias("since"),
        pl.col("ends").alias("ended"),
        pl.coalesce("_ack_by", "acked_by").alias("acked_by"),
        "acked_at",
        pl.col("time").alias("last_event"),
        "events",
    ).cast(ALERT_COLUMNS)


def alert_table(
    data_dir: Path | str, state: AlertStateFilter = "all", *, twin_id: str | None = None
) -> pl.DataFrame:
    """The current state of every alert recorded in ``data_dir``: one row per ``alert_id``.

    Each row is the alert's latest event (highest ``sequence``, ties broken by time) with the
    columns of :data:`ALERT_COLUMNS`. ``state`` is ``firing`` or ``resolved``; an acknowledged
    alert is ``firing`` with ``acked_by``/``acked_at`` set (the first acknowledgement of its
    current firing period). ``events`` counts the alert's events. Firing alerts come first,
    then newest ``since`` first. ``state`` filters; ``twin_id`` keeps one twin's alerts.

    An empty frame when no alert was recorded; :class:`StoreError` when ``data_dir`` does not
    exist or a file cannot be read; :class:`ConfigError` for an unknown ``state``.
    """
    if state not in _STATE_FILTERS:
        raise ConfigError(f"unknown alert state {state!r}; use one of {', '.join(_STATE_FILTERS)}")
    table = _current(_events(Path(data_dir), twin_id))
    if state != "all":
        table = table.filter(pl.col("state") == state)
    return table.sort(
        [pl.col("state") != "firing", "since", "alert_id"], descending=[False, True, False], nulls_last=True
    )


# ------------------------------------------------------------------------------- acknowledging


@contextlib.contextmanager
def _ack_lock(data_dir: Path) -> Iterator[None]:
    """Serialise acknowledgements of one data directory (check and record are one step)."""
    try:
        fd = os.open(data_dir / _ACKS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(f"cannot lock {data_dir / _ACKS_LOCK}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _unknown(alert_id: str, known: list[str], data_dir: Path) -> ConfigError:
    if not known:
        return ConfigError(f"unknown alert {alert_id!r}: no alerts recorded in {data_dir}")
    close = [k for k in known if k.startswith(alert_id + "/")][:5]
    close += [k for k in difflib.get_close_matches(alert_id, known, n=5, cutoff=0.6) if k not in close]
    hint = f"; did you mean {', '.join(repr(k) for k in close[:5])}?" if close else ""
    return ConfigError(
        f"unknown alert {alert_id!r} in {data_dir}{hint} (`dte-stream alerts list` shows the ids)"
    )


def _append_ack_line(data_dir: Path, record: dict[str, object]) -> None:
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


def acknowledge(data_dir: Path | str, alert_id: str, by: str, now_ns: int | None = None) -> AlertEvent:
    """Record that ``by`` took the firing alert ``alert_id``; return the ``acknowledged`` event.

    The event (next ``sequence``, ``acked_by=by``, time ``now_ns``, default now) is appended to
    the ``alerts`` table, then ``{"alert_id", "by", "time_ns"}`` is appended to
    ``data_dir/alert_acks.jsonl`` and fsync'd, for a running dataflow's engine (:func:`read_acks`).
    Concurrent calls on one data directory are serialised by a lock file.

    Raises :class:`ConfigError` for an invalid ``by`` or id, an unknown id (naming close ids),
    an alert that is resolved, or one already acknowledged (saying by whom and when);
    :class:`StoreError` when the store cannot be read or written.
    """
    check_alert_id(alert_id)
    check_ack_by(by)
    time_ns = _now_ns() if now_ns is None else int(now_ns)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise StoreError(f"no data directory {data_dir}: no alerts recorded there")
    with _ack_lock(data_dir):
        events = _events(data_dir)
        mine = events.filter(pl.col("alert_id") == alert_id)
        if mine.height == 0:
            raise _unknown(alert_id, sorted(events["alert_id"].unique().to_list()), data_dir)
        times = pl.col("ended", "acked_at", "last_event").dt.epoch("ns")
        current = _current(mine).with_columns(times).row(0, named=True)
        if current["state"] != "firing":
            ended = current["ended"] if current["ended"] is not None else current["last_event"]
            raise ConfigError(
                f"alert {alert_id!r} is not firing: it resolved at {format_time_ns(ended)}; "
                "only firing alerts can be acknowledged"
            )
        if current["acked_by"] is not None:
            acked_at = current["acked_at"]
            when = f" at {format_time_ns(acked_at)}" if acked_at is not None else ""
            raise ConfigError(f"alert {alert_id!r} is already acknowledged by {current['acked_by']!r}{when}")
        last = mine.sort("sequence", "time").with_columns(pl.col("starts").dt.epoch("ns")).row(-1, named=True)
        try:
            labels_raw = orjson.loads(last["labels"] or "{}")
        except orjson.JSONDecodeError:
            labels_raw = {}
        labels = {str(k): str(v) for k, v in labels_raw.items()} if isinstance(labels_raw, dict) else {}
        event = AlertEvent(
            alert_id,
            last["twin_id"],
            last["twin_type"] or "",
            last["rule"] or "",
            "acknowledged",
            last["severity"] or "",
            starts_ns=int(last["starts"]) if last["starts"] is not None else time_ns,
            time_ns=time_ns,
            message=last["message"] or "",
            labels=labels,
            value=last["value"],
            channel=last["channel"],
            acked_by=by,
            sequence=int(last["sequence"] or 0) + 1,
        )
        alerts_store(data_dir).append(ALERTS_TABLE, events_frame([event]))
        _append_ack_line(data_dir, {"alert_id": alert_id, "by": by, "time_ns": time_ns})
    return event


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
