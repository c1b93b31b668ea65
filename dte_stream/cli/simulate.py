"""``dte-stream simulate``: send simulated sensor readings to MQTT or Kafka."""

from __future__ import annotations

import argparse
import os
import sys
import time

from dte_stream.cli.run import non_negative_float, positive_int
from dte_stream.times import parse_time_or_relative

__all__ = ["add_parser", "run"]


def run(args: argparse.Namespace) -> int:
    from dte_stream.connectors.simulator.publish import SimulationPlan, parse_destination, publish

    dest = parse_destination(args.to)
    start = None if args.start is None else parse_time_or_relative(args.start)
    plan = SimulationPlan(
        twins=args.twins, count=args.count, seed=args.seed, codec=args.codec, start_ns=start
    )
    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        rate = done / max(time.monotonic() - started, 1e-9)
        print(f"dte-stream: sent {done:,} of {total:,} readings ({rate:,.0f}/s)", file=sys.stderr)

    password = os.environ.get("DTE_MQTT_PASSWORD") if args.username else None
    sent = publish(plan, dest, rate=args.rate, username=args.username, password=password, progress=progress)
    elapsed = time.monotonic() - started
    print(
        f"dte-stream: sent {sent:,} readings of {args.twins:,} twins to {dest} as {args.codec} "
        f"in {elapsed:.1f} s ({sent / max(elapsed, 1e-9):,.0f} readings/s), all acknowledged",
        file=sys.stderr,
    )
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate",
        help="send simulated readings to MQTT or Kafka",
        description=(
            "Send exactly COUNT simulated readings (pumps with temperature, pressure and flow) to "
            "mqtt://HOST:PORT/TOPIC (published to TOPIC/<twin id>, QoS 1) or kafka://HOST:PORT/TOPIC "
            "(twin id as key). The defaults feed dataflows/mqtt_to_influxdb.yaml and "
            "dataflows/kafka_to_influxdb.yaml."
        ),
    )
    p.add_argument("--to", required=True, help="mqtt://HOST:PORT/TOPIC or kafka://HOST:PORT/TOPIC")
    p.add_argument("--twins", type=positive_int, default=10, help="simulated twins (default 10)")
    p.add_argument("--count", type=positive_int, required=True, help="readings to send, then exit")
    p.add_argument("--rate", type=non_negative_float, default=None, help="readings per second (default: max)")
    p.add_argument("--codec", choices=["json", "senml"], default="json", help="payload format (default json)")
    p.add_argument("--seed", type=int, default=42, help="simulator seed (default 42)")
    p.add_argument("--start", help="event time of the first reading, ISO 8601 (default: now)")
    p.add_argument("--username", help="MQTT user name; the password is read from DTE_MQTT_PASSWORD")
    p.set_defaults(handler=run)
