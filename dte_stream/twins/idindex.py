"""A sorted index from string ids to integers, looked up for a whole array at once.

Twin ids arrive as numpy string arrays; a dict lookup per id is per-reading Python work.
:class:`IdIndex` keeps the known ids sorted beside their values so that a batch is resolved by
one ``searchsorted`` and one comparison; only ids never seen before take a slow path.

>>> index = IdIndex()
>>> index.add(np.array(["b", "a"]), np.array([1, 0]))
>>> values, known = index.lookup(np.array(["a", "c", "b", "a"]))
>>> values[known].tolist(), known.tolist()
([0, 1, 0], [True, False, True, True])
>>> index.add(np.array(["é"]), np.array([2]))  # not ASCII: the ids are held as str from now on
>>> index.lookup(np.array(["é", "b"]))[0].tolist(), index.ids.dtype.kind
([2, 1], 'U')
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["IdIndex", "RowIds"]

IntP = npt.NDArray[np.intp]


class IdIndex:
    """Known ids (sorted) and their integer values (int32); lookups are vectorised.

    While every id is ASCII (the usual), the ids are held as bytes, one a character, where a
    numpy str takes four; the first other id turns them to str for good (until :meth:`clear`).
    """

    def __init__(self) -> None:
        self.ids: npt.NDArray[Any] = np.empty(0, dtype=np.bytes_)  # bytes_ or str_
        self.values: npt.NDArray[np.int32] = np.empty(0, dtype=np.int32)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def _keys(self, ids: npt.NDArray[np.str_]) -> npt.NDArray[Any]:
        """``ids`` in the held ids' kind, widening the held ids to str for a non-ASCII id."""
        if self.ids.dtype.kind == "S":
            ascii_ids = _ascii_bytes(ids)
            if ascii_ids is not None:
                return ascii_ids
            self.ids = self.ids.astype(np.str_)
        return ids

    def lookup(self, ids: npt.NDArray[np.str_]) -> tuple[IntP, npt.NDArray[np.bool_]]:
        """Value of each id and whether it is known (values of unknown ids are meaningless)."""
        n = ids.shape[0]
        if not len(self):
            return np.zeros(n, dtype=np.intp), np.zeros(n, dtype=bool)
        keys = self._keys(ids)
        pos = np.minimum(np.searchsorted(self.ids, keys), self.ids.shape[0] - 1)
        return self.values[pos].astype(np.intp), self.ids[pos] == keys

    def add(self, ids: npt.NDArray[np.str_], values: IntP) -> None:
        """Add ids (distinct and not yet known) with their values: a sorted insertion, no re-sort."""
        if values.size and not (_INT32.min <= values.min() and values.max() <= _INT32.max):
            raise ValueError("IdIndex values must fit in int32")
        order = np.argsort(ids, kind="stable")
        new_ids = self._keys(ids[order])
        at = np.searchsorted(self.ids, new_ids)
        if new_ids.dtype.itemsize > self.ids.dtype.itemsize:
            self.ids = self.ids.astype(new_ids.dtype)
        self.ids = np.insert(self.ids, at, new_ids)
        self.values = np.insert(self.values, at, values.astype(np.int32)[order])

    def clear(self) -> None:
        self.ids = np.empty(0, dtype=np.bytes_)
        self.values = np.empty(0, dtype=np.int32)


_INT32 = np.iinfo(np.int32)


def _ascii_bytes(ids: npt.NDArray[np.str_]) -> npt.NDArray[np.bytes_] | None:
    """``ids.astype(np.bytes_)``, or None when an id is not ASCII; no Python per id.

    numpy's own cast encodes each string through Python (some 0.35 us an id, the largest cost
    of routing a batch); a ``<Un`` array is n code points of 4 bytes per id, so an ASCII array
    is its code points narrowed to one byte each, viewed as ``Sn`` (padding is zeros in both).

    >>> _ascii_bytes(np.array(["pump-1", "a", ""])).tolist()
    [b'pump-1', b'a', b'']
    >>> _ascii_bytes(np.array(["é"])) is None
    True
    """
    width = ids.dtype.itemsize // 4
    if ids.dtype.kind != "U" or width == 0 or ids.ndim != 1:
        try:
            return ids.astype(np.bytes_)
        except UnicodeEncodeError:
            return None
    codes = np.ascontiguousarray(ids).view(np.uint32).reshape(ids.shape[0], width)
    if codes.size and codes.max() >= 128:
        return None
    return codes.astype(np.uint8).view(f"S{width}").reshape(ids.shape[0])


class RowIds:
    """Ids by row (row ``i`` holds ``ids[i]``) and their sort order: each id held once.

    A bank's rows need their ids in row order (outputs, snapshots) and a lookup from id to
    row; both come from this one array of ids, searched through its sort order (``order``),
    so the ids are not held a second time as Python strings or as a sorted copy.

    >>> ids = RowIds(["b", "a"])
    >>> ids.add(np.array(["c"])).tolist(), ids.ids.tolist()
    ([2], ['b', 'a', 'c'])
    >>> rows, known = ids.lookup(np.array(["a", "d", "c"]))
    >>> rows[known].tolist(), known.tolist()
    ([1, 2], [True, False, True])
    """

    def __init__(self, ids: npt.ArrayLike = ()) -> None:
        self.ids: npt.NDArray[np.str_] = np.asarray(ids, dtype=np.str_)
        self.order: IntP = np.argsort(self.ids, kind="stable").astype(np.intp, copy=False)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def lookup(self, ids: npt.NDArray[np.str_]) -> tuple[IntP, npt.NDArray[np.bool_]]:
        """Row of each id and whether it is known (rows of unknown ids are meaningless)."""
        n = ids.shape[0]
        if not len(self):
            return np.zeros(n, dtype=np.intp), np.zeros(n, dtype=bool)
        pos = np.minimum(np.searchsorted(self.ids, ids, sorter=self.order), self.ids.shape[0] - 1)
        rows = self.order[pos]
        return rows, self.ids[rows] == ids

    def add(self, ids: npt.NDArray[np.str_]) -> IntP:
        """Append ids (distinct and not yet known) as new rows, in the order given; their rows."""
        first = len(self)
        rows = np.arange(first, first + ids.shape[0], dtype=np.intp)
        by_id = np.argsort(ids, kind="stable")
        at = np.searchsorted(self.ids, ids[by_id], sorter=self.order)
        self.ids = np.concatenate([self.ids, ids]) if first else np.asarray(ids, dtype=np.str_).copy()
        self.order = np.insert(self.order, at, rows[by_id])
        return rows

    def take(self, rows: IntP) -> RowIds:
        """The ids of ``rows`` (in that order) as rows ``0..len(rows)-1``."""
        return RowIds(self.ids[rows])
