"""Realistic sensor signals for simulated twins, deterministic for a seed.

Each (twin, channel) signal is: a per-twin mean, a daily cycle with a per-twin phase, a slow
linear drift, and Gaussian measurement noise. Faults are injected at random with recorded
ground truth:

- ``spike``  one reading far off (8 to 15 noise deviations, at least one daily amplitude),
- ``step``   an offset for several minutes,
- ``stuck``  the sensor repeats one value (a frozen reading),
- ``drift``  a ramp that grows over the fault's length.

Values depend only on (seed, chunk of twins, tick), so any partitioning of twins over
workers, and any restart from a tick, reproduces the same readings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dte_stream.spec.model import SimulatedChannelSpec
from dte_stream.times import NS_PER_S

__all__ = ["DEFAULT_PROFILES", "FAULT_KINDS", "ChunkSignals", "Fault", "profile_for"]

F64 = npt.NDArray[np.float64]
DAY_S = 86400.0
FAULT_KINDS = ("spike", "step", "stuck", "drift")
#: Faults are drawn per window of event time; at most one per (twin, channel) and window.
FAULT_WINDOW_S = 600.0

DEFAULT_PROFILES: dict[str, SimulatedChannelSpec] = {
    "temperature": SimulatedChannelSpec(
        mean=60.0, spread=5.0, daily_amplitude=4.0, noise=0.5, drift_per_day=0.5
    ),
    "pressure": SimulatedChannelSpec(
        mean=4.0, spread=0.3, daily_amplitude=0.15, noise=0.05, drift_per_day=-0.01
    ),
    "flow": SimulatedChannelSpec(mean=120.0, spread=10.0, daily_amplitude=15.0, noise=2.0, drift_per_day=0.0),
    "vibration": SimulatedChannelSpec(
        mean=2.0, spread=0.3, daily_amplitude=0.2, noise=0.1, drift_per_day=0.05
    ),
    "humidity": SimulatedChannelSpec(
        mean=45.0, spread=5.0, daily_amplitude=8.0, noise=1.0, drift_per_day=0.0
    ),
    "level": SimulatedChannelSpec(mean=1.5, spread=0.5, daily_amplitude=0.1, noise=0.01, drift_per_day=0.0),
}


def profile_for(channel: str, declared: dict[str, SimulatedChannelSpec]) -> SimulatedChannelSpec:
    """The declared profile of a channel, else the default for its name, else a generic one."""
    if channel in declared:
        return declared[channel]
    return DEFAULT_PROFILES.get(channel, SimulatedChannelSpec())


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault: ground truth for evaluating detectors and alerts."""

    twin_id: str
    channel: str
    kind: str
    start_ns: int
    end_ns: int
    magnitude: float

    def to_json_dict(self) -> dict[str, object]:
        return {
            "twin_id": self.twin_id,
            "channel": self.channel,
            "kind": self.kind,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "magnitude": self.magnitude,
        }


class ChunkSignals:
    """Generate readings for one chunk of twins (a fixed range of twin indices), tick by tick."""

    def __init__(
        self,
        *,
        seed: int,
        chunk: int,
        twin_ids: list[str],
        channels: list[str],
        profiles: list[SimulatedChannelSpec],
        start_ns: int,
        interval_ns: int,
        faults_per_twin_hour: float,
    ) -> None:
        self.seed = seed
        self.chunk = chunk
        self.twin_ids = np.asarray(twin_ids, dtype=np.str_)
        self.channels = np.asarray(channels, dtype=np.str_)
        self.start_ns = start_ns
        self.interval_ns = interval_ns
        n, c = len(twin_ids), len(channels)
        rng = np.random.default_rng([seed, chunk, 0xC0FFEE])
        mean = np.array([p.mean for p in profiles])
        spread = np.array([p.spread for p in profiles])
        self.mean = mean + rng.standard_normal((n, c)) * spread
        self.amplitude = np.array([p.daily_amplitude for p in profiles])[None, :] * rng.uniform(
            0.7, 1.3, (n, c)
        )
        self.phase = rng.uniform(0, 2 * np.pi, (n, 1))
        self.drift = np.array([p.drift_per_day for p in profiles])[None, :] * rng.uniform(0.5, 1.5, (n, c))
        self.noise = np.array([p.noise for p in profiles])[None, :] * np.ones((n, 1))
        window_prob = faults_per_twin_hour * FAULT_WINDOW_S / 3600.0 / max(c, 1)
        self.fault_prob = min(window_prob, 1.0)
        self._fault_windows: dict[int, list[tuple[int, int, int, int, int, float]]] = {}

    def restart_at(self, start_ns: int) -> None:
        """Move the event time of tick 0 (a live source starting its clock when it starts)."""
        self.start_ns = start_ns
        self._fault_windows.clear()

    def clean(self, t_ns: int) -> F64:
        """The noiseless signal of every (twin, channel) at event time ``t_ns``: shape (n, c)."""
        elapsed_s = (t_ns - self.start_ns) / NS_PER_S
        day_phase = 2 * np.pi * ((t_ns / NS_PER_S) % DAY_S) / DAY_S
        result: F64 = (
            self.mean + self.amplitude * np.sin(day_phase + self.phase) + self.drift * (elapsed_s / DAY_S)
        )
        return result

    def clean_one(self, t_ns: int, twin: int, channel: int) -> float:
        """The noiseless signal of one (twin, channel) at ``t_ns``."""
        elapsed_s = (t_ns - self.start_ns) / NS_PER_S
        day_phase = 2 * np.pi * ((t_ns / NS_PER_S) % DAY_S) / DAY_S
        return float(
            self.mean[twin, channel]
            + self.amplitude[twin, channel] * np.sin(day_phase + self.phase[twin, 0])
            + self.drift[twin, channel] * (elapsed_s / DAY_S)
        )

    def faults_in_window(self, window: int) -> list[tuple[int, int, int, int, int, float]]:
        """Faults starting in a window: (twin, channel, kind index, start_ns, end_ns, magnitude)."""
        cached = self._fault_windows.get(window)
        if cached is not None:
            return cached
        n, c = self.mean.shape
        rng = np.random.default_rng([self.seed, self.chunk, window, 0xFA017])
        hit = rng.random((n, c)) < self.fault_prob
        twins, chans = np.nonzero(hit)
        k = twins.shape[0]
        kinds = rng.integers(0, len(FAULT_KINDS), k)
        offset_s = rng.uniform(0, FAULT_WINDOW_S, k)
        length_s = rng.uniform(120, 600, k)
        sign = rng.choice([-1.0, 1.0], k)
        size = rng.uniform(8, 15, k)
        faults = []
        win_start = self.start_ns + int(window * FAULT_WINDOW_S * NS_PER_S)
        for j in range(k):
            tw, ch, kind = int(twins[j]), int(chans[j]), int(kinds[j])
            start = win_start + int(offset_s[j] * NS_PER_S)
            start = self.start_ns + -(-(start - self.start_ns) // self.interval_ns) * self.interval_ns
            if FAULT_KINDS[kind] == "spike":
                end = start + self.interval_ns
            else:
                end = start + int(length_s[j] * NS_PER_S)
            noise = float(self.noise[tw, ch])
            magnitude = float(sign[j] * max(size[j] * noise, float(self.amplitude[tw, ch]), 1e-3))
            faults.append((tw, ch, kind, start, end, magnitude))
        if len(self._fault_windows) > 8:
            self._fault_windows.pop(min(self._fault_windows))
        self._fault_windows[window] = faults
        return faults

    def new_faults(self, tick: int) -> list[Fault]:
        """Faults whose start falls on ``tick`` (reported once, when they begin)."""
        t = self.start_ns + tick * self.interval_ns
        window = int((t - self.start_ns) // int(FAULT_WINDOW_S * NS_PER_S))
        found = []
        for tw, ch, kind, start, end, mag in self.faults_in_window(window):
            if t <= start < t + self.interval_ns:
                found.append(
                    Fault(
                        str(self.twin_ids[tw]),
                        str(self.channels[ch]),
                        FAULT_KINDS[kind],
                        start,
                        end,
                        mag,
                    )
                )
        return found

    def values(self, tick: int) -> tuple[int, F64]:
        """Event time and the (n, c) readings of every twin and channel at ``tick``."""
        t = self.start_ns + tick * self.interval_ns
        rng = np.random.default_rng([self.seed, self.chunk, tick])
        values = self.clean(t) + rng.standard_normal(self.mean.shape) * self.noise
        window = int((t - self.start_ns) // int(FAULT_WINDOW_S * NS_PER_S))
        for w in (window - 1, window):
            if w < 0:
                continue
            for tw, ch, kind, start, end, mag in self.faults_in_window(w):
                if not start <= t < end:
                    continue
                name = FAULT_KINDS[kind]
                if name in ("spike", "step"):
                    values[tw, ch] += mag
                elif name == "drift":
                    values[tw, ch] += mag * (t - start) / (end - start)
                else:  # stuck: repeat the clean value at the fault's start
                    values[tw, ch] = self.clean_one(start, tw, ch)
        return t, values
