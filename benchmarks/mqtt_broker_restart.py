"""Reproduce issue 10 item 1: Mosquitto restarted while the daemon drains a QoS 1 backlog.

Starts a private Mosquitto and InfluxDB (deploy/services/devservices.py), queues
``--twins x 2 x --steps`` JSON readings in the daemon's persistent session (every PUBACK
received by the publisher), then drains them with ``dte-stream run`` twice: A uninterrupted,
B with the broker stopped ``--after`` seconds after the first points reached InfluxDB and
started again ``--down`` seconds later. Prints the readings each run processed, how long the
drain took, what the broker still held afterwards, and B against A point by point and twin by
twin (every field of every stored point, every array of the final twin state).

    .venv/bin/python benchmarks/mqtt_broker_restart.py                 # 1,000 twins, 60,000 readings
    .venv/bin/python benchmarks/mqtt_broker_restart.py --rounds 3 --down 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from private_service import REPO, devservices, private_service

sys.path.insert(0, str(REPO / "tests" / "integration"))

import mqtt_chaos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--twins", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=30, help="readings per twin and channel")
    parser.add_argument("--after", type=float, default=1.5, help="s after the first points: stop the broker")
    parser.add_argument(
        "--after-start", action="store_true", help="count --after from the daemon's start instead"
    )
    parser.add_argument("--down", type=float, default=3.0, help="s the broker stays down")
    parser.add_argument("--rounds", type=int, default=1, help="runs with a restart")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--keep", type=Path, help="keep the runs' folders (logs, specs) here")
    args = parser.parse_args()
    messages = list(mqtt_chaos.readings(args.twins, args.steps))
    api = devservices()
    with (
        private_service("mosquitto") as broker,
        private_service("influxdb") as influx,
        tempfile.TemporaryDirectory(prefix="dte-mqtt-restart-") as tmp,
    ):
        work = args.keep or Path(tmp)
        a = mqtt_chaos.drain(broker, influx.url, work, "a", messages, timeout=args.timeout)
        left_a = mqtt_chaos.left_in_session(broker.host, broker.port, a.session_id)
        print(
            f"A uninterrupted: {len(messages):,} published, {a.processed[0]:,} processed, "
            f"drained in {a.drain_seconds:.1f} s, {left_a} left at the broker"
        )

        def restart(daemon: Any, run: mqtt_chaos.Run, count: Any) -> Any:
            time.sleep(args.after)
            run.events.append(f"broker stopped with {count():,} points in InfluxDB")
            api.restart(broker, args.down)
            run.events.append(f"broker back with {count():,} points in InfluxDB")
            return daemon

        failures = 0
        for r in range(args.rounds):
            try:
                b = mqtt_chaos.drain(
                    broker,
                    influx.url,
                    work,
                    f"b{r}",
                    messages,
                    chaos=restart,
                    chaos_at_start=args.after_start,
                    timeout=args.timeout,
                )
            except AssertionError as exc:
                failures += 1
                print(f"B{r} broker restart: FAILED: {str(exc)[:400]}")
                continue
            left_b = mqtt_chaos.left_in_session(broker.host, broker.port, b.session_id)
            cmp = mqtt_chaos.compare(influx.url, a, b)
            print(
                f"B{r} broker restart ({'; '.join(b.events)}): {b.processed[0]:,} processed, drained in "
                f"{b.drain_seconds:.1f} s, {left_b} left at the broker; against A: {cmp.points_b:,} points "
                f"of {cmp.points_a:,}, {cmp.missing} missing, {cmp.extra} extra, {cmp.differing_points} "
                f"differ, {cmp.differing_twins} twins' state differs"
            )
            for line in cmp.examples[:4]:
                print("   ", line[:300])
            failures += not cmp.equal or b.processed[0] != len(messages) or left_b != 0
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
