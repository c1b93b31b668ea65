"""The twin state view: one SQLite file (WAL mode) in the data directory.

Every process of a dataflow writes the twins its shards changed (:meth:`TwinView.put`), at most
a few times per second and at least once per epoch; readers (the HTTP API, the dashboard,
what-if) only read it. A global change counter ``seq`` is bumped by every write, and each row
keeps the ``seq`` of its last write, so a reader finds what changed with one indexed query
(:meth:`TwinView.changed_twins`) and notices that nothing changed by reading one integer
(:meth:`TwinView.seq`).

Two tables: ``twins`` (one row per twin: columns to filter on plus the whole record as JSON,
see :mod:`dte_stream.view.records`) and ``alerts`` (one row per alert: its latest event).

>>> import tempfile
>>> tmp = tempfile.TemporaryDirectory()
>>> view = TwinView.open(tmp.name)
>>> view.put([{"twin_id": "p1", "twin_type": "pump", "labels": {"site": "n"}, "last_seen_ns": 5,
...            "alert_state": "ok", "anomaly_score": 0.1}], now_ns=10)
1
>>> page = view.list_twins(TwinQuery(labels={"site": "n"}))
>>> page.total, page.twins[0]["twin_id"], view.get_twin("p1")["updated_ns"]
(1, 'p1', 10)
>>> view.close(); tmp.cleanup()
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from dte_stream.errors import StoreError
from dte_stream.view.queries import AlertQuery, TwinPage, TwinQuery, alert_filter, twin_filter

__all__ = ["VIEW_FILE", "VIEW_FORMAT", "AlertQuery", "TwinPage", "TwinQuery", "TwinView"]

#: The view's file name in the data directory.
VIEW_FILE = "twin_view.sqlite3"
#: Layout version of the file; a file of another version is rebuilt (it is only a cache of state).
VIEW_FORMAT = 2
#: How long a writer or reader waits for another process's write lock.
BUSY_TIMEOUT_MS = 5_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS twins (
    twin_id TEXT PRIMARY KEY,
    twin_type TEXT NOT NULL,
    labels TEXT NOT NULL,
    last_seen_ns INTEGER,
    updated_ns INTEGER NOT NULL,
    alert_state TEXT NOT NULL,
    anomaly_score REAL,
    seq INTEGER NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS twins_seq ON twins (seq);
CREATE INDEX IF NOT EXISTS twins_type ON twins (twin_type, twin_id);
CREATE TABLE IF NOT EXISTS alerts (
    alert_id TEXT PRIMARY KEY,
    twin_id TEXT NOT NULL,
    twin_type TEXT NOT NULL,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    state TEXT NOT NULL,
    starts_ns INTEGER NOT NULL,
    time_ns INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_seq ON alerts (seq);
CREATE INDEX IF NOT EXISTS alerts_twin ON alerts (twin_id);
CREATE TABLE IF NOT EXISTS twin_types (name TEXT PRIMARY KEY, spec BLOB NOT NULL);
"""


# An upsert updates the row in place (INSERT OR REPLACE would delete it and insert it again,
# maintaining every index twice): about half the time per twin.
_UPSERT_TWIN = """
INSERT INTO twins VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (twin_id) DO UPDATE SET twin_type = excluded.twin_type, labels = excluded.labels,
    last_seen_ns = excluded.last_seen_ns, updated_ns = excluded.updated_ns,
    alert_state = excluded.alert_state, anomaly_score = excluded.anomaly_score, seq = excluded.seq,
    record = excluded.record
"""


def _twin_rows(records: Iterable[dict[str, Any]], now_ns: int | None, seq: int) -> Iterator[tuple[Any, ...]]:
    """The ``twins`` rows of ``records`` (``updated_ns`` and ``seq`` set in each record)."""
    for rec in records:
        if now_ns is not None:
            rec["updated_ns"] = now_ns
        rec["seq"] = seq
        yield (
            rec["twin_id"], rec["twin_type"],
            orjson.dumps(rec.get("labels") or {}, option=orjson.OPT_SORT_KEYS).decode(),
            rec.get("last_seen_ns"), int(rec.get("updated_ns") or 0),
            rec.get("alert_state", "ok"), rec.get("anomaly_score"), seq,
            orjson.dumps(rec, option=orjson.OPT_SERIALIZE_NUMPY),
        )  # fmt: skip


class TwinView:
    """The view file of one data directory; thread-safe (one SQLite connection per thread).

    Open it with :meth:`open`. Writers and readers in any number of processes may share it:
    SQLite's WAL mode lets readers go on while one writer commits.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    @classmethod
    def open(cls, data_dir: Path | str) -> TwinView:
        """The view of ``data_dir`` (created with its tables if missing)."""
        data_dir = Path(data_dir)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the data directory {data_dir}: {exc.strerror or exc}") from None
        view = cls(data_dir / VIEW_FILE)
        view._db()  # create the schema now: errors surface at start-up
        return view

    # -- connections -------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            return db
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                db = self._connect()
                break
            except sqlite3.OperationalError as exc:  # another process switching to WAL or creating tables
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise StoreError(f"cannot open the twin view {self.path}: {exc}") from None
                time.sleep(0.05)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open the twin view {self.path}: {exc}") from None
        self._local.db = db
        with self._lock:
            self._connections.append(db)
        return db

    def _connect(self) -> sqlite3.Connection:
        # one connection per thread (thread-local); check_same_thread=False only lets close() reach them all
        db = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"{self.path}: SQLite refused WAL mode ({mode}); is it on a network share?")
            db.execute("PRAGMA synchronous = NORMAL")
            self._ensure_schema(db)
        except BaseException:
            db.close()
            raise
        return db

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (rolled back on any error); SQLite errors name the view's file."""
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write the twin view {self.path}: {exc}") from None

    def _ensure_schema(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('format', ?), ('seq', 0)", (VIEW_FORMAT,))
            elif row[0] != VIEW_FORMAT:  # a cache of state: start it afresh
                db.execute("DELETE FROM twins")
                db.execute("DELETE FROM alerts")
                db.execute("DELETE FROM twin_types")
                db.execute("UPDATE meta SET value = ? WHERE key = 'format'", (VIEW_FORMAT,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close every connection this object opened (in any thread)."""
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()

    # -- writing -------------------------------------------------------------------------------

    def _next_seq(self, db: sqlite3.Connection) -> int:
        row = db.execute("UPDATE meta SET value = value + 1 WHERE key = 'seq' RETURNING value").fetchone()
        return int(row[0])

    def put(
        self, records: Sequence[dict[str, Any]], now_ns: int | None, alerts: Iterable[dict[str, Any]] = ()
    ) -> int:
        """Write twin records (replacing each twin's row) and alert rows in one transaction.

        Each twin record needs ``twin_id``, ``twin_type``, ``labels``, ``last_seen_ns``,
        ``alert_state`` and ``anomaly_score``; it is stored whole (with ``updated_ns`` =
        ``now_ns`` and ``seq`` added; ``now_ns=None`` keeps the record's own ``updated_ns``, as a
        copy of another view does). Each alert row is an alert's latest state (see
        :meth:`put_alerts`). Returns the new ``seq``.
        """
        alert_rows = list(alerts)
        with self._writing() as db:
            seq = self._next_seq(db)
            # One row at a time into executemany, never a list of them: orjson's bytes keep the
            # buffer they were written in (about 8 kB resident for a 1 kB record, measured with
            # orjson 3.13), so a list of 25,000 rows held 200 MB.
            db.executemany(_UPSERT_TWIN, _twin_rows(records, now_ns, seq))
            self._put_alerts(db, alert_rows, seq)
        return seq

    def put_alerts(self, alerts: Iterable[dict[str, Any]]) -> int:
        """Write alert rows (``alert_id``, ``twin_id``, ``twin_type``, ``rule``, ``severity``,
        ``state``, ``starts_ns``, ``time_ns``, anything else kept in the record); the new ``seq``."""
        return self.put([], 0, alerts)

    @staticmethod
    def _put_alerts(db: sqlite3.Connection, alerts: list[dict[str, Any]], seq: int) -> None:
        if not alerts:
            return
        rows = []
        for a in alerts:
            a["seq"] = seq
            rows.append(
                (
                    a["alert_id"], a["twin_id"], a.get("twin_type") or "", a.get("rule") or "",
                    a.get("severity") or "", a["state"], int(a.get("starts_ns") or 0),
                    int(a.get("time_ns") or 0), seq, orjson.dumps(a),
                )
            )  # fmt: skip
        db.executemany("INSERT OR REPLACE INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def put_types(self, specs: Sequence[dict[str, Any]]) -> None:
        """Store the twin types (their spec as JSON, by ``name``): what-if rebuilds models from them."""
        with self._writing() as db:
            db.executemany(
                "INSERT OR REPLACE INTO twin_types VALUES (?, ?)",
                [(s["name"], orjson.dumps(s)) for s in specs],
            )

    def types(self) -> dict[str, dict[str, Any]]:
        """The twin types the dataflows stored, by name (their spec as JSON)."""
        return {name: orjson.loads(spec) for name, spec in self._query("SELECT name, spec FROM twin_types")}

    def remove(self, twin_ids: Sequence[str]) -> None:
        """Drop twins (evicted by their TTL) and their resolved alerts."""
        if not twin_ids:
            return
        with self._writing() as db:
            self._next_seq(db)
            ids = [(t,) for t in twin_ids]
            db.executemany("DELETE FROM twins WHERE twin_id = ?", ids)
            db.executemany("DELETE FROM alerts WHERE twin_id = ? AND state = 'resolved'", ids)

    def remove_alerts(self, alert_ids: Sequence[str]) -> None:
        """Drop alerts (a Kafka view's tombstones: resolved a while ago, or their twin evicted)."""
        if not alert_ids:
            return
        with self._writing() as db:
            self._next_seq(db)
            db.executemany("DELETE FROM alerts WHERE alert_id = ?", [(a,) for a in alert_ids])

    # -- reading -------------------------------------------------------------------------------

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the twin view {self.path}: {exc}") from None

    def seq(self) -> int:
        """The change counter: it grows with every write of any process."""
        return int(self._query("SELECT value FROM meta WHERE key = 'seq'")[0][0])

    def get_twin(self, twin_id: str) -> dict[str, Any] | None:
        """The whole record of one twin, or None when the view does not hold it."""
        rows = self._query("SELECT record FROM twins WHERE twin_id = ?", (twin_id,))
        if not rows:
            return None
        record: dict[str, Any] = orjson.loads(rows[0][0])
        return record

    def twin_seq(self, twin_id: str) -> int | None:
        """The ``seq`` of a twin's last write (cheap: for live updates), None when unknown."""
        rows = self._query("SELECT seq FROM twins WHERE twin_id = ?", (twin_id,))
        return int(rows[0][0]) if rows else None

    def list_twins(self, query: TwinQuery) -> TwinPage:
        """Summaries of the twins matching ``query``, ordered by twin id, one page of them."""
        where, args = twin_filter(query)
        clause = f"WHERE {where}" if where else ""
        db = self._db()
        try:
            db.execute("BEGIN")  # one snapshot for the count and the page
            try:
                total = int(db.execute(f"SELECT count(*) FROM twins {clause}", args).fetchone()[0])
                rows = db.execute(
                    "SELECT twin_id, twin_type, labels, last_seen_ns, updated_ns, alert_state, "
                    f"anomaly_score, seq FROM twins {clause} ORDER BY twin_id LIMIT ? OFFSET ?",
                    [*args, query.limit, query.offset],
                ).fetchall()
                seq = int(db.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0])
            finally:
                db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the twin view {self.path}: {exc}") from None
        names = (
            "twin_id",
            "twin_type",
            "labels",
            "last_seen_ns",
            "updated_ns",
            "alert_state",
            "anomaly_score",
            "seq",
        )
        twins = []
        for row in rows:
            item = dict(zip(names, row, strict=True))
            item["labels"] = orjson.loads(item["labels"])
            twins.append(item)
        return TwinPage(twins, total, seq)

    def changed_twins(self, after_seq: int, twin_id: str | None = None) -> list[dict[str, Any]]:
        """Records written after ``after_seq`` (of one twin, or all), oldest first."""
        if twin_id is None:
            rows = self._query("SELECT record FROM twins WHERE seq > ? ORDER BY seq", (after_seq,))
        else:
            rows = self._query("SELECT record FROM twins WHERE twin_id = ? AND seq > ?", (twin_id, after_seq))
        return [orjson.loads(r[0]) for r in rows]

    def list_alerts(self, query: AlertQuery) -> list[dict[str, Any]]:
        """Alert rows matching ``query``: firing first, then the most recent."""
        clause, args = alert_filter(query)
        rows = self._query(
            f"SELECT record FROM alerts WHERE {clause} "
            "ORDER BY state != 'firing', time_ns DESC, alert_id LIMIT ? OFFSET ?",
            [*args, query.limit, query.offset],
        )
        return [orjson.loads(r[0]) for r in rows]

    def count_alerts(self, query: AlertQuery) -> int:
        """How many alert rows match ``query`` (its limit and offset aside)."""
        clause, args = alert_filter(query)
        return int(self._query(f"SELECT count(*) FROM alerts WHERE {clause}", args)[0][0])

    def get_alert(self, alert_id: str) -> dict[str, Any] | None:
        """One alert's row, or None when the view does not hold it."""
        rows = self._query("SELECT record FROM alerts WHERE alert_id = ?", (alert_id,))
        if not rows:
            return None
        row: dict[str, Any] = orjson.loads(rows[0][0])
        return row

    def changed_alerts(self, after_seq: int) -> list[dict[str, Any]]:
        """Alert rows written after ``after_seq``, oldest first."""
        rows = self._query("SELECT record FROM alerts WHERE seq > ? ORDER BY seq, alert_id", (after_seq,))
        return [orjson.loads(r[0]) for r in rows]

    def counts(self) -> dict[str, int]:
        """How many twins the view holds, in all and by alert state."""
        rows = self._query("SELECT alert_state, count(*) FROM twins GROUP BY alert_state")
        out = {state: int(n) for state, n in rows}
        out["total"] = sum(out.values())
        return out
