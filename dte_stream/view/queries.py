"""What readers ask the twin view: the queries, and the SQL filters they become.

:class:`TwinQuery` and :class:`AlertQuery` say which twins and alerts to list;
:func:`twin_filter` and :func:`alert_filter` turn them into a ``WHERE`` clause with its
arguments for :class:`~dte_stream.view.store.TwinView` (pure: no connection here).

>>> twin_filter(TwinQuery(twin_type="pump", alert_state="firing"))
('twin_type = ? AND alert_state = ?', ['pump', 'firing'])
>>> alert_filter(AlertQuery(states=("firing", "resolved")))
('seq > ? AND state IN (?, ?)', [0, 'firing', 'resolved'])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["AlertQuery", "AlertState", "TwinPage", "TwinQuery", "alert_filter", "twin_filter"]

AlertState = Literal["firing", "pending", "ok"]


@dataclass(frozen=True, slots=True)
class TwinQuery:
    """Which twins to list: every filter is optional; ``search`` is a substring of the twin id.

    ``seen_within_s`` keeps twins with a reading in the last so many seconds (fresh),
    ``silent_for_s`` those without one for so long (stale); both count from ``now_ns``.
    """

    twin_type: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    alert_state: AlertState | None = None
    search: str | None = None
    seen_within_s: float | None = None
    silent_for_s: float | None = None
    now_ns: int | None = None
    limit: int = 100
    offset: int = 0


@dataclass(frozen=True, slots=True)
class TwinPage:
    """One page of twins (summaries: the filter columns) and how many match in all."""

    twins: list[dict[str, Any]]
    total: int
    seq: int


@dataclass(frozen=True, slots=True)
class AlertQuery:
    """Which alerts to list from the view (``states``: any of these, when given)."""

    state: str | None = None
    states: tuple[str, ...] = ()
    twin_id: str | None = None
    rule: str | None = None
    severity: str | None = None
    after_seq: int = 0
    limit: int = 100
    offset: int = 0


def alert_filter(query: AlertQuery) -> tuple[str, list[Any]]:
    """The ``WHERE`` clause (without the word) and arguments of an alert query."""
    where: list[str] = ["seq > ?"]
    args: list[Any] = [query.after_seq]
    for column, value in (
        ("state", query.state),
        ("twin_id", query.twin_id),
        ("rule", query.rule),
        ("severity", query.severity),
    ):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if query.states:
        where.append(f"state IN ({', '.join('?' * len(query.states))})")
        args += list(query.states)
    return " AND ".join(where), args


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def twin_filter(query: TwinQuery) -> tuple[str, list[Any]]:
    """The ``WHERE`` clause (without the word; empty: every twin) and arguments of a twin query."""
    where: list[str] = []
    args: list[Any] = []
    if query.twin_type is not None:
        where.append("twin_type = ?")
        args.append(query.twin_type)
    for key, value in sorted(query.labels.items()):
        where.append("json_extract(labels, ?) = ?")
        args += ['$."' + key.replace('"', '""') + '"', value]
    if query.alert_state is not None:
        where.append("alert_state = ?")
        args.append(query.alert_state)
    if query.search:
        where.append("twin_id LIKE ? ESCAPE '\\'")
        args.append(f"%{_like_escape(query.search)}%")
    now = query.now_ns
    if query.seen_within_s is not None and now is not None:
        where.append("last_seen_ns >= ?")
        args.append(now - round(query.seen_within_s * 1e9))
    if query.silent_for_s is not None and now is not None:
        where.append("(last_seen_ns IS NULL OR last_seen_ns < ?)")
        args.append(now - round(query.silent_for_s * 1e9))
    return " AND ".join(where), args
