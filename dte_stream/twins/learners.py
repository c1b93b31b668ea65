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
One learner spec's cells, their standardisation and the river loops are
:class:`~dte_stream.twins.learner_cells.LearnerCells`.

>>> from dte_stream.spec.learners import LearnerSpec
>>> bank = LearnerBank([LearnerSpec(name="level", kind="holt_winters")], ["temp"])
>>> y = np.array([1.0, 2.0, 3.0, 4.0])
>>> out = bank.update(np.array(["p1"] * 4), np.zeros(4, dtype=np.intp), np.arange(4), {"value": y})
>>> out.columns["level"].tolist(), len(bank)
([nan, nan, 2.5, 3.8], 1)
"""

from __future__ import annotations

import io
import pickle
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from dte_stream.spec.learners import LearnerSpec
from dte_stream.twins.learner_cells import DRIFT_CLIP, DRIFT_WARMUP, HST_SQUASH, SHARED_CELL, LearnerCells

__all__ = ["DRIFT_CLIP", "DRIFT_WARMUP", "HST_SQUASH", "SNAPSHOT_FORMAT", "LearnerBank", "LearnerOutput"]

#: Version of the snapshot layout; bumped whenever it changes incompatibly.
SNAPSHOT_FORMAT = 1

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
IntP = npt.NDArray[np.intp]
Bool = npt.NDArray[np.bool_]


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


def _fresh_random(seed: int | float | str | None) -> random.Random:  # named in snapshots: stays here
    return random.Random(seed)


class _CompactPickler(pickle.Pickler):
    """Pickles ``random.Random`` as a fresh generator: river uses them only to build or sample."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is random.Random:
            return _fresh_random, (None,)
        return NotImplemented


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
        self._learners = [LearnerCells(s, self.channels) for s in self.specs]

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
                    twins = [SHARED_CELL] * len(first)
                    chans = [self.channels[c] for c in first.tolist()]
                else:
                    twins = [twin_ids[t] for t in (first // width).tolist()]
                    chans = [self.channels[c] for c in (first % width).tolist()]
                rows = learner.rows_of(twins, chans)
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
