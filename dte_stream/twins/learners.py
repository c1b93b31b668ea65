"""The river learners of one twin type in one shard: anomaly scores, forecasts, drift detection.

A :class:`LearnerBank` holds, for each :class:`~dte_stream.spec.learners.LearnerSpec`, one river
model per (twin, channel) cell (``scope: twin``) or per channel (``scope: twin_type``). For each
reading, in the order the filter applied them, a model first *scores* (anomaly score, or the
forecast made before the reading) and then *learns*; drift detectors report whether the reading
completed a detected change. Readings with a NaN or infinite feature get a NaN output and are
not learned (the first reading of a twin has no innovation).

Per-reading river calls are the only Python loop. Everything else is vectorised per batch:
readings are grouped by model with one stable sort, and the online standardisation of the
features (count, mean, sum of squares per cell, as struct-of-arrays) is computed for every
reading of every group at once with segmented prefix sums. The anomaly scorer
(``half_space_trees``) sees each standardised feature squashed into [0, 1]
(``0.5 + 0.5 tanh(z / 8)``: normal readings stay in the middle, so the
random splits of small trees isolate outliers), as river's HalfSpaceTrees expects; drift detectors see the
standardised feature clipped to [-10, 10], so their thresholds are in standard deviations and a
lone outlier cannot fake a level shift; after a detection the cell's standardisation starts over.
Forecasters and ``gaussian_score`` see the raw feature.

Snapshots are one pickle of the models and the standardisation arrays of the live cells;
``random.Random`` generators (about 3.8 kB each, used by river only to grow trees or sample)
are pickled as their seed, so the default per-twin HalfSpaceTrees snapshots in about 4.8 kB.

>>> from dte_stream.spec.learners import LearnerSpec
>>> bank = LearnerBank([LearnerSpec(name="level", kind="holt_winters")], ["temp"])
>>> y = np.array([1.0, 2.0, 3.0, 4.0])
>>> out = bank.update(np.array(["p1"] * 4), np.zeros(4, dtype=np.intp), np.arange(4), {"value": y})
>>> out.columns["level"].tolist(), len(bank)
([nan, nan, 2.5, 3.8], 1)
"""

from __future__ import annotations

import io
import math
import pickle
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from dte_stream.spec.learners import LEARNER_KINDS, LearnerSpec

__all__ = ["SNAPSHOT_FORMAT", "LearnerBank", "LearnerOutput"]

#: Version of the snapshot layout; bumped whenever it changes incompatibly.
SNAPSHOT_FORMAT = 1

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
IntP = npt.NDArray[np.intp]
Bool = npt.NDArray[np.bool_]

#: Readings a cell's standardisation needs before a drift detector is fed.
DRIFT_WARMUP = 10
#: Standardised inputs of drift detectors are clipped to +-this many standard deviations.
DRIFT_CLIP = 10.0
#: Standardised features ``z`` go to HalfSpaceTrees as ``0.5 + 0.5 tanh(z / HST_SQUASH)``.
HST_SQUASH = 8.0
#: z of a reading that differs from a so far constant feature.
_CONSTANT_Z = 1e3
#: The key of the one cell set per channel of a ``scope: twin_type`` learner.
_SHARED = ""


@dataclass(frozen=True)
class LearnerOutput:
    """What the learners said about each reading of a batch, in the input order.

    ``columns``: one (k,) column per learner (score, forecast, or 1.0/0.0 for drift), NaN where
    the learner does not apply or is warming up; ``anomaly``: the largest anomaly score of the
    anomaly learners, NaN where none applies; ``drift``: some drift learner fired.
    """

    columns: dict[str, F64]
    anomaly: F64
    drift: Bool


def _fresh_random(seed: int | float | str | None) -> random.Random:
    return random.Random(seed)


class _CompactPickler(pickle.Pickler):
    """Pickles ``random.Random`` as a fresh generator: river uses them only to build or sample."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is random.Random:
            return _fresh_random, (None,)
        return NotImplemented


def _reseed(model: Any) -> None:
    """After unpickling: a HalfSpaceTrees that has not grown its trees yet needs its seeded generator."""
    if getattr(model, "trees", True) == [] and hasattr(model, "rng"):
        model.rng = random.Random(model.seed)


class _Learner:
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
        #: twin id (or ``_SHARED``) -> channel name -> cell row.
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

    def _rows_of(self, twins: list[str], chans: list[str]) -> IntP:
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


class LearnerBank:
    """The learners of one twin type in one shard.

    ``channels`` are the twin type's channel names; ``channel_idx`` in :meth:`update` indexes
    them. Output columns are the learners' names.

    >>> from dte_stream.spec.learners import LearnerSpec
    >>> specs = [LearnerSpec(name="shift", kind="page_hinkley", features=["value"])]
    >>> bank = LearnerBank(specs, ["temp"])
    >>> rng = np.random.default_rng(0)
    >>> y = np.r_[rng.normal(0, 1, 300), rng.normal(6, 1, 100)]
    >>> out = bank.update(np.full(400, "p1"), np.zeros(400, dtype=np.intp), np.arange(400), {"value": y})
    >>> bank.columns(), int(np.flatnonzero(out.drift)[0]) in range(300, 320)
    (['shift'], True)
    """

    def __init__(self, specs: list[LearnerSpec], channels: list[str]) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"learner names must be unique, got {names}")
        for spec in specs:
            problem = spec.check_channels(channels)
            if problem:
                raise ValueError(problem)
        self.specs = list(specs)
        self.channels = list(channels)
        self._learners = [_Learner(s, self.channels) for s in self.specs]

    def columns(self) -> list[str]:
        """The output columns: one per learner, named after it."""
        return [s.name for s in self.specs]

    def required_features(self) -> list[str]:
        """The features :meth:`update` needs, in first-use order."""
        seen: dict[str, None] = {}
        for spec in self.specs:
            seen.update(dict.fromkeys(spec.features))
        return list(seen)

    def __len__(self) -> int:
        """The number of live models."""
        return sum(len(learner) for learner in self._learners)

    def update(
        self,
        twin_id: npt.NDArray[np.str_],
        channel_idx: IntP,
        time_ns: I64,
        features: dict[str, F64],
    ) -> LearnerOutput:
        """Score, then learn, each reading; rows must be in time order per twin (``time_ns`` is
        not reordered here). ``features`` holds a (k,) array for each of :meth:`required_features`."""
        k = int(np.shape(channel_idx)[0])
        channel_idx = np.asarray(channel_idx, dtype=np.intp)
        missing = [f for f in self.required_features() if f not in features]
        if missing:
            raise ValueError(f"learners need features {missing}; given: {sorted(features)}")
        columns: dict[str, F64] = {}
        anomaly = np.full(k, np.nan)
        drift = np.zeros(k, dtype=bool)
        if k == 0:
            return LearnerOutput({s.name: np.empty(0) for s in self.specs}, anomaly, drift)
        width = len(self.channels)
        twin_order: IntP | None = None
        channel_order: IntP | None = None
        for learner in self._learners:
            x = np.column_stack([np.asarray(features[f], dtype=np.float64) for f in learner.names])
            ok = np.isfinite(x).all(axis=1) & learner.channel_mask[channel_idx]
            col = np.full(k, np.nan)
            if learner.shared:
                if channel_order is None:
                    channel_order = np.argsort(channel_idx, kind="stable")
                order = channel_order[ok[channel_order]]
                keys = channel_idx[order]
            else:
                if twin_order is None:
                    uniq, inverse = np.unique(np.asarray(twin_id), return_inverse=True)
                    twin_ids: list[str] = uniq.tolist()
                    cell = inverse.reshape(-1).astype(np.intp) * width + channel_idx
                    twin_order = np.argsort(cell, kind="stable")
                order = twin_order[ok[twin_order]]
                keys = cell[order]
            if order.size:
                starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
                sizes = np.diff(np.r_[starts, order.size])
                first = keys[starts]
                if learner.shared:
                    twins = [_SHARED] * len(first)
                    chans = [self.channels[c] for c in first.tolist()]
                else:
                    twins = [twin_ids[t] for t in (first // width).tolist()]
                    chans = [self.channels[c] for c in (first % width).tolist()]
                rows = learner._rows_of(twins, chans)
                col[order] = learner.run(x[order], rows, starts, sizes)
            columns[learner.spec.name] = col
            if learner.role == "anomaly":
                anomaly = np.fmax(anomaly, col)
            elif learner.role == "drift":
                drift |= col == 1.0
        return LearnerOutput(columns, anomaly, drift)

    def evict(self, twin_ids: list[str]) -> None:
        """Drop the per-twin models of these twins (``scope: twin_type`` models stay)."""
        for learner in self._learners:
            learner.evict(twin_ids)

    def snapshot(self) -> bytes:
        """One compact pickle of every live model and its standardisation state."""
        payload = {"format": SNAPSHOT_FORMAT, "learners": {ln.spec.name: ln.state() for ln in self._learners}}
        buffer = io.BytesIO()
        _CompactPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(payload)
        return buffer.getvalue()

    @classmethod
    def restore(cls, specs: list[LearnerSpec], channels: list[str], data: bytes) -> LearnerBank:
        """Rebuild a bank from :meth:`snapshot`. A learner whose spec changed starts afresh;
        one no longer in ``specs`` is dropped. Only restore snapshots this engine wrote:
        they are pickles."""
        payload = pickle.loads(data)
        if payload.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(
                f"learner snapshot format {payload.get('format')!r}, this version reads {SNAPSHOT_FORMAT}"
            )
        bank = cls(specs, channels)
        saved: dict[str, dict[str, Any]] = payload["learners"]
        for learner in bank._learners:
            state = saved.get(learner.spec.name)
            if state is not None and state["spec"] == learner.spec.model_dump(mode="json"):
                learner.load(state)
        return bank
