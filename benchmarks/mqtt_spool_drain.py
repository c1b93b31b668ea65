"""What the MQTT disk spool costs: the same QoS 1 backlog drained with the default spool and
with ``spool: off``.

Starts a private Mosquitto and InfluxDB, queues ``--twins x 2 x --steps`` JSON readings in the
daemon's persistent session, and drains them with ``dte-stream run --recovery-dir``
(tests/integration/mqtt_chaos.py) ``--rounds`` times each way, alternating: the spec leaves
``spool`` unset (the default with a recovery directory: on, 1 GiB per client) or sets
``spool: off``. Prints the seconds from the daemon's start until InfluxDB held every point, and
checks the two runs stored the same points and twin states.

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


def _spool_off(spec: dict[str, Any]) -> None:
    spec["sources"][0]["spool"] = "off"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--twins", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    messages = list(mqtt_chaos.readings(args.twins, args.steps))
    seconds: dict[str, list[float]] = {"spool off": [], "default": []}
    with (
        private_service("mosquitto") as broker,
        private_service("influxdb") as influx,
        tempfile.TemporaryDirectory(prefix="dte-spool-drain-") as tmp,
    ):
        runs: dict[str, mqtt_chaos.Run] = {}
        for r in range(args.rounds):
            for name, tweak in (("spool off", _spool_off), ("default", None)):
                run = mqtt_chaos.drain(
                    broker, influx.url, Path(tmp), f"{name.replace(' ', '_')}{r}", messages, tweak=tweak
                )
                seconds[name].append(run.drain_seconds)
                runs[name] = run
                print(
                    f"{name:>9}: {len(messages):,} readings drained in {run.drain_seconds:.1f} s", flush=True
                )
        for name, run in runs.items():
            spooled = run.recovery_dir / "spool"
            print(f"{name:>9}: spool folder {'present' if spooled.is_dir() else 'absent'}")
        cmp = mqtt_chaos.compare(influx.url, runs["spool off"], runs["default"])
        print(f"points and twin states equal: {cmp.equal}")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:>9}: median {median:.1f} s ({len(messages) / median:,.0f} readings/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
