"""The current state of some twins of one type, column-wise: what the twin state view publishes.

:class:`TwinStates` (with a :class:`FilterStates` per filter) is made by
:func:`dte_stream.twins.state_view.twin_states` and turned into one JSON-ready document per twin
by :meth:`TwinStates.documents`; connectors take it from :mod:`dte_stream.batches`.

>>> import numpy as np
>>> s = TwinStates("pump", ["temp"], np.array(["p1"]), np.array([10**18]), np.array([[10**18]]),
...     np.array([[20.5]]), np.array([[20.4]]), np.array([[0.1]]), np.array([[0]], dtype=np.uint16),
...     np.array([[np.nan]]))
>>> twin, doc = next(s.documents())
>>> twin, doc["channels"]["temp"]["estimate"], doc["channels"]["temp"]["anomaly_score"]
('p1', 20.4, None)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from dte_stream.times import format_time_ns

__all__ = ["FilterStates", "TwinStates"]


@dataclass(frozen=True, slots=True, eq=False)
class FilterStates:
    """One filter's state for some twins: mean ``(n, k)`` and covariance ``(n, k, k)``."""

    names: list[str]
    mean: npt.NDArray[np.float64]
    covariance: npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True, eq=False)
class TwinStates:
    """The current state of some twins of one type, column-wise: what the twin state view publishes.

    Per twin (first axis ``n``): ``twin_id``, ``last_seen_ns`` (latest reading time of any
    channel); per twin and channel (``(n, len(channels))``): the latest reading's
    ``last_time_ns`` (``-2**63``: never) and ``value``, the twin's ``estimate`` and ``std`` after
    it, its ``flags`` (bits of :mod:`dte_stream.twins.flags`; a stale sensor keeps ``stale``) and
    ``anomaly_score``; ``filters``: every filter's state mean and covariance, by shared model
    name or, for a channel filtered on its own, by channel name; ``alerts``: each twin's alerts
    (pending, firing, resolved) as dicts; ``removed``: twins evicted since the last view;
    ``time_ns``: the shard's twin clock when the states were taken.
    """

    twin_type: str
    channels: list[str]
    twin_id: npt.NDArray[np.str_]
    last_seen_ns: npt.NDArray[np.int64]
    last_time_ns: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    estimate: npt.NDArray[np.float64]
    std: npt.NDArray[np.float64]
    flags: npt.NDArray[np.uint16]
    anomaly_score: npt.NDArray[np.float64]
    filters: dict[str, FilterStates] = field(default_factory=dict)
    alerts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    time_ns: int = 0

    def __len__(self) -> int:
        return int(self.twin_id.shape[0])

    def documents(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """One JSON-ready document per twin (non-finite numbers as None, times in ns and RFC 3339)."""
        never = np.iinfo(np.int64).min

        def num(x: float) -> float | None:
            return x if np.isfinite(x) else None

        for i, twin in enumerate(self.twin_id.tolist()):
            channels = {}
            for j, name in enumerate(self.channels):
                t = int(self.last_time_ns[i, j])
                channels[name] = {
                    "time_ns": None if t == never else t,
                    "time": None if t == never else format_time_ns(t),
                    "value": num(float(self.value[i, j])),
                    "estimate": num(float(self.estimate[i, j])),
                    "std": num(float(self.std[i, j])),
                    "flags": int(self.flags[i, j]),
                    "anomaly_score": num(float(self.anomaly_score[i, j])),
                }
            filters = {
                name: {
                    "states": f.names,
                    "mean": [num(v) for v in f.mean[i].tolist()],
                    "covariance": [[num(v) for v in row] for row in f.covariance[i].tolist()],
                }
                for name, f in self.filters.items()
            }
            seen = int(self.last_seen_ns[i])
            yield (
                twin,
                {
                    "twin_id": twin,
                    "twin_type": self.twin_type,
                    "last_seen_ns": None if seen == never else seen,
                    "channels": channels,
                    "filters": filters,
                    "alerts": self.alerts.get(twin, []),
                    "time_ns": self.time_ns,
                },
            )
