"""A sorted index from string ids to integers, looked up for a whole array at once.

Twin ids arrive as numpy string arrays; a dict lookup per id is per-reading Python work.
:class:`IdIndex` keeps the known ids sorted beside their values so that a batch is resolved by
one ``searchsorted`` and one comparison; only ids never seen before take a slow path.

>>> index = IdIndex()
>>> index.add(np.array(["b", "a"]), np.array([1, 0]))
>>> values, known = index.lookup(np.array(["a", "c", "b", "a"]))
>>> values[known].tolist(), known.tolist()
([0, 1, 0], [True, False, True, True])
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["IdIndex"]

IntP = npt.NDArray[np.intp]


class IdIndex:
    """Known ids (sorted) and their integer values; lookups are vectorised."""

    def __init__(self) -> None:
        self.ids: npt.NDArray[np.str_] = np.empty(0, dtype=np.str_)
        self.values: IntP = np.empty(0, dtype=np.intp)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def lookup(self, ids: npt.NDArray[np.str_]) -> tuple[IntP, npt.NDArray[np.bool_]]:
        """Value of each id and whether it is known (values of unknown ids are meaningless)."""
        n = ids.shape[0]
        if not len(self):
            return np.zeros(n, dtype=np.intp), np.zeros(n, dtype=bool)
        pos = np.minimum(np.searchsorted(self.ids, ids), self.ids.shape[0] - 1)
        return self.values[pos], self.ids[pos] == ids

    def add(self, ids: npt.NDArray[np.str_], values: IntP) -> None:
        """Add ids (distinct and not yet known) with their values: a sorted insertion, no re-sort."""
        order = np.argsort(ids, kind="stable")
        new_ids = ids[order]
        at = np.searchsorted(self.ids, new_ids)
        if new_ids.dtype.itemsize > self.ids.dtype.itemsize:
            self.ids = self.ids.astype(new_ids.dtype)
        self.ids = np.insert(self.ids, at, new_ids)
        self.values = np.insert(self.values, at, values.astype(np.intp, copy=False)[order])

    def clear(self) -> None:
        self.ids = np.empty(0, dtype=np.str_)
        self.values = np.empty(0, dtype=np.intp)
