"""What the MQTT disk spool costs: the same QoS 1 backlog drained without and with a spool.

Starts a private Mosquitto and InfluxDB, queues ``--twins x 2 x --steps`` JSON readings in the
daemon's persistent session, and drains them with ``dte-stream run`` (tests/integration/
mqtt_chaos.py) ``--rounds`` times each way, alternating. Prints the seconds from the daemon's
start until InfluxDB held every point, and checks the two runs stored the same points and twin
states.

    .venv/bin/python benchmarks/mqtt_spool_drain.py --twins 1000 --steps 30 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from private_service import REPO, private_service

sys.path.insert(0, str(REPO / "tests" / "integration"))

import mqtt_chaos


def _with_spool(spec: dict[str, Any]) -> None:
    spec["sources"][0]["spool"] = {"max_bytes": "1GiB"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--twins", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    messages = list(mqtt_chaos.readings(args.twins, args.steps))
    seconds: dict[str, list[float]] = {"no spool": [], "spool": []}
    with (
        private_service("mosquitto") as broker,
        private_service("influxdb") as influx,
        tempfile.TemporaryDirectory(prefix="dte-spool-drain-") as tmp,
    ):
        runs: dict[str, mqtt_chaos.Run] = {}
        for r in range(args.rounds):
            for name, tweak in (("no spool", None), ("spool", _with_spool)):
                run = mqtt_chaos.drain(
                    broker, influx.url, Path(tmp), f"{name.replace(' ', '_')}{r}", messages, tweak=tweak
                )
                seconds[name].append(run.drain_seconds)
                runs[name] = run
                print(
                    f"{name:>8}: {len(messages):,} readings drained in {run.drain_seconds:.1f} s", flush=True
                )
        cmp = mqtt_chaos.compare(influx.url, runs["no spool"], runs["spool"])
        print(f"points and twin states equal: {cmp.equal}")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:>8}: median {median:.1f} s ({len(messages) / median:,.0f} readings/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
