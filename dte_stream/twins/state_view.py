"""The current state of chosen twins of a bank, column-wise: what the twin state view publishes.

:func:`twin_states` gathers, for some rows of a :class:`~dte_stream.twins.bank.TwinBank`, each
twin's latest reading per channel and what the twin made of it, every filter's state mean and
covariance, and the twin's alerts, into one :class:`~dte_stream.twin_states.TwinStates` (numpy
gathers: the cost grows with the rows asked for, not with the bank).

>>> import numpy as np
>>> from dte_stream.readings import ReadingBatch
>>> from dte_stream.spec.twins import TwinTypeSpec
>>> from dte_stream.twins.bank import TwinBank
>>> from dte_stream.twins.routing import TypedBatch
>>> bank = TwinBank(TwinTypeSpec(name="pump", channels={"temp": {}, "flow": {}}))
>>> rb = ReadingBatch.from_columns(["p1", "p2"], ["temp", "flow"], [0, 0], [20.0, 3.0])
>>> _ = bank.update(TypedBatch("pump", rb, np.array([0, 1])), now_ns=0)
>>> states = twin_states(bank, np.array([1]), [], None, 0)
>>> states.twin_id.tolist(), np.round(states.estimate, 2).tolist(), sorted(states.filters)
(['p2'], [[nan, 3.0]], ['flow', 'temp'])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from dte_stream.twin_states import FilterStates, TwinStates

if TYPE_CHECKING:
    from dte_stream.alerts.rules import AlertEngine
    from dte_stream.twins.bank import TwinBank

__all__ = ["alerts_by_twin", "twin_states"]


def twin_states(
    bank: TwinBank, rows: npt.NDArray[np.intp], removed: list[str], engine: AlertEngine | None, now_ns: int
) -> TwinStates:
    """The state of the twins at ``rows`` of ``bank`` (with their alerts from ``engine``)."""
    width = bank.width
    cells = (rows[:, None] * width + np.arange(width)).reshape(-1)

    def per_cell(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
        out: npt.NDArray[Any] = a[cells].reshape(rows.shape[0], width)
        return out

    filters: dict[str, FilterStates] = {}
    for group in bank.groups:
        names = list(group.model.state_names)
        if not group.per_cell:
            filters[group.name] = FilterStates(names, group.state.x[rows], group.state.P[rows])
            continue
        for c in group.channels:
            srows = group.state_rows(rows, np.full(rows.shape[0], c, dtype=np.intp))
            filters[bank.channels[c]] = FilterStates(names, group.state.x[srows], group.state.P[srows])
    ids = bank.index.ids[rows] if rows.size else np.empty(0, dtype=np.str_)
    alerts = alerts_by_twin(engine, ids)
    return TwinStates(
        bank.spec.name,
        list(bank.channels),
        ids,
        bank.last_seen[rows],
        per_cell(bank.last_time),
        per_cell(bank.last_value),
        per_cell(bank.last_estimate),
        per_cell(bank.last_std),
        per_cell(bank.last_flags),
        per_cell(bank.last_score),
        filters,
        alerts,
        list(removed),
        now_ns,
    )


def alerts_by_twin(
    engine: AlertEngine | None, ids: npt.NDArray[np.str_], keys: tuple[str, ...] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The alerts (pending, firing, resolved) of the twins ``ids`` in ``engine``, by twin id;
    with ``keys``, each alert cut down to those of its keys it has."""
    alerts: dict[str, list[dict[str, Any]]] = {}
    if engine is not None and ids.size:
        wanted = set(ids.tolist())
        for a in engine.alerts("all"):
            if a["twin_id"] in wanted:
                alerts.setdefault(a["twin_id"], []).append(
                    a if keys is None else {k: a[k] for k in keys if k in a}
                )
    return alerts
