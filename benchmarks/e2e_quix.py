"""The Quix Streams baseline of benchmarks/bench_e2e.py (runs in its own virtual environment).

    .cache/bench-quix-venv/bin/python benchmarks/e2e_quix.py --bootstrap B --topic T --influx URL --database D

A Quix Streams application as its documentation suggests writing one: the JSON value
deserialised by Quix, the one reading taken out, a stateful ``apply`` holding each twin's
per-channel Kalman state in Quix's keyed State (the record key is the twin id), and Quix's
own ``InfluxDB1Sink`` (``quixstreams[influxdb1]``) writing the common points (tags channel
and twin_id; fields value, estimate, std; the reading's time) in batches of 5,000 at each
checkpoint. Changelog topics are off (the others keep no replicated state either); runs
until stopped.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import urllib.parse
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from e2e_common import MEASUREMENT, NOISE, NS_PER_S, PRIOR_VARIANCE

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--influx", required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--partitions", help="unused (all partitions)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    from quixstreams import Application
    from quixstreams.sinks.community.influxdb1 import InfluxDB1Sink

    url = urllib.parse.urlsplit(args.influx)
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=f"bench-quix-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        state_dir=tempfile.mkdtemp(prefix="quix-state-"),
        use_changelog_topics=False,
        commit_interval=1.0,
    )
    topic = app.topic(args.topic, value_deserializer="json", key_deserializer="str")
    q = {c: np.float64(NOISE[c][0]) for c in NOISE}
    r = {c: np.float64(NOISE[c][1]) for c in NOISE}

    def kalman(rec: dict[str, Any], state: Any) -> dict[str, Any]:
        channel, t, z = rec["channel"], rec["time_ns"], rec["value"]
        x, p, last = state.get(channel, (0.0, PRIOR_VARIANCE, None))
        x, p = np.float64(x), np.float64(p)
        if last is not None and t > last:
            p = p + q[channel] * ((t - last) / NS_PER_S)
        k = p / (p + r[channel])
        x = x + k * (z - x)
        p = (1.0 - k) * (1.0 - k) * p + k * k * r[channel]
        state.set(channel, (float(x), float(p), t if last is None or t > last else last))
        return {
            "twin_id": rec["twin_id"],
            "channel": channel,
            "value": float(z),
            "estimate": float(x),
            "std": float(np.sqrt(p)),
            "time_ns": t,
        }

    sdf = app.dataframe(topic)
    sdf = sdf.apply(lambda value: value[0]).apply(kalman, stateful=True)
    sdf.sink(
        InfluxDB1Sink(
            host=url.hostname or "127.0.0.1",
            port=url.port or 8086,
            database=args.database,
            measurement=MEASUREMENT,
            fields_keys=["value", "estimate", "std"],
            tags_keys=["twin_id", "channel"],
            # Its int path refuses time_precision "ns" (a KeyError in quixstreams 3.28), so the
            # time goes as a datetime: exact here, every reading time is a whole microsecond.
            time_setter=lambda value: EPOCH + timedelta(microseconds=value["time_ns"] // 1000),
            time_precision="ns",
            batch_size=5000,
        )
    )
    app.run()


if __name__ == "__main__":
    main()
