"""Full twin update (quality, filters, anomaly scorer, learners) per micro-batch against per-reading work.

One twin type, ``pump``: 3 channels (``temperature`` with quality limits, ``pressure``, ``flow``),
a random-walk Kalman filter per channel, a 60 s forecast, the anomaly scorer, and a river
``page_hinkley`` drift detector per (twin, channel) cell. Configuration ``hst`` adds a river
``half_space_trees`` per cell (16 us/reading, ~5 kB/cell): run only at ``--hst-twins`` twins.
Configuration ``nolearn`` is ``core`` without the learner: the vectorised part alone;
``core_innovation`` is ``core`` with ``anomaly.method: innovation`` (the scorer before the
contextual default), to compare the two scorers in one run; ``core_before`` is ``core`` with the
``ContextualScorer`` of another copy of ``contextual.py`` (``--before FILE``, for example an
earlier release's: ``git show <commit>:dte_stream/twins/contextual.py > /tmp/before.py``).

Readings: every twin reports its 3 channels once per second (fixed per-twin phase, a few ms of
jitter), values are per-twin levels that wander plus noise with rare spikes, in arrival (time)
order, cut into micro-batches of 2,000 readings as the dataflow delivers them. ``now_ns`` is the
batch's latest event time (replay clock). Phases per twin count:

1. *first contact*: the first second (every twin new: rows allocated, ids indexed);
2. *warm-up*: until every cell is past the learners' and the scorer's warm-up (untimed detail);
3. *steady*: ``--readings`` more readings, timed (median of ``--repeat`` runs; repeats start from
   a restored snapshot of the warm bank, the first run is the grown bank itself).

The same steady readings, starting from the same warm state (the bank's snapshot), also go
through two per-reading implementations of the same work, on a prefix (``--per-reading``):

- *per-reading components*: ``statespace_reference.ReferenceFilter`` (one twin, one reading, small
  numpy matrices) for the filter; ``QualityBank``, ``AnomalyScorer`` and ``LearnerBank`` called with
  one-element arrays; one output record per reading. Its outputs are checked against the bank's.
- *bank, 1-reading batches*: ``TwinBank.update`` called with a batch of one reading.

Memory per twin (after the warm-up, on the bank grown as it grows, ``bank.GROWTH``): ``nbytes`` of every numpy
array reachable from the bank (allocated capacity, divided by twins), the pickled snapshot, and
the process RSS growth from before the bank was built (includes river models, ids, dicts; each
configuration and twin count runs in a fresh forked process).

    python benchmarks/bench_twin_bank.py                      # 1,000 and 100,000 twins, every config
    python benchmarks/bench_twin_bank.py --quick              # 1,000 twins, core, under 30 s
    python benchmarks/bench_twin_bank.py --profile 100000     # + cProfile of the steady phase

Prints Markdown tables with the date, machine and command line; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import inspect
import io
import math
import multiprocessing
import os
import pickle
import platform
import pstats
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dte_stream.batches import EstimateBatch
from dte_stream.readings import ReadingBatch
from dte_stream.spec.twins import TwinTypeSpec
from dte_stream.times import NS_PER_S
from dte_stream.twins import flags as fl
from dte_stream.twins.bank import TwinBank
from dte_stream.twins.routing import TypedBatch
from dte_stream.twins.statespace_reference import ReferenceFilter, _Twin

BATCH = 2000
CHANNELS = ("temperature", "pressure", "flow")
# level, spread of levels between twins, random-walk step per second, measurement noise (sd)
SIGNAL = {
    "temperature": (60.0, 5.0, 0.02, 0.5),
    "pressure": (3.0, 0.3, 0.001, 0.05),
    "flow": (40.0, 4.0, 0.05, 2.0),
}
CONFIGS = ["core", "core_innovation", "core_before", "nolearn", "hst"]
SPIKE_RATE = 1e-4  # share of readings with a 12-sigma spike
REF_HAS_R_SCALE = "r_scale" in inspect.signature(ReferenceFilter.update).parameters


def make_spec(config: str) -> TwinTypeSpec:
    """The pump twin type; ``hst`` adds a HalfSpaceTrees per cell, ``nolearn`` has no learner.

    ``core_innovation`` is ``core`` with the innovation-only anomaly scorer (the default before
    the contextual one), for a same-run comparison of the scorers' cost.
    """
    learners: list[dict[str, Any]] = (
        [] if config == "nolearn" else [{"name": "drift", "kind": "page_hinkley"}]
    )
    if config == "hst":
        learners.append({"name": "hst", "kind": "half_space_trees"})
    return TwinTypeSpec.model_validate(
        {
            "name": "pump",
            "channels": {
                "temperature": {
                    "unit": "degC",
                    "filter": {"process_noise": 4e-4, "measurement_noise": 0.25},
                    "quality": {"min": -40.0, "max": 150.0},
                },
                "pressure": {"unit": "bar", "filter": {"process_noise": 1e-6, "measurement_noise": 0.0025}},
                "flow": {"unit": "m3/h", "filter": {"process_noise": 2.5e-3, "measurement_noise": 4.0}},
            },
            "kalman": {"horizons": [60.0]},
            "learners": learners,
            "anomaly": {"method": "innovation" if config == "core_innovation" else "contextual"},
        }
    )


def warm_seconds(config: str) -> int:
    """Seconds of readings until every cell is past its warm-ups (scorer 20, drift 10, HST 150)."""
    return 160 if config == "hst" else 25


# -- readings ---------------------------------------------------------------------------------


class Readings:
    """Regular 1 s sampling of ``twins`` x 3 channels with noise, in arrival order, in micro-batches."""

    def __init__(self, twins: int, seed: int = 7) -> None:
        self.twins = twins
        self.rng = np.random.default_rng(seed)
        self.ids = np.array([f"pump-{i:06d}" for i in range(twins)])
        self.names = np.array(CHANNELS)
        self.phase_ns = self.rng.integers(0, NS_PER_S, twins)
        self.level = np.column_stack(
            [SIGNAL[c][0] + SIGNAL[c][1] * self.rng.standard_normal(twins) for c in CHANNELS]
        )
        self.walk = np.array([SIGNAL[c][2] for c in CHANNELS])
        self.noise = np.array([SIGNAL[c][3] for c in CHANNELS])
        self.order = np.argsort(self.phase_ns, kind="stable")  # arrival order within a second

    def second(self, t: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.int64], Any]:
        """Twin, channel, time and value of every reading stamped in second ``t``, in time order."""
        n = self.twins
        self.level += self.walk * self.rng.standard_normal((n, 3))
        jitter = self.rng.integers(-5_000_000, 5_000_000, n)
        time_ns = t * NS_PER_S + np.clip(self.phase_ns + jitter, 0, NS_PER_S - 1)
        value = self.level + self.noise * self.rng.standard_normal((n, 3))
        spikes = self.rng.random((n, 3)) < SPIKE_RATE
        value[spikes] += 12.0 * np.broadcast_to(self.noise, (n, 3))[spikes]
        order = np.argsort(time_ns, kind="stable")
        twin = np.repeat(order, 3)
        ch = np.tile(np.arange(3, dtype=np.intp), n)
        return twin, ch, np.repeat(time_ns[order], 3), value[order].reshape(-1)

    def batches(self, start: int, stop: int) -> Iterator[TypedBatch]:
        """Micro-batches of ``BATCH`` readings of seconds ``start .. stop - 1`` (last one shorter)."""
        parts: list[tuple[Any, ...]] = []
        held = 0
        for t in range(start, stop):
            parts.append(self.second(t))
            held += parts[-1][0].shape[0]
            if held < BATCH and t < stop - 1:
                continue
            twin, ch, time_ns, value = (np.concatenate(cols) for cols in zip(*parts, strict=True))
            cut = (twin.shape[0] // BATCH) * BATCH if t < stop - 1 else twin.shape[0]
            for lo in range(0, cut, BATCH):
                sl = slice(lo, min(lo + BATCH, cut))
                yield self.typed(twin[sl], ch[sl], time_ns[sl], value[sl])
            parts = [(twin[cut:], ch[cut:], time_ns[cut:], value[cut:])]
            held = twin.shape[0] - cut

    def typed(self, twin: Any, ch: Any, time_ns: Any, value: Any) -> TypedBatch:
        rb = ReadingBatch.from_columns(self.ids[twin], self.names[ch], time_ns, value)
        return TypedBatch("pump", rb, ch.astype(np.intp))


# -- measuring --------------------------------------------------------------------------------


def rss_bytes() -> int:
    """Current resident set size (Linux /proc), else the peak from getrusage."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def array_bytes(obj: Any) -> int:
    """``nbytes`` of every distinct numpy array reachable from ``obj`` (attributes, lists, dicts)."""
    seen: set[int] = set()
    total = 0
    stack = [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, np.ndarray):
            total += o.nbytes if o.base is None else 0
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, list | tuple):
            if o and isinstance(o[0], str | int | float):
                continue
            stack.extend(o)
        elif hasattr(o, "__dict__") or hasattr(o, "__slots__"):
            if type(o).__module__.startswith(("river", "pydantic")) or isinstance(o, TwinTypeSpec):
                continue
            stack.extend(vars(o).values() if hasattr(o, "__dict__") else ())
            for name in getattr(type(o), "__slots__", ()):
                if hasattr(o, name):
                    stack.append(getattr(o, name))
    return total


def now_of(batch: TypedBatch) -> int:
    return int(batch.readings.time_ns.max()) if len(batch) else 0


class Progress:
    """One overwritten progress line on stderr."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done, self.last = label, total, 0, 0.0

    def add(self, k: int) -> None:
        self.done += k
        t = time.monotonic()
        if t - self.last > 0.5 or self.done >= self.total:
            self.last = t
            end = "\n" if self.done >= self.total else ""
            print(
                f"\r  {self.label}: {self.done:,}/{self.total:,} readings",
                end=end,
                file=sys.stderr,
                flush=True,
            )


def run_bank(
    bank: TwinBank, batches: Iterator[TypedBatch] | list[TypedBatch], progress: Progress, keep: int = 0
) -> tuple[float, int, list[EstimateBatch]]:
    """Seconds spent in ``bank.update`` (only), readings applied, the first ``keep`` readings' outputs."""
    spent, done = 0.0, 0
    kept: list[EstimateBatch] = []
    for b in batches:
        now = now_of(b)
        t0 = time.perf_counter()
        out = bank.update(b, now)
        spent += time.perf_counter() - t0
        if done < keep:
            kept.append(out.estimates)
        done += len(b)
        progress.add(len(b))
    return spent, done, kept


# -- per-reading implementations --------------------------------------------------------------


@dataclass
class PerReadingOut:
    estimate: list[float] = field(default_factory=list)
    flags: list[int] = field(default_factory=list)
    score: list[float] = field(default_factory=list)


class PerReadingTwins:
    """The bank's work one reading at a time: reference filters, and the quality, anomaly and learner
    components called with one-element arrays. Starts from a bank snapshot (same warm state)."""

    COMPONENTS = ("quality", "filter", "anomaly", "learners", "output")

    def __init__(self, spec: TwinTypeSpec, snap: dict[str, Any], twins_needed: set[str]) -> None:
        bank = TwinBank.restore(spec, snap)
        self.spec = spec
        self.width = bank.width
        self.quality = bank.quality
        self.scorer = bank.scorer
        self.learners = bank.learners
        self.units = [str(u) for u in bank.units]
        self.level = spec.anomaly.level
        self.observed = bank.observed.tolist()
        self.row_of = {tid: i for i, tid in enumerate(bank.twin_ids)}
        self.last_value: list[float] = bank.last_value.tolist()
        self.last_time: list[int] = bank.last_time.tolist()
        self.horizons = bank.horizons
        self.group_of: list[int] = bank.group_of.tolist()
        self.groups = bank.groups
        # One reference per filter: per group, per noise variant (one for a group without).
        self.filters: list[list[ReferenceFilter]] = []
        self.variant_of: list[list[int]] = []
        k = spec.kalman
        for group in bank.groups:
            models = [f[1] for f in getattr(group, "filters", [(group.name, group.model, None)])]
            variant = getattr(group, "variant", np.zeros(self.width, dtype=np.intp)).tolist()
            refs = [
                ReferenceFilter(
                    model,
                    gate=math.inf if k.gate is None else k.gate,
                    reset_after=k.reset_after,
                    lateness_ns=round(k.lateness * NS_PER_S),
                    horizons_s=list(k.horizons),
                )
                for model in models
            ]
            self.filters.append(refs)
            self.variant_of.append(variant)
            # the reference's per-twin state, copied from the bank's arrays for the twins we will see
            st = group.state
            for tid in twins_needed:
                row = self.row_of.get(tid)
                if row is None:
                    continue
                for c in group.channels if group.per_cell else [group.channels[0]]:
                    srow = int(group.state_rows(np.array([row]), np.array([c]))[0])
                    tw = _Twin(
                        st.x[srow].copy(), st.P[srow].copy(), st.u[srow].copy(), st.gated_run[srow].tolist()
                    )
                    tw.last_ns = int(st.last_ns[srow])
                    tw.initialised = bool(st.initialised[srow])
                    refs[variant[c]].twins[self.key(group.per_cell, tid, c)] = tw
        self.seconds = dict.fromkeys(self.COMPONENTS, 0.0)
        self.records: list[tuple[Any, ...]] = []

    @staticmethod
    def key(per_cell: bool, twin: str, ch: int) -> str:
        return f"{twin}/{ch}" if per_cell else twin

    def update(self, twin: str, ch: int, t: int, v: float, now: int, out: PerReadingOut) -> None:
        clock = time.perf_counter
        t0 = clock()
        row = self.row_of.get(twin)
        if row is None:
            row = self.row_of[twin] = len(self.row_of)
            if row >= self.quality.capacity:
                self.quality.grow(2 * row)
                if self.scorer is not None:
                    self.scorer.grow(2 * row)
                self.last_value += [math.nan] * (2 * row * self.width - len(self.last_value))
                self.last_time += [fl_never()] * (2 * row * self.width - len(self.last_time))
        r1, c1, t1, v1 = np.array([row]), np.array([ch]), np.array([t], dtype=np.int64), np.array([v])
        q = self.quality.update(r1, c1, t1, v1, now)
        flags = int(q.flags[0])
        r_scale = float(q.r_scale[0])
        cell = row * self.width + ch
        last_t = self.last_time[cell]
        seen = last_t != fl_never()
        delta = v - self.last_value[cell] if seen else math.nan
        dt = (t - last_t) / NS_PER_S if seen else math.nan
        if t >= last_t:
            self.last_value[cell], self.last_time[cell] = v, t
        t1_ = clock()
        g = self.group_of[ch]
        group = self.groups[g]
        local = int(group.local[ch])
        key = self.key(group.per_cell, twin, ch)
        if REF_HAS_R_SCALE:
            f = self.filters[g][self.variant_of[g][ch]].update(key, local, t, v, r_scale)
        else:  # the reference without per-reading trust (older statespace_reference)
            f = self.filters[g][self.variant_of[g][ch]].update(key, local, t, v)
        est = f.channel_estimate if hasattr(f, "channel_estimate") else float(f.estimate[0])
        flags |= fl.GATED * f.gated | fl.LATE * f.late | fl.RESET * f.reset
        t2 = clock()
        score = math.nan
        if self.scorer is not None and not f.rejected and self.observed[ch]:
            score = float(self.scorer.score(r1, c1, t1, v1, np.array([f.innovation]), np.array([f.s]))[0])
        t3 = clock()
        extra: dict[str, float] = {}
        if self.learners is not None and not f.rejected:
            learned = self.learners.update(
                np.array([twin]),
                c1,
                t1,
                {
                    "value": v1,
                    "innovation": np.array([f.innovation]),
                    "nis": np.array([f.nis]),
                    "estimate": np.array([est]),
                    "delta": np.array([delta]),
                    "dt": np.array([dt]),
                },
            )
            extra = {name: float(col[0]) for name, col in learned.columns.items()}
            score = float(np.fmax(score, learned.anomaly[0]))
            flags |= fl.DRIFT * bool(learned.drift[0])
        t4 = clock()
        if score >= self.level:
            flags |= fl.ANOMALY
        for j, h in enumerate(self.horizons):
            extra[f"forecast_{h}"] = f.forecast[j]
            extra[f"forecast_{h}_std"] = f.forecast_std[j]
        ch_std = f.channel_std if hasattr(f, "channel_std") else float(f.std[0])
        self.records.append(
            (twin, CHANNELS[ch], t, v, self.units[ch], est, ch_std, f.innovation, f.nis, flags, score, extra)
        )
        out.estimate.append(est)
        out.flags.append(flags)
        out.score.append(score)
        t5 = clock()
        s = self.seconds
        s["quality"] += t1_ - t0
        s["filter"] += t2 - t1_
        s["anomaly"] += t3 - t2
        s["learners"] += t4 - t3
        s["output"] += t5 - t4


def fl_never() -> int:
    return int(np.iinfo(np.int64).min)


def run_per_reading_components(
    spec: TwinTypeSpec, snap: dict[str, Any], batches: list[TypedBatch], limit: int
) -> tuple[float, int, PerReadingOut, dict[str, float]]:
    used = batches[: -(-limit // BATCH)]
    needed = {str(x) for b in used for x in np.unique(b.readings.twin_id)}
    impl = PerReadingTwins(spec, snap, needed)
    out = PerReadingOut()
    progress = Progress("per-reading components", sum(len(b) for b in used))
    done = 0
    t0 = time.perf_counter()
    for b in batches:
        r = b.readings
        now = now_of(b)
        ids, ch, ts, vs = r.twin_id.tolist(), b.channel_index.tolist(), r.time_ns.tolist(), r.value.tolist()
        for i in range(len(ids)):
            impl.update(ids[i], ch[i], ts[i], vs[i], now, out)
        done += len(ids)
        progress.add(len(ids))
        if done >= limit:
            break
    return time.perf_counter() - t0, done, out, impl.seconds


def run_bank_one_by_one(
    spec: TwinTypeSpec, snap: dict[str, Any], batches: list[TypedBatch], limit: int
) -> tuple[float, int, PerReadingOut]:
    bank = TwinBank.restore(spec, snap)
    singles: list[tuple[TypedBatch, int]] = []
    for b in batches:
        now = now_of(b)
        for i in range(len(b)):
            idx = np.array([i])
            singles.append((TypedBatch("pump", b.readings.take(idx), b.channel_index[idx]), now))
        if len(singles) >= limit:
            break
    out = PerReadingOut()
    progress = Progress("bank, 1-reading batches", len(singles))
    spent = 0.0
    for single, now in singles:
        t0 = time.perf_counter()
        est = bank.update(single, now).estimates
        spent += time.perf_counter() - t0
        out.estimate.append(float(est.estimate[0]))
        out.flags.append(int(est.flags[0]))
        out.score.append(float(est.anomaly_score[0]))
        progress.add(1)
    return spent, len(singles), out


def agreement(bank_out: list[EstimateBatch], other: PerReadingOut) -> str:
    """Largest estimate difference, share of equal flags, largest score difference against the bank."""
    k = len(other.estimate)
    est = np.concatenate([e.estimate for e in bank_out])[:k]
    flags = np.concatenate([e.flags for e in bank_out])[:k]
    score = np.concatenate([e.anomaly_score for e in bank_out])[:k]
    d_est = float(np.nanmax(np.abs(est - np.array(other.estimate))))
    same = float(np.mean(flags == np.array(other.flags)))
    d_score = float(np.nanmax(np.abs(score - np.array(other.score))))
    return f"max |d estimate| {d_est:.1e}, flags equal {same:.1%}, max |d score| {d_score:.1e}"


# -- one configuration at one twin count ------------------------------------------------------


@dataclass
class Result:
    config: str
    twins: int
    first_rate: float = 0.0
    warm_rate: float = 0.0
    steady_rates: list[float] = field(default_factory=list)
    comp_rate: float = math.nan
    comp_n: int = 0
    comp_seconds: dict[str, float] = field(default_factory=dict)
    single_rate: float = math.nan
    single_n: int = 0
    checks: list[str] = field(default_factory=list)
    array_b: float = 0.0
    capacity: int = 0
    snapshot_b: float = 0.0
    learner_b: float = 0.0
    rss_b: float = 0.0
    snapshot_ms: float = 0.0
    restore_ms: float = 0.0
    profile: str = ""
    components: dict[str, float] = field(default_factory=dict)
    mem_parts: dict[str, float] = field(default_factory=dict)

    @property
    def steady(self) -> float:
        return statistics.median(self.steady_rates)


def use_scorer_from(path: Path) -> None:
    """Make the banks built from now on (in this process) use ``path``'s ``ContextualScorer``."""
    import importlib.util

    from dte_stream.twins import scorers

    loader = importlib.util.spec_from_file_location("contextual_before", path)
    if loader is None or loader.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    before = module.ContextualScorer
    known = inspect.signature(before).parameters

    def build(*args: Any, **kwargs: Any) -> Any:  # settings the earlier scorer lacks are dropped
        return before(*args, **{k: v for k, v in kwargs.items() if k in known})

    scorers.ContextualScorer = build  # type: ignore[misc,assignment]


def measure(config: str, twins: int, args: argparse.Namespace, profile: bool) -> Result:
    if config == "core_before":
        if args.before is None:
            raise SystemExit("core_before needs --before FILE (a contextual.py)")
        use_scorer_from(args.before)  # a forked process per measurement: nothing leaks
    spec = make_spec(config)
    res = Result(config, twins)
    per_second = 3 * twins
    warm = args.warm_seconds if args.warm_seconds is not None else warm_seconds(config)
    readings = args.hst_readings if config == "hst" else args.readings
    steady_s = max(1, -(-readings // per_second))
    src = Readings(twins)
    TwinBank(spec).update(next(Readings(1).batches(0, 1)), 0)  # imports river before the RSS baseline
    gc.collect()
    rss0 = rss_bytes()
    bank = TwinBank(spec)
    label = f"{config}, {twins:,} twins"
    secs, done, _ = run_bank(bank, src.batches(0, 1), Progress(f"{label}: first contact", per_second))
    res.first_rate = done / secs
    secs, done, _ = run_bank(
        bank, src.batches(1, warm), Progress(f"{label}: warm-up ({warm - 1} s)", per_second * (warm - 1))
    )
    res.warm_rate = done / secs
    gc.collect()
    res.rss_b = (rss_bytes() - rss0) / twins
    res.array_b = array_bytes(bank) / twins
    res.mem_parts = {
        "filters": array_bytes([g.state for g in bank.groups]) / twins,
        "quality": array_bytes(bank.quality) / twins,
        "anomaly": array_bytes(bank.scorer) / twins,
        "learners": array_bytes(bank.learners) / twins,
        "id index": array_bytes(bank.index) / twins,
        "bank's own": array_bytes([bank.last_seen, bank.last_value, bank.last_time]) / twins,
    }
    res.capacity = bank.capacity
    t0 = time.perf_counter()
    snap = bank.snapshot()
    blob = pickle.dumps(snap, protocol=pickle.HIGHEST_PROTOCOL)
    res.snapshot_ms = (time.perf_counter() - t0) * 1e3
    res.snapshot_b = len(blob) / twins
    res.learner_b = len(snap["learners"] or b"") / twins
    t0 = time.perf_counter()
    TwinBank.restore(spec, pickle.loads(blob))
    res.restore_ms = (time.perf_counter() - t0) * 1e3
    del blob

    steady = list(src.batches(warm, warm + steady_s))
    n_steady = sum(len(b) for b in steady)
    keep = max(args.per_reading, 1)
    for rep in range(args.repeat):
        run = bank if rep == 0 else TwinBank.restore(spec, snap)
        secs, done, kept = run_bank(run, steady, Progress(f"{label}: steady run {rep + 1}", n_steady), keep)
        res.steady_rates.append(done / secs)
        if rep == 0:
            bank_out = kept
    if profile:
        res.profile, res.components = profile_steady(spec, snap, steady)
    if args.per_reading > 0:
        secs, n, comp, parts = run_per_reading_components(spec, snap, steady, args.per_reading)
        res.comp_rate, res.comp_n = n / secs, n
        res.comp_seconds = {k: v / n * 1e6 for k, v in parts.items()}
        res.checks.append(f"per-reading components vs bank: {agreement(bank_out, comp)}")
        secs, n, single = run_bank_one_by_one(spec, snap, steady, args.per_reading)
        res.single_rate, res.single_n = n / secs, n
        res.checks.append(f"bank 1-reading batches vs bank: {agreement(bank_out, single)}")
    return res


# the bank's components as cProfile names them: (file suffix, function name)
PROFILE_PARTS = {
    "rows_for (id index)": ("bank.py", "rows_for"),
    "rounds_of": ("bank.py", "rounds_of"),
    "quality": ("quality.py", "update"),
    "filter kernel": ("statespace.py", "step"),
    "anomaly scorer": ("anomaly.py", "score"),
    "learners": ("learners.py", "update"),
}


def profile_steady(
    spec: TwinTypeSpec, snap: dict[str, Any], steady: list[TypedBatch]
) -> tuple[str, dict[str, float]]:
    """cProfile of the steady phase on a restored bank: top 15 by cumtime, and seconds per component."""
    bank = TwinBank.restore(spec, snap)
    prof = cProfile.Profile()
    progress = Progress("profile", sum(len(b) for b in steady))
    prof.enable()
    for b in steady:
        bank.update(b, now_of(b))
        progress.add(len(b))
    prof.disable()
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    stats.sort_stats("cumulative").print_stats(15)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    parts: dict[str, float] = {}
    total = 0.0
    for (filename, _line, func), (_cc, _nc, _tt, ct, _callers) in raw.items():
        if filename.endswith("bank.py") and func == "update":
            total = ct
        for name, (suffix, fname) in PROFILE_PARTS.items():
            if filename.endswith(suffix) and func == fname:
                parts[name] = parts.get(name, 0.0) + ct
    parts["rest of update (masks, flags, output assembly)"] = total - sum(parts.values())
    parts["update (total)"] = total
    return text.getvalue(), parts


# -- report -----------------------------------------------------------------------------------


def machine() -> str:
    return (
        f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {platform.machine()}, "
        f"Linux {platform.release()}, Python {platform.python_version()}, numpy {np.__version__}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--twins", type=int, nargs="+", default=[1000, 100_000])
    ap.add_argument("--configs", nargs="+", choices=CONFIGS, default=CONFIGS)
    ap.add_argument("--hst-twins", type=int, default=1000, help="run the hst configuration only up to this")
    ap.add_argument("--readings", type=int, default=600_000, help="steady-state readings per bank run")
    ap.add_argument("--hst-readings", type=int, default=150_000, help="the same for the hst configuration")
    ap.add_argument("--per-reading", type=int, default=3000, help="readings per per-reading run")
    ap.add_argument("--warm-seconds", type=int, default=None, help="default: 25 (core), 160 (hst)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", type=int, nargs="*", default=None, help="twin counts to profile (core)")
    ap.add_argument("--quick", action="store_true", help="1,000 twins, core, short runs (under 30 s)")
    ap.add_argument("--before", type=Path, help="contextual.py whose scorer the core_before config runs")
    args = ap.parse_args()
    if args.before is None and "core_before" in args.configs:
        args.configs = [c for c in args.configs if c != "core_before"]
    if args.quick:
        args.twins, args.configs, args.readings, args.repeat = [1000], ["core"], 60_000, 1
        args.per_reading = 1000
    profiled = set(args.profile or [])

    started = time.perf_counter()
    results: list[Result] = []
    for config in args.configs:
        for twins in args.twins:
            if config == "hst" and twins > args.hst_twins:
                continue
            # a fresh process per measurement, so that RSS growth is not hidden by memory freed earlier
            with multiprocessing.get_context("fork").Pool(1) as pool:
                profile = config == "core" and twins in profiled
                results.append(pool.apply(measure, (config, twins, args, profile)))

    cmd = shlex.join(["python", "benchmarks/bench_twin_bank.py", *sys.argv[1:]])
    print(f"# twin bank, full update; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print()
    print(f"- machine: {machine()}, load average {os.getloadavg()[0]:.2f} at the end")
    print(f"- command: `{cmd}` ({time.perf_counter() - started:.0f} s)")
    print(
        "- twin type: 3 channels, random-walk filter per channel, 60 s forecast, anomaly scorer, "
        "page_hinkley per cell; hst adds half_space_trees per cell"
    )
    print(f"- micro-batches of {BATCH:,} readings; steady rate is the median of {args.repeat} run(s)")
    if not REF_HAS_R_SCALE:
        print("- note: this ReferenceFilter takes no r_scale; suspect readings are not down-weighted there")
    print()
    print("## Throughput (readings/s)")
    print()
    print(
        "| config | twins | bank first contact | bank warm-up | bank steady | per-reading components "
        "| bank / components | bank, 1-reading batches | bank / 1-reading |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r.config} | {r.twins:,} | {r.first_rate:,.0f} | {r.warm_rate:,.0f} | {r.steady:,.0f} "
            f"| {r.comp_rate:,.0f} | {r.steady / r.comp_rate:,.0f}x | {r.single_rate:,.0f} "
            f"| {r.steady / r.single_rate:,.0f}x |"
        )
    print()
    print("## Per-reading components: microseconds per reading by component")
    print()
    print("| config | twins | readings | " + " | ".join(PerReadingTwins.COMPONENTS) + " | total |")
    print("|---|---:|---:|" + "---:|" * (len(PerReadingTwins.COMPONENTS) + 1))
    for r in results:
        if r.comp_seconds:
            cells = " | ".join(f"{r.comp_seconds[c]:.1f}" for c in PerReadingTwins.COMPONENTS)
            print(f"| {r.config} | {r.twins:,} | {r.comp_n:,} | {cells} | {1e6 / r.comp_rate:.1f} |")
    print()
    print("## Memory per twin (after warm-up)")
    print()
    print(
        "| config | twins | bank capacity | numpy arrays B/twin | pickled snapshot B/twin "
        "| of which learners | RSS growth B/twin | snapshot+pickle ms | unpickle+restore ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r.config} | {r.twins:,} | {r.capacity:,} | {r.array_b:,.0f} | {r.snapshot_b:,.0f} "
            f"| {r.learner_b:,.0f} | {r.rss_b:,.0f} | {r.snapshot_ms:,.0f} | {r.restore_ms:,.0f} |"
        )
    print()
    parts = list(results[0].mem_parts)
    print("numpy bytes per twin by component (allocated capacity / twins):")
    print()
    print("| config | twins | " + " | ".join(parts) + " |")
    print("|---|---:|" + "---:|" * len(parts))
    for r in results:
        print(f"| {r.config} | {r.twins:,} | " + " | ".join(f"{r.mem_parts[p]:,.0f}" for p in parts) + " |")
    print()
    print("## Checks")
    print()
    for r in results:
        for line in r.checks:
            print(f"- {r.config}, {r.twins:,} twins: {line}")
    for r in results:
        if r.profile:
            total = r.components.get("update (total)", 0.0)
            print()
            print(f"## Profile: {r.config}, {r.twins:,} twins, steady phase (cProfile, cumulative s)")
            print()
            print("| component | cumulative s | share of update |")
            print("|---|---:|---:|")
            for name, secs in r.components.items():
                print(f"| {name} | {secs:.2f} | {secs / total:.0%} |")
            print()
            print("```")
            print(r.profile.strip())
            print("```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
