"""The contextual anomaly scorer's state per cell: its arrays, growth, compaction and snapshots.

:class:`ContextualCells` is the struct-of-arrays part of
:class:`~dte_stream.twins.contextual.ContextualScorer` (which extends it with the scoring):
arrays of shape ``(capacity, channels)``, and ``(capacity, channels, bins)`` for the two float32
time-of-day profiles, one row per twin. :func:`upgrade_snapshot` brings a snapshot of the layout
before December 2026 to today's.

>>> from dte_stream.twins.contextual import ContextualScorer
>>> scorer = ContextualScorer(channels=2, capacity=4, context_bins=24)
>>> scorer.nbytes_per_cell(), sorted(scorer.snapshot(1))[:3]
(320, ['anchor', 'c_count', 'c_peak'])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["NEVER", "ContextualCells", "upgrade_snapshot"]

IntP = npt.NDArray[np.intp]

#: ``last_time`` of a cell that has seen no reading.
NEVER = np.iinfo(np.int64).min


def upgrade_snapshot(arrays: Mapping[str, npt.NDArray[np.generic]]) -> dict[str, npt.NDArray[np.generic]]:
    """A :meth:`ContextualScorer.snapshot` from before December 2026, in today's layout.

    Before, the profile was absolute float64 values and there was no likelihood stage. Now the
    profile is float32 offsets from a per-cell ``anchor`` (the old profile's mean over its
    slots), and the likelihood's statistics start blank (learned afresh). Snapshots in today's
    layout, and those of other scorers (no ``profile``), come back unchanged; so this may be
    applied to every part of a snapshot before parts of two layouts are merged.

    >>> profile = np.array([[[10.0, np.nan]], [[np.nan, np.nan]]])  # 2 twins, 1 channel, 2 slots
    >>> old = {"count": np.zeros((2, 1), dtype=np.int64), "profile": profile}
    >>> new = upgrade_snapshot(old)
    >>> new["anchor"].tolist(), new["profile"].tolist()[0], new["l_count"].tolist()
    ([[10.0], [nan]], [[0.0, nan]], [[0], [0]])
    """
    if "profile" not in arrays or "anchor" in arrays:
        return dict(arrays)
    out = dict(arrays)
    shape = np.asarray(arrays["count"]).shape
    for name in ("l_short", "l_mean", "l_var"):
        out.setdefault(name, np.zeros(shape))
    out.setdefault("l_count", np.zeros(shape, dtype=np.int64))
    profile = np.asarray(arrays["profile"], dtype=np.float64)
    seen = np.isfinite(profile)
    with np.errstate(invalid="ignore", divide="ignore"):
        anchor = np.where(seen, profile, 0.0).sum(axis=-1) / seen.sum(axis=-1)
    out["anchor"] = anchor
    out["profile"] = (profile - anchor[..., None]).astype(np.float32)
    if "profile_spread" in arrays:
        out["profile_spread"] = np.asarray(arrays["profile_spread"]).astype(np.float32)
    return out


class ContextualCells:
    """The per-cell arrays of a contextual scorer, by name; ``channels``, ``bins`` and the arrays
    are set by the scorer's constructor."""

    _FIELDS = (
        "count", "last_time", "interval",
        "i_centre", "i_spread", "i_window", "i_peak",
        "c_spread", "c_window", "c_peak", "c_count",
        "quiet_left", "quiet_score", "l_short", "l_mean", "l_var", "l_count",
        "anchor", "profile", "profile_spread",
    )  # fmt: skip
    _LIKELIHOOD = ("l_short", "l_mean", "l_var", "l_count")
    _ONES = frozenset({"i_window", "c_window"})
    _NANS = frozenset({"anchor", "profile", "profile_spread"})
    _PROFILES = frozenset({"profile", "profile_spread"})

    channels: int
    bins: int
    _arrays: dict[str, npt.NDArray[Any]]

    def _kind(self, name: str, rows: int) -> tuple[tuple[int, ...], Any, Any]:
        """Shape, dtype and blank value of field ``name`` with ``rows`` rows."""
        shape: tuple[int, ...] = (
            (rows, self.channels, self.bins) if name in self._PROFILES else (rows, self.channels)
        )
        if name in ("count", "c_count", "quiet_left", "l_count"):  # int32: 2**31 readings per cell
            return shape, np.int32, 0
        if name == "last_time":
            return shape, np.int64, NEVER
        if name in self._PROFILES:  # float32: see the module docstring
            return shape, np.float32, np.nan
        return shape, np.float64, 1.0 if name in self._ONES else np.nan if name in self._NANS else 0.0

    def _blank(self, name: str, rows: int) -> npt.NDArray[Any]:
        shape, dtype, fill = self._kind(name, rows)
        return np.full(shape, fill, dtype=dtype)

    @property
    def capacity(self) -> int:
        return int(self._arrays["count"].shape[0])

    def grow(self, capacity: int) -> None:
        """Make room for ``capacity`` rows in place; existing rows keep their statistics."""
        extra = int(capacity) - self.capacity
        if extra <= 0:
            return
        n = self.capacity
        for name in self._FIELDS:
            shape, dtype, fill = self._kind(name, int(capacity))
            try:  # in place (realloc, mremap for large blocks): the rows kept are neither copied
                # nor faulted into new pages; numpy refuses while a view or another name holds it
                self._arrays[name].resize(shape)
            except ValueError:  # then a new array, each byte written once
                new = np.empty(shape, dtype=dtype)
                new[:n] = self._arrays[name]
                self._arrays[name] = new
            self._arrays[name][n:] = fill

    def take(self, index: IntP) -> None:
        """Keep only rows ``index``, in that order (compaction after eviction); capacity is kept."""
        index = np.asarray(index, dtype=np.intp)
        capacity = self.capacity
        for name in self._FIELDS:
            new = self._blank(name, capacity)
            new[: index.shape[0]] = self._arrays[name][index]
            self._arrays[name] = new

    def reset_rows(self, index: IntP) -> None:
        """Forget the given rows (eviction or a new twin in a reused row)."""
        index = np.asarray(index, dtype=np.intp)
        for name in self._FIELDS:
            self._arrays[name][index] = self._blank(name, index.shape[0])

    def snapshot(
        self, n_rows: int, rows: npt.NDArray[np.intp] | slice | None = None, *, copy: bool = True
    ) -> dict[str, npt.NDArray[np.generic]]:
        """Copies of the first ``n_rows`` rows of every array (or of ``rows`` only), by name
        (``copy=False``, or ``rows`` a slice: views of the rows, for a caller that pickles them
        at once)."""
        if rows is not None:
            return {name: self._arrays[name][rows] for name in self._FIELDS}
        return {
            name: self._arrays[name][:n_rows].copy() if copy else self._arrays[name][:n_rows]
            for name in self._FIELDS
        }

    def restore(self, arrays: Mapping[str, npt.NDArray[np.generic]]) -> None:
        """Load a :meth:`snapshot` into rows ``0..n-1`` (growing if needed); other rows are reset."""
        arrays = upgrade_snapshot(arrays)
        missing = [name for name in self._FIELDS if name not in arrays]
        if missing:
            raise ValueError(f"anomaly scorer snapshot lacks {missing}")
        n = int(np.asarray(arrays["count"]).shape[0])
        for name in self._FIELDS:
            want = self._blank(name, n).shape
            if np.asarray(arrays[name]).shape != want:
                raise ValueError(f"anomaly scorer snapshot field {name} has shape "
                                 f"{np.asarray(arrays[name]).shape}, expected {want}")  # fmt: skip
        self.grow(n)
        self.reset_rows(np.arange(self.capacity, dtype=np.intp))
        for name in self._FIELDS:
            self._arrays[name][:n] = arrays[name]

    def nbytes_per_cell(self) -> int:
        """Bytes of state per (twin, channel) cell."""
        return sum(a.itemsize * (self.bins if n in self._PROFILES else 1) for n, a in self._arrays.items())
