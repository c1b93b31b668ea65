"""The built-in sensor simulator as a Bytewax source (the embedded default input)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from dte_stream.batches import ReadingBatch, SourceBatch
from dte_stream.connectors.simulator.signals import ChunkSignals, profile_for
from dte_stream.shutdown import stop_requested
from dte_stream.spec.model import SimulatorSourceSpec
from dte_stream.times import NS_PER_S, now_ns

__all__ = ["CHUNK_TWINS", "SimulatorSource", "twin_ids"]

#: Twins per chunk: the unit of generation (one chunk at one tick).
CHUNK_TWINS = 500
#: Readings per batch when generating as fast as possible.
MAX_BATCH = 4096


def twin_ids(prefix: str, count: int) -> list[str]:
    """The simulated twins' ids: ``prefix-0000`` ... (width grows with the count)."""
    width = max(4, len(str(count - 1)))
    return [f"{prefix}-{i:0{width}d}" for i in range(count)]


@dataclass(frozen=True, slots=True)
class _Plan:
    spec: SimulatorSourceSpec
    channels: list[str]
    start_ns: int
    chunks: int


class _SimulatorPartition(StatefulSourcePartition[SourceBatch, dict[str, int]]):
    def __init__(self, plan: _Plan, part: int, parts: int, resume: dict[str, int] | None) -> None:
        spec = plan.spec
        self.spec = spec
        self.plan = plan
        self.chunks = list(range(part, plan.chunks, parts))
        ids = twin_ids(spec.twin_type, spec.twins)
        profiles = [profile_for(c, spec.channels) for c in plan.channels]
        start_ns = resume["start_ns"] if resume else plan.start_ns
        self.signals = [
            ChunkSignals(
                seed=spec.seed,
                chunk=c,
                twin_ids=ids[c * CHUNK_TWINS : (c + 1) * CHUNK_TWINS],
                channels=plan.channels,
                profiles=profiles,
                start_ns=start_ns,
                interval_ns=round(spec.interval * NS_PER_S),
                faults_per_twin_hour=spec.faults_per_twin_hour,
            )
            for c in self.chunks
        ]
        self.start_ns = start_ns
        self.tick = resume["tick"] if resume else 0
        self.pos = resume["pos"] if resume else 0
        n_twins = sum(s.twin_ids.shape[0] for s in self.signals)
        self.readings_per_tick = n_twins * len(plan.channels)
        share = n_twins / spec.twins
        self.rate = None if spec.rate is None else spec.rate * share
        self.deadline = None if spec.duration is None else time.monotonic() + spec.duration
        self.next_at = time.monotonic()
        self.tick_wall = time.monotonic()
        # Real time with no start given: the clock starts with the first reading, not when the
        # dataflow was built (seconds earlier), and a restart carries on from now, not from
        # where the snapshot left off, so every reading is stamped when it is emitted.
        self.clock_due = spec.start is None and spec.rate is None

    def _finished(self) -> bool:
        if not self.signals or stop_requested():
            return True
        if self.spec.ticks is not None and self.tick >= self.spec.ticks:
            return True
        return self.deadline is not None and time.monotonic() >= self.deadline

    def next_batch(self) -> list[SourceBatch]:
        if self._finished():
            raise StopIteration
        now = time.monotonic()
        if now < self.next_at:
            return []
        if self.clock_due:
            self.clock_due = False
            self._start_clock(now)
        parts: list[ReadingBatch] = []
        size = 0
        # As fast as possible: fill a batch of about MAX_BATCH readings (fewer Bytewax items,
        # fewer bank updates); otherwise one chunk-tick per call keeps the pacing smooth.
        while True:
            parts.append(self._generate())
            size += len(parts[-1])
            if self.rate != 0 or size >= MAX_BATCH or self._finished():
                break
        batch = ReadingBatch.concat(parts)
        if self.rate is None:  # real time: every twin reports once per interval
            if self.pos == 0:
                self.next_at = self.tick_wall + self.spec.interval
                self.tick_wall = self.next_at
        elif self.rate > 0:
            self.next_at = max(self.next_at, now - 1.0) + len(batch) / self.rate
        return [SourceBatch(self.spec.name, batch, self.spec.twin_type)]

    def _start_clock(self, now: float) -> None:
        """Stamp the next tick with the wall clock: tick 0 moves to now minus the ticks already made."""
        interval_ns = round(self.spec.interval * NS_PER_S)
        self.start_ns = now_ns() - self.tick * interval_ns
        for sig in self.signals:
            sig.restart_at(self.start_ns)
        self.tick_wall = now

    def _generate(self) -> ReadingBatch:
        """The readings of the current chunk at the current tick; advances to the next."""
        sig = self.signals[self.pos]
        t, values = sig.values(self.tick)
        n, c = values.shape
        batch = ReadingBatch.from_columns(
            np.repeat(sig.twin_ids, c),
            np.tile(sig.channels, n),
            np.full(n * c, t, dtype=np.int64),
            values.reshape(-1),
        )
        faults = sig.new_faults(self.tick)
        if faults and self.spec.ground_truth is not None:
            self._record(faults)
        self.pos += 1
        if self.pos == len(self.signals):
            self.pos = 0
            self.tick += 1
        return batch

    def _record(self, faults: list[Any]) -> None:
        path = Path(str(self.spec.ground_truth))
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as fh:
            fh.write(b"".join(orjson.dumps(f.to_json_dict()) + b"\n" for f in faults))

    def next_awake(self) -> datetime | None:
        delay = self.next_at - time.monotonic()
        if delay <= 0:
            return None
        return datetime.now(UTC) + timedelta(seconds=delay)

    def snapshot(self) -> dict[str, int]:
        return {"tick": self.tick, "pos": self.pos, "start_ns": self.start_ns}


class SimulatorSource(FixedPartitionedSource[SourceBatch, dict[str, int]]):
    """Simulated twins of one type: realistic signals, injected faults, deterministic for a seed.

    Twins are generated in chunks of :data:`CHUNK_TWINS`; chunks are spread over the
    partitions and partitions over workers. Resume state per partition is the next tick, so a
    restart through Bytewax recovery continues the same sequence of readings. Stops after
    ``duration`` seconds of wall time or ``ticks`` readings per twin and channel, if set.
    """

    def __init__(self, spec: SimulatorSourceSpec, channels: list[str]) -> None:
        self.spec = spec
        chunks = math.ceil(spec.twins / CHUNK_TWINS)
        start = spec.start if spec.start is not None else now_ns() // NS_PER_S * NS_PER_S
        self.plan = _Plan(spec, channels, start, chunks)
        self.parts = min(spec.partitions, chunks)

    def list_parts(self) -> list[str]:
        return [f"{self.spec.name}-{i}" for i in range(self.parts)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: dict[str, int] | None
    ) -> _SimulatorPartition:
        index = int(for_part.rsplit("-", 1)[1])
        return _SimulatorPartition(self.plan, index, self.parts, resume_state)
