"""What every variant of benchmarks/bench_e2e.py shares: the records, the Kalman step, the points.

Standard library, orjson and numpy only, so that the Quix Streams baseline (which runs in a
virtual environment of its own, without dte-stream) can import it too.

The records are those of ``dte-stream simulate --codec json``: the twin id as key, the value a
one-element JSON array ``[{"twin_id": ..., "channel": ..., "time_ns": ..., "value": ...}]``. Each
twin reports its three channels once a second; the values are a constant per twin and channel
plus bounded noise, so that no filter ever gates a reading (every variant applies every one).

The Kalman step is dte-stream's random-walk filter with the spec's settings
(``dataflows/kafka_to_influxdb.yaml``): prior level 0 with variance 1e4, process noise ``q`` per
second, measurement noise ``r``; the first reading of a channel updates the prior without a
predict. Every variant writes the same points: measurement ``dte_readings``, tags ``channel``
and ``twin_id``, fields ``value``, ``estimate``, ``std``, the reading's time.
"""

from __future__ import annotations

import bisect
import http.client
import json
import math
import os
import time
import urllib.parse
from dataclasses import dataclass

#: (channel, process noise per second, measurement noise variance): the spec's pump channels.
CHANNELS: tuple[tuple[str, float, float], ...] = (
    ("temperature", 0.001, 0.25),
    ("pressure", 0.00001, 0.0025),
    ("flow", 0.05, 4.0),
)
NOISE = {name: (q, r) for name, q, r in CHANNELS}
PRIOR_VARIANCE = 1e4
MEASUREMENT = "dte_readings"
NS_PER_S = 1_000_000_000


def twin_id(index: int) -> str:
    return f"pump-{index:06d}"


def record(i: int, twins: int, start_ns: int, time_ns: int | None = None) -> tuple[bytes, bytes]:
    """Record ``i`` of the benchmark topic: (key, value). Deterministic, no randomness.

    Its time is ``start_ns`` plus its tick in seconds (plus a few us per twin), or ``time_ns``.
    """
    tick, rest = divmod(i, 3 * twins)
    twin, channel = divmod(rest, 3)
    name, _, r = CHANNELS[channel]
    base = 10.0 + (twin % 97) + channel * 3.0
    # bounded noise within +-1 measurement std: a Weyl sequence, fast and reproducible
    noise = ((i * 0.6180339887498949) % 1.0) * 2.0 - 1.0
    value = round(base + noise * math.sqrt(r), 6)
    t = start_ns + tick * NS_PER_S + twin * 1000 if time_ns is None else time_ns
    key = twin_id(twin).encode()
    payload = b'[{"twin_id":"%s","channel":"%s","time_ns":%d,"value":%r}]' % (
        key,
        name.encode(),
        t,
        value,
    )
    return key, payload


class ScalarKalman:
    """One channel's random-walk filter, one reading at a time (what a per-event pipeline does)."""

    __slots__ = ("last_ns", "p", "q", "r", "x")

    def __init__(self, q: float, r: float) -> None:
        self.q, self.r = q, r
        self.x = 0.0
        self.p = PRIOR_VARIANCE
        self.last_ns: int | None = None

    def step(self, time_ns: int, z: float) -> tuple[float, float]:
        """Apply ``z`` at ``time_ns``; the estimate and its std after it."""
        if self.last_ns is not None and time_ns > self.last_ns:
            self.p += self.q * (time_ns - self.last_ns) / NS_PER_S
        s = self.p + self.r
        k = self.p / s
        self.x += k * (z - self.x)
        self.p = (1.0 - k) * (1.0 - k) * self.p + k * k * self.r
        if self.last_ns is None or time_ns > self.last_ns:
            self.last_ns = time_ns
        return self.x, math.sqrt(self.p)


def line(twin: str, channel: str, time_ns: int, value: float, estimate: float, std: float) -> str:
    """One point of the common output shape (ids of the benchmark need no escaping)."""
    return (
        f"{MEASUREMENT},channel={channel},twin_id={twin} "
        f"value={value!r},estimate={estimate!r},std={std!r} {time_ns}"
    )


#: Where a baseline writes the histogram of its points' stored lag (set by the latency runs):
#: the same buckets and the same clock points as dte-stream's ``dte_influxdb_stored_lag_seconds``.
LAG_FILE = os.environ.get("E2E_LAG_FILE")
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
_lag_counts = [0] * (len(LAG_BUCKETS) + 1)


def _record_lag(lines: list[str], acked_ns: int) -> None:
    """Count each line's (acknowledgement - timestamp) in the buckets; rewrite the file."""
    for row in lines:
        lag = (acked_ns - int(row.rsplit(" ", 1)[1])) / NS_PER_S
        _lag_counts[bisect.bisect_left(LAG_BUCKETS, lag)] += 1
    assert LAG_FILE is not None
    with open(LAG_FILE + ".tmp", "w") as f:
        json.dump(_lag_counts, f)
    os.replace(LAG_FILE + ".tmp", LAG_FILE)


def lag_quantile(counts: list[int], q: float) -> float:
    """The bucket bound under which a fraction ``q`` of the points lies (inf past the last).

    >>> lag_quantile([90, 9, 1] + [0] * 10, 0.99)
    0.1
    """
    total = sum(counts)
    running = 0
    for bound, n in zip((*LAG_BUCKETS, math.inf), counts, strict=True):
        running += n
        if total and running >= q * total:
            return bound
    return math.nan


@dataclass
class InfluxWriter:
    """POST /write of InfluxDB 1.x over one kept-alive connection."""

    url: str
    database: str

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 8086, timeout=60)
        self.path = "/write?" + urllib.parse.urlencode({"db": self.database, "precision": "ns"})

    def write(self, lines: list[str]) -> None:
        if not lines:
            return
        body = "\n".join(lines).encode()
        for attempt in range(10):  # retried like dte-stream's sink: a busy server times out
            try:
                self.conn.request("POST", self.path, body)
                response = self.conn.getresponse()
                text = response.read()
                if response.status == 204:
                    if LAG_FILE:
                        _record_lag(lines, time.time_ns())
                    return
                if response.status < 500 or attempt == 9:
                    raise RuntimeError(f"/write answered {response.status}: {text[:200]!r}")
            except (http.client.HTTPException, OSError):
                if attempt == 9:
                    raise
                self.conn.close()
            time.sleep(min(5.0, 0.1 * 2**attempt))
