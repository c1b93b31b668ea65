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
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from dte_stream.times import NS_PER_S
from dte_stream.twins import flags as fl
from dte_stream.twins.contextual import ContextualScorer
from dte_stream.twins.contextual_scalar import ContextualCell
from dte_stream.twins.kalman_scalar import KernelRow, ScalarKernel
from dte_stream.twins.quality_scalar import QualityCell

if TYPE_CHECKING:
    from dte_stream.twins.bank import TwinBank

__all__ = ["Copies", "Stages", "by_reading", "by_rounds", "copies_of", "rounds_of", "supports_by_reading"]

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


def rounds_of(cells: IntP, time_ns: I64, order: IntP | None = None) -> list[IntP]:
    """Split reading positions into rounds: each round has every cell at most once, in time order.

    ``order`` is ``np.lexsort((time_ns, cells))`` when the caller has it already.

    >>> [r.tolist() for r in rounds_of(np.array([3, 1, 3, 3]), np.array([20, 5, 10, 30]))]
    [[1, 2], [0], [3]]
    """
    n = cells.shape[0]
    if n == 0:
        return []
    if order is None:
        order = np.lexsort((time_ns, cells))
    sorted_cells = cells[order]
    starts = np.empty(n, dtype=bool)
    starts[0] = True
    np.not_equal(sorted_cells[1:], sorted_cells[:-1], out=starts[1:])
    if starts.all():
        return [order]
    group = np.cumsum(starts) - 1
    rank = np.arange(n) - np.flatnonzero(starts)[group]
    by_rank = order[np.argsort(rank, kind="stable")]
    counts = np.bincount(rank)
    return np.split(by_rank, np.cumsum(counts)[:-1])


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
    bank: TwinBank, rows: IntP, ch: IntP, time_ns: I64, value: F64, now_ns: int, cell_rounds: list[IntP]
) -> Stages:
    """The stages over rounds, vectorised; ``cell_rounds`` are the rounds of the (twin, channel) cells."""
    n = rows.shape[0]
    cells = rows * bank.width + ch
    flags = np.zeros(n, dtype=np.uint16)
    r_scale = np.ones(n)
    delta = np.full(n, np.nan)
    dt = np.full(n, np.nan)
    for idx in cell_rounds:
        q = bank.quality.update(rows[idx], ch[idx], time_ns[idx], value[idx], now_ns)
        flags[idx] = q.flags
        r_scale[idx] = q.r_scale
        c = cells[idx]
        last_time = bank.last_time[c]
        t, v = time_ns[idx], value[idx]
        seen = last_time != NEVER
        delta[idx] = np.where(seen, v - bank.last_value[c], np.nan)
        dt[idx] = np.where(seen, (t - last_time) / NS_PER_S, np.nan)
        newer = t >= last_time
        if newer.all():
            bank.last_value[c] = v
            bank.last_time[c] = t
        else:
            bank.last_value[c[newer]] = v[newer]
            bank.last_time[c[newer]] = t[newer]

    estimate = np.full(n, np.nan)
    std = np.full(n, np.nan)
    innovation = np.full(n, np.nan)
    nis = np.full(n, np.nan)
    s = np.full(n, np.nan)
    rejected = np.zeros(n, dtype=bool)
    extra = {name: np.full(n, np.nan) for name in bank.extra_columns}
    group_of = bank.group_of[ch]
    for g, group in enumerate(bank.groups):
        sel = np.flatnonzero(group_of == g) if len(bank.groups) > 1 else np.arange(n)
        if sel.size == 0:
            continue
        srows = group.state_rows(rows[sel], ch[sel])
        state_cols = group.state_columns() if bank.spec.outputs.states else []
        for idx in rounds_of(srows, time_ns[sel]):
            pos = sel[idx]
            out = group.kernel.step(
                group.state, srows[idx], group.local[ch[pos]], time_ns[pos], value[pos], r_scale[pos]
            )
            estimate[pos] = out.channel_estimate
            std[pos] = out.channel_std
            innovation[pos] = out.innovation
            nis[pos] = out.nis
            s[pos] = out.s
            rejected[pos] = out.rejected
            flags[pos] |= (
                out.gated.astype(np.uint16) * fl.GATED
                | out.late.astype(np.uint16) * fl.LATE
                | out.reset.astype(np.uint16) * fl.RESET
            )
            for j, _state in enumerate(state_cols[::2]):
                extra[state_cols[2 * j]][pos] = out.estimate[:, j]
                extra[state_cols[2 * j + 1]][pos] = out.std[:, j]
            for j, h in enumerate(bank.horizons):
                extra[f"forecast_{h}"][pos] = out.forecast[:, j]
                extra[f"forecast_{h}_std"][pos] = out.forecast_std[:, j]

    score = np.full(n, np.nan)
    if bank.scorer is not None:
        for idx in cell_rounds:
            live = idx[~rejected[idx] & bank.observed[ch[idx]]]
            if live.size:
                score[live] = bank.scorer.score(
                    rows[live], ch[live], time_ns[live], value[live], innovation[live], s[live]
                )
    return Stages(flags, delta, dt, estimate, std, innovation, nis, rejected, extra, score)


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
    kernels = [_scalar_kernel(bank, g) for g in range(len(bank.groups))]
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
            out = kernels[g].step(krow, locals_[g][c], t, v, r_scale)
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


def _scalar_kernel(bank: TwinBank, g: int) -> ScalarKernel:
    """The per-reading form of group ``g``'s kernel, kept on the bank (it caches transitions)."""
    kernel = bank.scalar_kernels.get(g)
    if kernel is None or kernel.kernel is not bank.groups[g].kernel:
        kernel = bank.scalar_kernels[g] = ScalarKernel(bank.groups[g].kernel)
    return kernel
