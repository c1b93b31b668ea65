"""The alerts as people see them: current state from the alert log, and acknowledgements.

The ``alerts`` table of the local store holds every alert event (:mod:`dte_stream.alerts.log`).
:func:`alert_table` folds them into one row per alert (its latest event, by ``sequence``).
:func:`acknowledge` is what ``dte-stream alerts ack`` and the HTTP API call: it appends an
``acknowledged`` event to the table and a line to ``DATA_DIR/alert_acks.jsonl``, which a running
dataflow polls with :func:`read_acks` so that its rule engine knows the alert was taken (the
acknowledgement file, its reader and the checks of ids and names are in
:mod:`dte_stream.alerts.acks`, re-exported here).

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
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import orjson
import polars as pl

from dte_stream.alerts.acks import (
    ACKS_FILE,
    MAX_ACK_BY_CHARS,
    MAX_ALERT_ID_CHARS,
    AckInbox,
    ack_record,
    append_ack_line,
    check_ack_by,
    check_alert_id,
    read_acks,
)
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

_ACKS_LOCK = ".alert_acks.lock"

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
        append_ack_line(data_dir, {"alert_id": alert_id, "by": by, "time_ns": time_ns})
    return event
