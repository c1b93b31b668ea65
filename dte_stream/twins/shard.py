"""The twin shard: every twin whose id hashes to one shard, with its alerts, clock and timers.

A :class:`TwinShard` is the unit of twin state. It owns one :class:`~dte_stream.twins.bank.TwinBank`
per twin type (created when the type's first reading arrives), the
:class:`~dte_stream.alerts.rules.AlertEngine` of each type with rules, the clock policy, the
timers (stale sensors, alert holds and deadmen, idle-twin eviction) and the acknowledgements
written by ``dte-stream alerts ack``. Whoever runs twins drives shards through six calls, each
returning one :class:`ShardUpdate` (estimates, readings refused as too late or as copies of one
applied, alert events):

- :meth:`~TwinShard.on_batch` applies routed readings, :meth:`~TwinShard.on_timer` runs the
  timers, :meth:`~TwinShard.on_eof` gives the end of a finite input a last look (by the input's
  final event time, also on the wall clock);
- :meth:`~TwinShard.next_due` says when (wall clock) the shard wants its next timer;
- :meth:`~TwinShard.snapshot` and :meth:`TwinShard.restore` checkpoint it.

The Bytewax dataflow (:mod:`dte_stream.dataflow`) is a thin adapter around these calls, and
replays (:mod:`dte_stream.replay`) call them directly with no engine. The shard imports no
engine and no driver; it is the one module of ``dte_stream.twins`` that uses the alert rules.

**Clocks.** Readings carry event times; timers need a *now*: the twin clock of
:mod:`dte_stream.twins.shard_clock` (event time in replays, the input's progress in live runs).

**Changed twins.** :meth:`~TwinShard.take_changed` returns the current state of every twin that
changed since its last call (and the twins evicted), for the twin state view that shards
publish once per epoch.

>>> import numpy as np
>>> from dte_stream.readings import ReadingBatch
>>> from dte_stream.spec import parse_spec
>>> from dte_stream.twins.routing import Router
>>> spec = parse_spec({"name": "x", "sources": [{"kind": "simulator", "twin_type": "pump"}],
...     "twin_types": [{"name": "pump", "channels": {"temp": {}}}],
...     "sinks": [{"kind": "local_store"}], "engine": {"clock": "event"}})
>>> readings = ReadingBatch.from_columns(["p1", "p1"], ["temp", "temp"], [0, 10**9], [20.0, 22.0])
>>> [(key, batch)] = Router(spec).route(readings, source="doc", twin_type="pump").routed
>>> shard = TwinShard(spec, key)
>>> update = shard.on_batch([batch])
>>> [len(b) for b in update.estimates], np.round(update.estimates[0].estimate, 2).tolist()
([2], [20.0, 21.0])
>>> [twin for twin, _ in shard.take_changed()[0].documents()]
['p1']
>>> TwinShard.restore(spec, key, shard.snapshot()).twins()
1
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from dte_stream.alerts.rules import AlertEngine
from dte_stream.batches import AlertEvent, DeadLetter, EstimateBatch, TwinStates
from dte_stream.metrics import METRICS, set_alert_gauges
from dte_stream.spec.model import DataflowSpec
from dte_stream.spec.twins import TwinTypeSpec
from dte_stream.times import NS_PER_S, now_ns
from dte_stream.twins.bank import TwinBank
from dte_stream.twins.checkpoint import retuned_bank
from dte_stream.twins.routing import TypedBatch, shard_key, shard_of
from dte_stream.twins.shard_clock import NEVER, InputClock, twin_now
from dte_stream.twins.shard_state import SHARD_FORMAT, restored_banks, shard_header
from dte_stream.twins.shard_update import ShardUpdate, merge_updates
from dte_stream.twins.state_view import twin_states

__all__ = ["SHARD_FORMAT", "AckSource", "InputClock", "ShardUpdate", "TwinShard"]


#: How often idle twins are looked for (twin clock), the shortest timer, the timer of
#: event-time runs (other shards move the clock) and how often acknowledgements are read.
EVICTION_CHECK_NS = 60 * NS_PER_S
MIN_TIMER_NS = NS_PER_S // 2
EVENT_TIMER_NS = NS_PER_S
ACK_POLL_NS = 2 * NS_PER_S

if TYPE_CHECKING:
    from dte_stream.reload import LiveSpec

log = logging.getLogger(__name__)


class AckSource(Protocol):
    """Where acknowledgements come from (:class:`~dte_stream.alerts.store.AckInbox`)."""

    def new_for(self, twin_type: str, reader: object = None) -> list[dict[str, Any]]: ...


class TwinShard:
    """The twins of one shard, every twin type; see the module docstring for the calls and clocks.

    ``key`` names the shard (its state key, :func:`~dte_stream.twins.routing.shard_key`); when
    None it is found from the first reading (engines that do not pass the key to the state).
    ``clock`` is the input clock of the process (one is made when none is given); ``acks`` the
    acknowledgement inbox (None: acknowledgements are not read); ``wall`` the wall clock;
    ``live`` the process's live spec, whose reloads the shard takes at its next call (:meth:`follow`).
    """

    def __init__(
        self,
        spec: DataflowSpec,
        key: str | None = None,
        *,
        clock: InputClock | None = None,
        acks: AckSource | None = None,
        wall: Callable[[], int] = now_ns,
        live: LiveSpec | None = None,
    ) -> None:
        self.spec = spec
        self.live = live
        self.generation = 0  # of the live spec: the first call takes any reload made before it
        self.key = key or ""
        self.clock = clock if clock is not None else InputClock(wall)
        self.acks = acks
        self.wall = wall
        self.event_clock = spec.engine.clock == "event"
        self.banks: dict[str, TwinBank] = {}
        self.alert_engines: dict[str, AlertEngine] = {}
        self.watermark = NEVER
        self.watermark_seen_at = NEVER  # wall time of this shard's last batch
        self.next_eviction = NEVER
        self.next_ack_poll = 0
        self._alert_twins: dict[str, set[str]] = {}  # twins whose alerts changed, for the view
        #: Called with (twin type, twin ids) when idle twins are evicted (the twin view drops them).
        self.on_evicted: Callable[[str, list[str]], None] | None = None

    # -- the six calls ------------------------------------------------------------------------

    def on_batch(self, batches: Sequence[TypedBatch]) -> ShardUpdate:
        """Apply routed readings (any twin types, in any order; each twin's in time order)."""
        self.follow()
        by_type: dict[str, list[TypedBatch]] = {}
        for b in batches:
            if len(b):
                by_type.setdefault(b.twin_type, []).append(b)
        estimates: list[EstimateBatch] = []
        rejected: list[DeadLetter] = []
        events: list[AlertEvent] = self._acknowledged()
        for twin_type, group in by_type.items():
            batch = TypedBatch.concat(group)
            self.watermark = max(self.watermark, int(batch.readings.time_ns.max()))
            self.watermark_seen_at = self.wall()
            if not self.key:
                self.key = shard_key(shard_of(str(batch.readings.twin_id[0]), self.spec.engine.shards))
            bank = self._bank(twin_type)
            update = bank.update(batch, self._reading_now())
            estimates.append(update.estimates)
            rejected += update.rejected
            if update.copies:
                METRICS.add("duplicate_readings", update.copies - update.conflicts, kind="copy")
                if update.conflicts:
                    METRICS.add("duplicate_readings", update.conflicts, kind="conflict")
            engine = self.alert_engines.get(twin_type)
            if engine is not None:
                events += self._noted(engine.update(update.estimates, self.now()))
            METRICS.add("readings_processed", len(batch))
        self._gauge()
        out = ShardUpdate(estimates, rejected, events)
        if self.event_clock:
            return merge_updates(out, self.on_timer())
        return out

    def on_timer(self) -> ShardUpdate:
        """Run the timers by the twin clock: stale sensors, alert timers, acknowledgements, eviction."""
        return self._timers(self.now())

    def _timers(self, now: int) -> ShardUpdate:
        self.follow()
        estimates: list[EstimateBatch] = []
        events: list[AlertEvent] = []
        for twin_type, bank in self.banks.items():
            engine = self.alert_engines.get(twin_type)
            stale = bank.due(now)
            if stale is not None:
                METRICS.add("stale_sensors", len(stale))
                estimates.append(stale)
                if engine is not None:
                    events += self._noted(engine.update(stale, now))
            if engine is not None:
                events += self._noted(engine.due(now))
        events += self._acknowledged()
        if now >= self.next_eviction:
            self._evict(now)
            self.next_eviction = now + EVICTION_CHECK_NS
        elif events:
            self._gauge()
        return ShardUpdate(estimates, [], events)

    def on_eof(self) -> ShardUpdate:
        """The input ended (a replay, a drained topic): a last look by the input's final time.

        In event time that is the twin clock. On the wall clock it is the input's progress
        without the wall time since (the input did not fall silent, it ended): a backfill gives
        the stale sensors its own times justify, the same however fast it was read, and none
        for the time it took.
        """
        if not self.banks:
            return ShardUpdate()
        progress = max(self.watermark, self.clock.now())
        if self.event_clock:
            return self.on_timer()
        return self._timers(progress) if progress != NEVER else ShardUpdate()

    def next_due(self) -> int | None:
        """Wall-clock time (ns) of the next timer this shard needs, or None when nothing is scheduled."""
        if not self.banks:
            return None
        wall = self.wall()
        if self.event_clock:  # other shards move the clock: look again soon
            return wall + EVENT_TIMER_NS
        now = self.now()
        due: list[int] = []
        for twin_type, bank in self.banks.items():
            bank_due = bank.next_due_ns()
            if bank_due is not None:
                due.append(bank_due)
            engine = self.alert_engines.get(twin_type)
            if engine is not None:
                alert_due = engine.next_due_ns()
                if alert_due is not None:
                    due.append(alert_due)
            if bank.spec.ttl is not None:
                due.append(self.next_eviction)
        at = None if not due else wall + (min(due) - now)  # twin clock -> wall clock
        if self.alert_engines and self.acks is not None:
            poll = wall + ACK_POLL_NS
            at = poll if at is None else min(at, poll)
        return None if at is None else max(at, wall + MIN_TIMER_NS)

    def snapshot(self, *, copy: bool = True) -> dict[str, Any]:
        """The shard's state: compact arrays per twin type (:mod:`dte_stream.twins.shard_state`;
        ``copy=False``: the banks' arrays as views where they can be, to pickle at once)."""
        if not self.banks:
            return {}
        return {
            **shard_header(self.spec, self.key, self.watermark, self.alert_engines),
            "banks": {name: bank.snapshot(copy=copy) for name, bank in self.banks.items()},
        }

    @classmethod
    def restore(
        cls,
        spec: DataflowSpec,
        key: str | None,
        snap: dict[str, Any] | None,
        *,
        clock: InputClock | None = None,
        acks: AckSource | None = None,
        wall: Callable[[], int] = now_ns,
        live: LiveSpec | None = None,
    ) -> TwinShard:
        """A shard carrying on from :meth:`snapshot`; an empty snapshot is a shard that saw nothing.

        Raises :class:`~dte_stream.errors.SpecError` (naming the fix) when the state does not
        fit ``spec``: a twin type it no longer declares, a changed state layout, or the state
        layout of an older dte-stream (one state per twin type and shard).
        """
        shard = cls(spec, key, clock=clock, acks=acks, wall=wall, live=live)
        if not snap:
            return shard
        shard.key = shard.key or str(snap.get("key", ""))
        for name, (type_spec, bank) in restored_banks(spec, shard.key, snap).items():
            shard.banks[name] = bank
            shard._start_alerts(type_spec, snap.get("alerts", {}).get(name))
        shard.watermark = int(snap.get("watermark", NEVER))
        shard.clock.advance(shard.watermark)
        shard._gauge()
        return shard

    def follow(self) -> None:
        """Take the live spec's latest accepted change (a reload), if there is one since the last look.

        The banks carry on under the new settings (:func:`~dte_stream.twins.checkpoint.retuned_bank`)
        and the alert engines under the new rules, keeping their alerts (the rules' state is kept
        by rule name and kind), so the next readings are judged by the new spec. The live spec
        accepts only changes that keep every twin type's layout, so nothing here can refuse.
        """
        if self.live is None or self.live.generation == self.generation:
            return
        self.generation, spec = self.live.current()
        for name, bank in list(self.banks.items()):
            type_spec, old_alerts = spec.twin_type(name), bank.spec.alerts
            self.banks[name] = retuned_bank(bank, type_spec)
            if type_spec.alerts != old_alerts:
                engine = self.alert_engines.pop(name, None)
                self._start_alerts(type_spec, engine.snapshot() if engine is not None else None)
        self.spec = spec

    # -- reading the shard --------------------------------------------------------------------

    def twins(self) -> int:
        """How many twins the shard holds."""
        return sum(len(bank) for bank in self.banks.values())

    def take_changed(self) -> list[TwinStates]:
        """The current state of the twins changed since the last call, per twin type; then forgets.

        A twin has changed when a reading reached it, a timer flagged one of its sensors stale,
        or one of its alerts changed state. Each :class:`~dte_stream.twins.state_view.TwinStates`
        holds, column-wise, every changed twin's last reading time, estimate, std, flags and
        anomaly score per channel, the mean and covariance of every filter state, and its alert
        states; ``removed`` lists the twins evicted since. Meant to be called once per epoch
        (the dataflow adapter does it as it snapshots); cost grows with the changed twins only.
        """
        out = []
        for twin_type, bank in self.banks.items():
            rows, removed = bank.take_changed()
            touched = self._alert_twins.pop(twin_type, set())
            if touched:
                extra = np.array(sorted(touched), dtype=np.str_)
                known, found = bank.index.lookup(extra)
                rows = np.union1d(rows, known[found])
            if rows.size or removed:
                engine = self.alert_engines.get(twin_type)
                out.append(twin_states(bank, rows, removed, engine, self.now()))
        return out

    def now(self) -> int:
        """The twin clock of the timers (:mod:`dte_stream.twins.shard_clock`)."""
        # In a cluster, the process that reads a source may not be the one that holds the shard:
        # this process's input clock has then never moved, and the shard's own batches say when
        # the input was last seen.
        return twin_now(
            event_clock=self.event_clock,
            progress=max(self.watermark, self.clock.now()),
            seen_at=max(self.clock.seen_at(), self.watermark_seen_at),
            wall=self.wall(),
        )

    # -- inside -------------------------------------------------------------------------------

    def _reading_now(self) -> int:
        """The clock readings are checked against (clock skew): event time, or the wall clock."""
        return max(self.watermark, self.clock.now()) if self.event_clock else self.wall()

    def _bank(self, twin_type: str) -> TwinBank:
        bank = self.banks.get(twin_type)
        if bank is None:
            type_spec = self.spec.twin_type(twin_type)
            bank = self.banks[twin_type] = TwinBank(type_spec)
            self._start_alerts(type_spec, None)
        return bank

    def _start_alerts(self, type_spec: TwinTypeSpec, saved: dict[str, Any] | None) -> None:
        if not type_spec.alerts.rules:
            return
        name, channels = type_spec.name, type_spec.channel_names()
        if saved:
            try:
                self.alert_engines[name] = AlertEngine.restore(name, channels, type_spec.alerts, saved)
                return
            except (KeyError, ValueError, TypeError) as exc:
                log.warning("alert state of twin type %r not restored (%s); alerts start afresh", name, exc)
        self.alert_engines[name] = AlertEngine(name, channels, type_spec.alerts)

    def _noted(self, events: list[AlertEvent]) -> list[AlertEvent]:
        """``events``, their twins noted as changed for the view."""
        for e in events:
            self._alert_twins.setdefault(e.twin_type, set()).add(e.twin_id)
        return events

    def _acknowledged(self) -> list[AlertEvent]:
        """Acknowledgements recorded since the last look (at most once a second, wall clock)."""
        if not self.alert_engines or self.acks is None:
            return []
        wall = self.wall()
        if wall < self.next_ack_poll:
            return []
        self.next_ack_poll = wall + NS_PER_S
        events = []
        for twin_type, engine in self.alert_engines.items():
            for ack in self.acks.new_for(twin_type, self):
                event = engine.acknowledge(str(ack["alert_id"]), str(ack["by"]), wall)
                if event is not None:
                    events.append(event)
        return self._noted(events)

    def _evict(self, now: int) -> None:
        for twin_type, bank in self.banks.items():
            evicted = bank.evict_idle(now)
            if evicted:
                METRICS.add("twins_evicted", len(evicted))
                if self.on_evicted is not None:
                    self.on_evicted(twin_type, evicted)
                engine = self.alert_engines.get(twin_type)
                if engine is not None:
                    engine.forget(evicted)
        self._gauge()

    def _gauge(self) -> None:
        """Twins held and alerts by state, per twin type of this shard
        (``dte_twins_active``, ``dte_alerts_active``).
        """
        for twin_type, bank in self.banks.items():
            METRICS.set_gauge("twins", f"{twin_type}/{self.key}", len(bank))
            engine = self.alert_engines.get(twin_type)
            set_alert_gauges(f"{twin_type}/{self.key}", engine.counts() if engine is not None else None)
