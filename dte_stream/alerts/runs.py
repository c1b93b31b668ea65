"""A batch's rows as runs per twin: the sorted view, run boundaries and forward fills.

Alert conditions are column operations over a whole batch; what makes them per twin is that the
rows are sorted by twin then time (:class:`View`) and that a signal is carried along each
twin's run of rows, from the value the twin ended its previous batch with (the ``carry``, given per row).

>>> import numpy as np
>>> start = starts_of(np.array([0, 0, 1, 1, 1]))
>>> start.tolist(), ends_of(start).tolist()
([True, False, True, False, False], [1, 4])
>>> carry = np.array([0, 0, 1, 1, 1], np.int8)  # per row: twin 1 ended its last batch with +1
>>> ffill_signal(np.array([1, 0, 0, -1, 0], np.int8), start, carry).tolist()
[1, 1, 1, -1, -1]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from dte_stream.batches import EstimateBatch

__all__ = [
    "F64",
    "I8",
    "Bool",
    "LastValues",
    "View",
    "ends_of",
    "ffill_float",
    "ffill_signal",
    "run_lengths",
    "starts_of",
]

F64 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int8]
Bool = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class View:
    """A batch's rows sorted by twin then time, with each row's twin code and group starts."""

    twin_ids: npt.NDArray[np.str_]  # unique, sorted; code i is twin_ids[i]
    code: npt.NDArray[np.intp]
    start: Bool  # first row of its twin
    time: npt.NDArray[np.int64]
    channel: npt.NDArray[np.str_]
    value: F64
    estimate: F64
    std: F64
    nis: F64
    score: F64
    flags: npt.NDArray[np.uint16]

    @staticmethod
    def of(batch: EstimateBatch) -> View:
        twin_ids, code = np.unique(batch.twin_id, return_inverse=True)
        order = np.lexsort((batch.time_ns, code))
        code = code[order]
        start = np.ones(len(code), dtype=bool)
        start[1:] = code[1:] != code[:-1]
        return View(
            twin_ids, code, start, batch.time_ns[order], batch.channel[order],
            batch.value[order].astype(np.float64), batch.estimate[order].astype(np.float64),
            batch.std[order].astype(np.float64), batch.nis[order].astype(np.float64),
            batch.score_column()[order].astype(np.float64), batch.flag_column()[order],
        )  # fmt: skip


def starts_of(code: npt.NDArray[np.intp]) -> Bool:
    start = np.ones(len(code), dtype=bool)
    start[1:] = code[1:] != code[:-1]
    return start


def ends_of(start: Bool) -> npt.NDArray[np.intp]:
    first = np.flatnonzero(start)
    return np.append(first[1:] - 1, len(start) - 1).astype(np.intp)


def ffill_signal(sig: I8, start: Bool, carry: I8) -> I8:
    """Each row's latest non-zero signal within its group; ``carry`` at group starts without one."""
    v = sig.copy()
    fill = start & (v == 0)
    v[fill] = carry[fill]
    idx = np.where((v != 0) | start, np.arange(len(v)), 0)
    np.maximum.accumulate(idx, out=idx)
    return v[idx]


def ffill_float(x: F64, start: Bool, carry: F64) -> F64:
    """Each row's latest finite value within its group; ``carry`` at group starts without one."""
    v = x.copy()
    fill = start & ~np.isfinite(v)
    v[fill] = carry[fill]
    idx = np.where(np.isfinite(v) | start, np.arange(len(v)), 0)
    np.maximum.accumulate(idx, out=idx)
    return v[idx]


def run_lengths(b: Bool, start: Bool, carry: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Length of the run of True ending at each row within its group (``carry`` continues a run)."""
    n = len(b)
    idx = np.arange(n)
    last = np.where(~b | start, idx, 0)
    np.maximum.accumulate(last, out=last)
    open_start = b[last]
    run = idx - last + open_start + np.where(open_start & start[last], carry[last], 0)
    run[~b] = 0
    return run.astype(np.int64)


class LastValues:
    """A time and a value per twin id, in sorted arrays: vectorised lookup and update."""

    def __init__(self) -> None:
        self.ids: npt.NDArray[np.str_] = np.array([], dtype=str)
        self.time = np.zeros(0, dtype=np.int64)
        self.value = np.zeros(0, dtype=np.float64)

    def _find(self, ids: npt.NDArray[np.str_]) -> tuple[npt.NDArray[np.intp], Bool]:
        pos = np.searchsorted(self.ids, ids)
        ok = pos < len(self.ids)
        ok[ok] = self.ids[pos[ok]] == ids[ok]
        return pos, ok

    def lookup(self, ids: npt.NDArray[np.str_]) -> tuple[npt.NDArray[np.int64], F64]:
        """Time (0 when unknown) and value (NaN when unknown) of each id."""
        pos, ok = self._find(ids)
        t = np.zeros(len(ids), dtype=np.int64)
        v = np.full(len(ids), np.nan)
        t[ok], v[ok] = self.time[pos[ok]], self.value[pos[ok]]
        return t, v

    def store(self, ids: npt.NDArray[np.str_], time: npt.NDArray[np.int64], value: F64) -> None:
        """Set the entries of ``ids`` (unique)."""
        pos, ok = self._find(ids)
        self.time[pos[ok]], self.value[pos[ok]] = time[ok], value[ok]
        if not ok.all():
            all_ids = np.concatenate([self.ids, ids[~ok]])
            order = np.argsort(all_ids, kind="stable")
            self.ids = all_ids[order]
            self.time = np.concatenate([self.time, time[~ok]])[order]
            self.value = np.concatenate([self.value, value[~ok]])[order]

    def drop(self, ids: list[str]) -> None:
        """Forget the entries of ``ids`` (twins evicted by the TTL)."""
        keep = ~np.isin(self.ids, np.asarray(ids, dtype=str))
        self.ids, self.time, self.value = self.ids[keep], self.time[keep], self.value[keep]

    def snapshot(self) -> dict[str, list[Any]]:
        return {"ids": self.ids.tolist(), "time": self.time.tolist(), "value": self.value.tolist()}

    @classmethod
    def restore(cls, data: dict[str, list[Any]] | None) -> LastValues:
        out = cls()
        if data:
            out.store(
                np.array(data["ids"], dtype=str),
                np.array(data["time"], dtype=np.int64),
                np.array(data["value"], dtype=np.float64),
            )
        return out
