"""One learner spec's river models in one shard: its cells, their standardisation, the loops.

A :class:`LearnerCells` holds one river model per (twin, channel) cell (or per channel for a
``scope: twin_type`` learner, under the twin key :data:`SHARED_CELL`) with the online
standardisation of its features as struct-of-arrays (count, mean, sum of squares per cell),
advanced for a whole batch at once by :meth:`LearnerCells.standardise`; :meth:`LearnerCells.run`
then scores (or forecasts, or detects) and learns each reading with the per-reading river calls,
the only Python loop. :class:`~dte_stream.twins.learners.LearnerBank` groups a batch's readings
by cell and keeps one of these per learner spec.

>>> from dte_stream.spec.learners import LearnerSpec
>>> cells = LearnerCells(LearnerSpec(name="level", kind="holt_winters"), ["temp"])
>>> rows = cells.rows_of(["p1"], ["temp"])
>>> z, before = cells.standardise(np.array([[1.0], [2.0], [3.0]]), rows, np.array([0]), np.array([3]))
>>> before.tolist(), len(cells)
([0, 1, 2], 1)
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from dte_stream.spec.learners import LEARNER_KINDS, LearnerSpec

__all__ = ["DRIFT_CLIP", "DRIFT_WARMUP", "HST_SQUASH", "SHARED_CELL", "LearnerCells"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
IntP = npt.NDArray[np.intp]

#: Readings a cell's standardisation needs before a drift detector is fed.
DRIFT_WARMUP = 10
#: Standardised inputs of drift detectors are clipped to +-this many standard deviations.
DRIFT_CLIP = 10.0
#: Standardised features ``z`` go to HalfSpaceTrees as ``0.5 + 0.5 tanh(z / HST_SQUASH)``.
HST_SQUASH = 8.0
#: z of a reading that differs from a so far constant feature.
_CONSTANT_Z = 1e3
#: The key of the one cell set per channel of a ``scope: twin_type`` learner.
SHARED_CELL = ""


def _reseed(model: Any) -> None:
    """After unpickling: a HalfSpaceTrees that has not grown its trees yet needs its seeded generator."""
    if getattr(model, "trees", True) == [] and hasattr(model, "rng"):
        model.rng = random.Random(model.seed)


class LearnerCells:
    """One learner spec: its cells (models plus standardisation arrays) and how to run them."""

    def __init__(self, spec: LearnerSpec, channels: list[str], capacity: int = 16) -> None:
        self.spec = spec
        self.info = LEARNER_KINDS[spec.kind]
        self.role = self.info.role
        self.names = list(spec.features)
        self.params = spec.model_params()
        self.factory: Callable[..., Any] = self.info.river_type()
        used = spec.channels if spec.channels is not None else channels
        self.channel_mask = np.isin(np.asarray(channels, dtype=np.str_), np.asarray(used, dtype=np.str_))
        self.shared = spec.scope == "twin_type"
        self.warmup = self._warmup()
        d = len(self.names)
        #: twin id (or ``SHARED_CELL``) -> channel name -> cell row.
        self.index: dict[str, dict[str, int]] = {}
        self.models: list[Any] = [None] * capacity
        self.count = np.zeros(capacity, dtype=np.int64)
        self.mean = np.zeros((capacity, d))
        self.m2 = np.zeros((capacity, d))
        self.free: list[int] = list(range(capacity - 1, -1, -1))

    def _warmup(self) -> int:
        """Readings a cell learns before its output means something (NaN before)."""
        p = self.params
        if self.spec.kind == "half_space_trees":
            return int(p.get("window_size", 250))
        if self.spec.kind == "gaussian_score":
            return int(p.get("grace_period", 100))
        if self.spec.kind == "holt_winters":
            return max(2, int(p.get("seasonality", 0)))
        if self.spec.kind == "snarimax":
            m = int(p.get("m", 1))
            return int(p["d"]) + m * int(p.get("sd", 0)) + max(int(p["p"]), m * int(p.get("sp", 0))) + 1
        return DRIFT_WARMUP

    def __len__(self) -> int:
        return sum(len(cells) for cells in self.index.values())

    # -- cells ---------------------------------------------------------------------------

    def _allocate(self) -> int:
        if not self.free:
            old = len(self.models)
            new = old * 2
            self.models.extend([None] * old)
            self.count = np.concatenate([self.count, np.zeros(old, dtype=np.int64)])
            self.mean = np.concatenate([self.mean, np.zeros_like(self.mean)])
            self.m2 = np.concatenate([self.m2, np.zeros_like(self.m2)])
            self.free = list(range(new - 1, old - 1, -1))
        row = self.free.pop()
        self.models[row] = self.factory(**self.params)
        self.count[row] = 0
        self.mean[row] = 0.0
        self.m2[row] = 0.0
        return row

    def _release(self, row: int) -> None:
        self.models[row] = None
        self.free.append(row)

    def evict(self, twin_ids: list[str]) -> None:
        if self.shared:
            return
        for twin in twin_ids:
            cells = self.index.pop(twin, None)
            if cells:
                for row in cells.values():
                    self._release(row)

    def rows_of(self, twins: list[str], chans: list[str]) -> IntP:
        """The cell row of each (twin, channel) group, created on first sight."""
        index = self.index
        rows: list[int] = []
        for twin, chan in zip(twins, chans, strict=True):
            cells = index.get(twin)
            if cells is None:
                cells = index[twin] = {}
            row = cells.get(chan)
            if row is None:
                row = cells[chan] = self._allocate()
            rows.append(row)
        return np.asarray(rows, dtype=np.intp)

    # -- standardisation -----------------------------------------------------------------

    def standardise(self, x: F64, rows: IntP, starts: IntP, sizes: IntP) -> tuple[F64, I64]:
        """z of each reading from its cell's statistics *before* it, and the count before it.

        ``x`` (m, d) holds the readings grouped by cell (group g: ``starts[g]`` .. + ``sizes[g]``,
        cell ``rows[g]``, in time order). The cells' statistics are advanced past every reading.
        """
        m = x.shape[0]
        n0 = self.count[rows]
        # Centre each group on its cell's mean; a new cell has none, so on its first reading.
        centre = np.where((n0 > 0)[:, None], self.mean[rows], x[starts])
        centre_r = np.repeat(centre, sizes, axis=0)
        dev = x - centre_r
        c1 = np.cumsum(dev, axis=0)
        c2 = np.cumsum(dev * dev, axis=0)
        e1 = c1 - dev  # exclusive prefix sums, still global
        e2 = c2 - dev * dev
        base1 = np.repeat(e1[starts], sizes, axis=0)
        base2 = np.repeat(e2[starts], sizes, axis=0)
        e1 -= base1
        e2 -= base2
        rank = np.arange(m) - np.repeat(starts, sizes)
        before = np.repeat(n0, sizes) + rank
        nb = np.maximum(before, 1).astype(np.float64)[:, None]
        mean_b = centre_r + e1 / nb
        m2_b = np.repeat(self.m2[rows], sizes, axis=0) + e2 - e1 * e1 / nb
        std = np.sqrt(np.maximum(m2_b, 0.0) / nb)
        diff = x - mean_b
        tiny = 1e-12 * (1.0 + np.abs(mean_b))
        z = np.where(std > tiny, diff / np.where(std > tiny, std, 1.0), 0.0)
        flat = (std <= tiny) & (np.abs(diff) > tiny)
        z[flat] = np.sign(diff[flat]) * _CONSTANT_Z
        z[before < 2] = 0.0
        # Advance each cell past its group.
        ends = starts + sizes - 1
        t1 = c1[ends] - (c1[starts] - dev[starts])
        t2 = c2[ends] - (c2[starts] - dev[starts] * dev[starts])
        total = (n0 + sizes).astype(np.float64)[:, None]
        self.mean[rows] = centre + t1 / total
        self.m2[rows] = self.m2[rows] + t2 - t1 * t1 / total
        self.count[rows] = n0 + sizes
        return z, before.astype(np.int64)

    def _restart(self, row: int, x: F64) -> tuple[F64, I64]:
        """Reset a cell's standardisation (after a drift) and standardise ``x`` from scratch."""
        self.count[row] = 0
        self.mean[row] = 0.0
        self.m2[row] = 0.0
        one = np.zeros(1, dtype=np.intp)
        return self.standardise(x, np.array([row], dtype=np.intp), one, np.array([x.shape[0]]))

    # -- running the models --------------------------------------------------------------

    def run(self, x: F64, rows: IntP, starts: IntP, sizes: IntP) -> F64:
        """Score (or forecast, or detect) then learn each reading, group by group.

        Arrays become Python lists once per batch; each group appends its outputs to one list,
        which is in the same (grouped) order as ``x``.
        """
        z, before = self.standardise(x, rows, starts, sizes)
        seen: list[int] = before.tolist()
        res: list[float] = []
        bounds = zip(rows.tolist(), starts.tolist(), (starts + sizes).tolist(), strict=True)
        models = self.models
        if self.role == "drift":
            zs: list[float] = np.clip(z[:, 0], -DRIFT_CLIP, DRIFT_CLIP).tolist()
            for row, a, b in bounds:
                self._detect(row, x[a:b], zs[a:b], seen[a:b], res)
        elif self.spec.kind == "half_space_trees":
            u: list[list[float]] = (0.5 + 0.5 * np.tanh(z / HST_SQUASH)).tolist()
            for row, a, b in bounds:
                self._score_hst(models[row], u[a:b], seen[a:b], res)
        else:
            column: list[float] = x[:, 0].tolist()
            run_one = self._score_gaussian if self.role == "anomaly" else self._forecast
            for row, a, b in bounds:
                run_one(models[row], column[a:b], seen[a:b], res)
        return np.asarray(res, dtype=np.float64)

    def _score_hst(self, model: Any, u: list[list[float]], seen: list[int], res: list[float]) -> None:
        names, warm = self.names, self.warmup
        score_one, learn_one = model.score_one, model.learn_one
        for row, n in zip(u, seen, strict=True):
            features = dict(zip(names, row, strict=True))
            res.append(score_one(features) if n >= warm else math.nan)
            learn_one(features)

    def _score_gaussian(self, model: Any, y: list[float], seen: list[int], res: list[float]) -> None:
        warm = self.warmup
        score_one, learn_one = model.score_one, model.learn_one
        for v, n in zip(y, seen, strict=True):
            res.append(score_one(None, v) if n >= warm else math.nan)
            learn_one(None, v)

    def _forecast(self, model: Any, y: list[float], seen: list[int], res: list[float]) -> None:
        warm, horizon = self.warmup, self.spec.horizon
        forecast, learn_one = model.forecast, model.learn_one
        for v, n in zip(y, seen, strict=True):
            res.append(forecast(horizon)[-1] if n >= warm else math.nan)
            learn_one(v)

    def _detect(self, row: int, x: F64, zs: list[float], seen: list[int], res: list[float]) -> None:
        update = self.models[row].update
        model = self.models[row]
        j = 0
        while j < len(zs):
            if seen[j] < DRIFT_WARMUP:
                res.append(0.0)
                j += 1
                continue
            update(zs[j])
            j += 1
            if not model.drift_detected:
                res.append(0.0)
                continue
            res.append(1.0)
            if j < len(zs):  # the rest of the group is standardised afresh
                z_rest, before_rest = self._restart(row, x[j:])
                zs[j:] = np.clip(z_rest[:, 0], -DRIFT_CLIP, DRIFT_CLIP).tolist()
                seen[j:] = before_rest.tolist()
            else:
                self.count[row] = 0
                self.mean[row] = 0.0
                self.m2[row] = 0.0

    # -- snapshots -----------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The live cells, renumbered 0..n-1."""
        index: dict[str, dict[str, int]] = {}
        live: list[int] = []
        for twin, cells in self.index.items():
            renumbered = {}
            for chan, row in cells.items():
                renumbered[chan] = len(live)
                live.append(row)
            index[twin] = renumbered
        rows = np.asarray(live, dtype=np.intp)
        return {
            "spec": self.spec.model_dump(mode="json"),
            "index": index,
            "models": [self.models[r] for r in live],
            "count": self.count[rows],
            "mean": self.mean[rows],
            "m2": self.m2[rows],
        }

    def load(self, state: dict[str, Any]) -> None:
        n = len(state["models"])
        capacity = max(16, n)
        d = len(self.names)
        self.index = state["index"]
        self.models = list(state["models"]) + [None] * (capacity - n)
        for model in state["models"]:
            _reseed(model)
        self.count = np.zeros(capacity, dtype=np.int64)
        self.mean = np.zeros((capacity, d))
        self.m2 = np.zeros((capacity, d))
        self.count[:n] = state["count"]
        self.mean[:n] = state["mean"]
        self.m2[:n] = state["m2"]
        self.free = list(range(capacity - 1, n - 1, -1))
