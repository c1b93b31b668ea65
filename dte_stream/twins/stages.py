"""The twin bank's per-reading stages, two ways: by rounds of numpy, or reading by reading.

:meth:`TwinBank.update <dte_stream.twins.bank.TwinBank.update>` runs three stages on a
micro-batch: data quality (with each cell's reading-to-reading change), the Kalman filters and
the anomaly score. :func:`by_rounds` runs each stage over *rounds* (each cell or filter row at
most once, see :func:`rounds_of`) with whole-array numpy operations: the cost of a round is a
few dozen numpy calls however few readings it holds, so it is the way for micro-batches that
hold many twins. :func:`by_reading` runs the same stages one reading at a time in plain Python
floats (:mod:`~dte_stream.twins.quality_scalar`, :mod:`~dte_stream.twins.kalman_scalar`,
:mod:`~dte_stream.twins.contextual_scalar`): the way for batches of few twins and many
readings each, such as one series replayed alone, where rounds hold a reading or two.

Both give the same outputs and leave the same state (to 1e-9; ``tests/unit/twins/
test_scalar_path.py`` checks them against each other on random twin types and inputs). Each
cell's state depends only on its own readings in time order, so taking the readings in (stable)
time order, one by one, is one valid order of the rounds' work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from dte_stream.times import NS_PER_S
from dte_stream.twins import flags as fl
from dte_stream.twins.contextual import ContextualScorer
from dte_stream.twins.contextual_scalar import ContextualCell
from dte_stream.twins.kalman import StateSpaceOutput
from dte_stream.twins.kalman_scalar import KernelRow, ScalarKernel
from dte_stream.twins.quality_scalar import QualityCell

if TYPE_CHECKING:
    from dte_stream.twins.bank import TwinBank

__all__ = [
    "Copies",
    "Rounds",
    "Stages",
    "by_reading",
    "by_rounds",
    "copies_of",
    "rounds_in",
    "rounds_of",
    "supports_by_reading",
]

IntP = npt.NDArray[np.intp]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
NEVER = np.iinfo(np.int64).min
_NEVER_INT = int(NEVER)


@dataclass(slots=True)
class Stages:
    """Per reading of a micro-batch: what quality, filters and scorer made of it."""

    flags: npt.NDArray[np.uint16]
    delta: F64  # value minus the cell's previous value (NaN for its first)
    dt: F64  # seconds since the cell's previous reading (NaN for its first)
    estimate: F64
    std: F64
    innovation: F64
    nis: F64
    rejected: npt.NDArray[np.bool_]
    extra: dict[str, F64]
    score: F64


@dataclass(frozen=True, slots=True)
class Rounds:
    """Readings of a micro-batch split into rounds: each round holds every cell at most once.

    ``by_cell`` is ``np.lexsort((time_ns, cells))`` (each cell's readings together, in time
    order); ``order`` the same positions round by round: round ``j`` is
    ``order[bounds[j]:bounds[j + 1]]``, the ``j``-th reading of every cell that has one. Taken
    in this order once, the inputs of each round are slices (views), not gathers.
    """

    by_cell: IntP
    order: IntP
    bounds: list[int]

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def spans(self) -> list[tuple[int, int]]:
        """``(start, stop)`` of each round in :attr:`order`."""
        return list(zip(self.bounds[:-1], self.bounds[1:], strict=True))


def rounds_in(cells: IntP, time_ns: I64, order: IntP | None = None) -> Rounds:
    """The :class:`Rounds` of a micro-batch; ``order`` is ``np.lexsort((time_ns, cells))`` if known.

    >>> r = rounds_in(np.array([3, 1, 3, 3]), np.array([20, 5, 10, 30]))
    >>> r.order.tolist(), r.bounds
    ([1, 2, 0, 3], [0, 2, 3, 4])
    """
    n = cells.shape[0]
    if order is None:
        order = np.lexsort((time_ns, cells))
    if n == 0:
        return Rounds(order, order, [0])
    sorted_cells = cells[order]
    starts = np.empty(n, dtype=bool)
    starts[0] = True
    np.not_equal(sorted_cells[1:], sorted_cells[:-1], out=starts[1:])
    if starts.all():
        return Rounds(order, order, [0, n])
    group = np.cumsum(starts) - 1
    rank = np.arange(n) - np.flatnonzero(starts)[group]
    by_rank = order[np.argsort(rank, kind="stable")]
    counts = np.bincount(rank)
    return Rounds(order, by_rank, [0, *np.cumsum(counts).tolist()])


def rounds_of(cells: IntP, time_ns: I64, order: IntP | None = None) -> list[IntP]:
    """Split reading positions into rounds: each round has every cell at most once, in time order.

    ``order`` is ``np.lexsort((time_ns, cells))`` when the caller has it already.

    >>> [r.tolist() for r in rounds_of(np.array([3, 1, 3, 3]), np.array([20, 5, 10, 30]))]
    [[1, 2], [0], [3]]
    """
    rounds = rounds_in(cells, time_ns, order)
    return [rounds.order[a:b] for a, b in rounds.spans()]


@dataclass(frozen=True, slots=True)
class Copies:
    """Readings of a micro-batch that repeat one already applied: same cell, same event time.

    ``copy`` marks every repeat (the first copy wins: the one applied in an earlier batch, else
    the batch's earliest in arrival order); ``conflict`` those of them whose value differs from
    the winner's (NaN equals NaN); ``winner`` is the winning value of each reading.
    """

    copy: npt.NDArray[np.bool_]
    conflict: npt.NDArray[np.bool_]
    winner: F64


def copies_of(
    cells: IntP, time_ns: I64, value: F64, order: IntP, last_time: I64, last_value: F64
) -> Copies | None:
    """The repeats in a micro-batch (None when there are none), vectorised.

    A reading repeats another when its cell and event time are equal: within the batch (``order``
    is the stable ``np.lexsort((time_ns, cells))``, so equal keys keep their arrival order), or
    against the cell's latest applied reading (``last_time``, ``last_value`` of the bank).

    >>> c = copies_of(np.array([0, 1, 0, 0]), np.array([5, 5, 5, 7]), np.array([1.0, 2.0, 3.0, 4.0]),
    ...     np.lexsort((np.array([5, 5, 5, 7]), np.array([0, 1, 0, 0]))),
    ...     np.array([NEVER, 5]), np.array([np.nan, 2.0]))
    >>> c.copy.tolist(), c.conflict.tolist(), c.winner.tolist()
    ([False, True, True, False], [False, False, True, False], [1.0, 2.0, 1.0, 4.0])
    """
    n = cells.shape[0]
    applied = time_ns == last_time[cells]
    sorted_cells, sorted_time = cells[order], time_ns[order]
    same = np.zeros(n, dtype=bool)
    if n > 1:
        same[1:] = (sorted_cells[1:] == sorted_cells[:-1]) & (sorted_time[1:] == sorted_time[:-1])
    if not (same.any() or applied.any()):
        return None
    copy = applied.copy()
    copy[order[same]] = True
    first = np.maximum.accumulate(np.where(same, 0, np.arange(n)))  # sorted position of the group's first
    winner = np.empty(n)
    winner[order] = value[order[first]]
    winner = np.where(applied, last_value[cells], winner)
    equal = (winner == value) | (np.isnan(winner) & np.isnan(value))
    return Copies(copy, copy & ~equal, winner)


def by_rounds(
    bank: TwinBank, rows: IntP, ch: IntP, time_ns: I64, value: F64, now_ns: int, rounds: Rounds
) -> Stages:
    """The stages over rounds, vectorised; ``rounds`` are the rounds of the (twin, channel) cells.

    Each stage takes its inputs in round-major order once, calls its kernel on one slice per
    round, and puts the outputs back in the batch's order once: per round, only the stage's
    own numpy work. What depends on a cell's previous reading alone (the change since it and
    the time since it) is worked out for the whole batch at once.
    """
    n = rows.shape[0]
    perm = rounds.order
    spans = rounds.spans()
    p_rows, p_ch, p_time, p_value = rows[perm], ch[perm], time_ns[perm], value[perm]
    q = bank.quality.update_rounds(p_rows, p_ch, p_time, p_value, now_ns, spans)
    flags = np.empty(n, dtype=np.uint16)
    flags[perm] = q.flags
    r_scale = np.empty(n)
    r_scale[perm] = q.r_scale
    delta, dt = _changes(bank, rows * bank.width + ch, time_ns, value, rounds.by_cell)

    estimate = np.full(n, np.nan)
    std = np.full(n, np.nan)
    innovation = np.full(n, np.nan)
    nis = np.full(n, np.nan)
    s = np.full(n, np.nan)
    rejected = np.zeros(n, dtype=bool)
    extra = {name: np.full(n, np.nan) for name in bank.extra_columns}
    group_of = bank.group_of[ch]
    for g, group in enumerate(bank.groups):
        sel = np.flatnonzero(group_of == g) if len(bank.groups) > 1 else None
        if sel is not None and sel.size == 0:
            continue
        if sel is None and group.per_cell and group.cells == bank.width:
            # One group of every channel, one row per cell (the channels in order): its rows are
            # the bank's cells and its rounds the bank's, so the quality stage's inputs serve.
            g_rounds, pos = rounds, perm
            k_rows, k_ch, k_time, k_value = p_rows * bank.width + p_ch, p_ch, p_time, p_value
            k_r_scale = q.r_scale
        else:
            g_rows, g_ch, g_time = (rows, ch, time_ns) if sel is None else (rows[sel], ch[sel], time_ns[sel])
            srows = group.state_rows(g_rows, g_ch)
            g_rounds = rounds_in(srows, g_time)
            pos = g_rounds.order if sel is None else sel[g_rounds.order]
            k_rows, k_ch = srows[g_rounds.order], ch[pos]
            k_time, k_value, k_r_scale = time_ns[pos], value[pos], r_scale[pos]
        k_local = group.local[k_ch]
        k_variant = group.variant[k_ch] if group.fused else None
        outs = group.kernel.step_rounds(
            group.state, k_rows, k_local, k_time, k_value, k_r_scale, g_rounds.spans(), k_variant
        )
        estimate[pos] = _joined(outs, "channel_estimate")
        std[pos] = _joined(outs, "channel_std")
        innovation[pos] = _joined(outs, "innovation")
        nis[pos] = _joined(outs, "nis")
        s[pos] = _joined(outs, "s")
        rejected[pos] = _joined(outs, "rejected")
        flags[pos] |= (
            _joined(outs, "gated").astype(np.uint16) * fl.GATED
            | _joined(outs, "late").astype(np.uint16) * fl.LATE
            | _joined(outs, "reset").astype(np.uint16) * fl.RESET
        )
        state_cols = group.state_columns() if bank.spec.outputs.states else []
        if state_cols:
            means, stds = _joined(outs, "estimate"), _joined(outs, "std")
            for j in range(len(state_cols) // 2):
                extra[state_cols[2 * j]][pos] = means[:, j]
                extra[state_cols[2 * j + 1]][pos] = stds[:, j]
        if bank.horizons:
            means, stds = _joined(outs, "forecast"), _joined(outs, "forecast_std")
            for j, h in enumerate(bank.horizons):
                extra[f"forecast_{h}"][pos] = means[:, j]
                extra[f"forecast_{h}_std"][pos] = stds[:, j]

    score = np.full(n, np.nan)
    if bank.scorer is not None:
        p_live = (~rejected & bank.observed[ch])[perm]
        p_innovation, p_s = innovation[perm], s[perm]
        live_rounds: list[slice | IntP] = []
        for a, b in spans:
            if p_live[a:b].all():
                live_rounds.append(slice(a, b))
            elif p_live[a:b].any():
                live_rounds.append(a + np.flatnonzero(p_live[a:b]))
        score[perm] = bank.scorer.score_rounds(p_rows, p_ch, p_time, p_value, p_innovation, p_s, live_rounds)
    return Stages(flags, delta, dt, estimate, std, innovation, nis, rejected, extra, score)


def _changes(bank: TwinBank, cells: IntP, time_ns: I64, value: F64, by_cell: IntP) -> tuple[F64, F64]:
    """Each reading's change and time (seconds) since its cell's previous one; the cells' latest kept.

    The previous reading is the one before in the batch (``by_cell`` is the lexsort by cell,
    then time) if that one was not older than the cell's latest before the batch (the bank's
    ``last_time``, ``last_value``), else that latest; NaN for a cell's first reading ever. The
    same numbers as going through the batch reading by reading; a late reading (older than the
    cell's latest) leaves the latest as it is.
    """
    n = cells.shape[0]
    sc, st, sv = cells[by_cell], time_ns[by_cell], value[by_cell]
    stored_t, stored_v = bank.last_time[sc], bank.last_value[sc]
    same = sc[1:] == sc[:-1]  # reading i + 1 is of the same cell as reading i (sorted)
    follows = np.zeros(n, dtype=bool)
    follows[1:] = same & (st[:-1] >= stored_t[:-1])
    prev_t, prev_v = stored_t.copy(), stored_v.copy()
    prev_t[follows] = st[:-1][follows[1:]]
    prev_v[follows] = sv[:-1][follows[1:]]
    seen = prev_t != NEVER
    delta = np.empty(n)
    dt = np.empty(n)
    delta[by_cell] = np.where(seen, sv - prev_v, np.nan)
    dt[by_cell] = np.where(seen, (st - prev_t) / NS_PER_S, np.nan)
    latest = np.ones(n, dtype=bool)
    latest[:-1] = ~same
    latest &= st >= stored_t
    bank.last_time[sc[latest]] = st[latest]
    bank.last_value[sc[latest]] = sv[latest]
    return delta, dt


def _joined(outs: list[StateSpaceOutput], name: str) -> npt.NDArray[Any]:
    """Output ``name`` of a group's rounds, one round after the other."""
    if len(outs) == 1:
        one: npt.NDArray[Any] = getattr(outs[0], name)
        return one
    return np.concatenate([getattr(out, name) for out in outs])


def supports_by_reading(bank: TwinBank) -> bool:
    """Whether :func:`by_reading` covers this bank's scorer (the contextual one, or none)."""
    return bank.scorer is None or isinstance(bank.scorer, ContextualScorer)


def by_reading(bank: TwinBank, rows: IntP, ch: IntP, time_ns: I64, value: F64, now_ns: int) -> Stages:
    """The stages one reading at a time, in time order, in Python floats (see the module docstring)."""
    n = rows.shape[0]
    nan = math.nan
    width = bank.width
    flags = [0] * n
    delta = [nan] * n
    dt = [nan] * n
    estimate = [nan] * n
    std = [nan] * n
    innovation = [nan] * n
    nis = [nan] * n
    rejected = [False] * n
    score = [nan] * n
    extra = {name: [nan] * n for name in bank.extra_columns}
    group_of = bank.group_of.tolist()
    observed = bank.observed.tolist()
    kernels = [
        [_scalar_kernel(bank, g, v) for v in range(len(group.filters))] for g, group in enumerate(bank.groups)
    ]
    variant_of = [group.variant.tolist() for group in bank.groups]
    slots = [group.slot.tolist() for group in bank.groups]
    locals_ = [group.local.tolist() for group in bank.groups]
    columns = [
        (group.state_columns() if bank.spec.outputs.states else [], group.per_cell, group.cells)
        for group in bank.groups
    ]
    forecast_cols = [(extra[f"forecast_{h}"], extra[f"forecast_{h}_std"]) for h in bank.horizons]
    quality: dict[int, QualityCell] = {}
    lasts: dict[int, tuple[float, int]] = {}
    kernel_rows: list[dict[int, KernelRow]] = [{} for _ in bank.groups]
    scorer = bank.scorer if isinstance(bank.scorer, ContextualScorer) else None
    scored: dict[int, ContextualCell] = {}
    rows_l, ch_l, time_l, value_l = rows.tolist(), ch.tolist(), time_ns.tolist(), value.tolist()
    for i in np.argsort(time_ns, kind="stable").tolist():
        row, c, t, v = rows_l[i], ch_l[i], time_l[i], value_l[i]
        cell = row * width + c
        qc = quality.get(cell)
        if qc is None:
            qc = quality[cell] = QualityCell(bank.quality, row, c)
        flag, r_scale = qc.judge(t, v, now_ns)
        last = lasts.get(cell)
        if last is None:
            last = (float(bank.last_value[cell]), int(bank.last_time[cell]))
        last_value, last_time = last
        if last_time != _NEVER_INT:
            delta[i] = v - last_value
            dt[i] = (t - last_time) / 1e9
        lasts[cell] = (v, t) if t >= last_time else last
        g = group_of[c]
        if g >= 0:
            state_cols, per_cell, cells_per_twin = columns[g]
            srow = row * cells_per_twin + slots[g][c] if per_cell else row
            krow = kernel_rows[g].get(srow)
            if krow is None:
                krow = kernel_rows[g][srow] = KernelRow(bank.groups[g].state, srow)
            out = kernels[g][variant_of[g][c]].step(krow, locals_[g][c], t, v, r_scale)
            estimate[i], std[i], innovation[i], nis[i] = out[0], out[1], out[2], out[3]
            rejected[i] = out[8]
            flag |= (fl.GATED if out[5] else 0) | (fl.LATE if out[7] else 0) | (fl.RESET if out[6] else 0)
            for j in range(len(state_cols) // 2):
                extra[state_cols[2 * j]][i] = out[9][j]
                extra[state_cols[2 * j + 1]][i] = out[10][j]
            for j, (mean_col, std_col) in enumerate(forecast_cols):
                mean_col[i] = out[11][j]
                std_col[i] = out[12][j]
        flags[i] = flag
        if scorer is not None and not rejected[i] and observed[c]:
            sc = scored.get(cell)
            if sc is None:
                sc = scored[cell] = ContextualCell(scorer, row, c)
            score[i] = sc.score(t, v, innovation[i])
    for qc in quality.values():
        qc.store()
    for cell, (last_value, last_time) in lasts.items():
        bank.last_value[cell] = last_value
        bank.last_time[cell] = last_time
    for by_row in kernel_rows:
        for krow in by_row.values():
            krow.store()
    for sc in scored.values():
        sc.store()
    return Stages(
        np.array(flags, dtype=np.uint16),
        np.array(delta),
        np.array(dt),
        np.array(estimate),
        np.array(std),
        np.array(innovation),
        np.array(nis),
        np.array(rejected, dtype=bool),
        {name: np.array(col) for name, col in extra.items()},
        np.array(score),
    )


def _scalar_kernel(bank: TwinBank, g: int, v: int) -> ScalarKernel:
    """The per-reading form of the kernel of group ``g``'s filter ``v`` (its own, not the group's
    noise variants), kept on the bank (it caches transitions)."""
    own = bank.groups[g].filters[v][2]
    kernel = bank.scalar_kernels.get((g, v))
    if kernel is None or kernel.kernel is not own:
        kernel = bank.scalar_kernels[(g, v)] = ScalarKernel(own)
    return kernel
