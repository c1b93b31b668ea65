"""What the MQTT source does while the InfluxDB sink holds the dataflow (issue 10, item 2).

Starts a private Mosquitto (persistence on, ``max_queued_messages`` 100,000 as the test
services configure it) and InfluxDB, creates the daemon's persistent QoS 1 session, starts
``dte-stream run --recovery-dir --http`` on it, stops InfluxDB once the first points are stored,
then publishes ``--twins x 2 x --steps`` JSON readings at ``--rate`` at most (every PUBACK
received by the publisher). Every ``--every`` seconds it prints: what the rate would have
published by then (the publisher may be slower), the messages handed to the dataflow
(``dte_mqtt_messages_in_total``) and spooled (``dte_mqtt_spooled_total``), the bytes in the
spool, the daemon's RSS, and what the broker holds (``$SYS/broker/store/messages/count``, every message
the broker stores, the daemon's session included). After ``--outage`` seconds InfluxDB starts
again; the script waits for the drain and prints how many points were stored of how many
published.

    .venv/bin/python benchmarks/mqtt_sink_outage.py                       # no spool
    .venv/bin/python benchmarks/mqtt_sink_outage.py --spool-max-bytes 50000000
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from private_service import REPO, devservices, private_service

sys.path.insert(0, str(REPO / "tests" / "integration"))

import mqtt_chaos
from test_pipeline_kafka import _count


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _metric(text: str, name: str) -> int:
    total = 0.0
    for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M):
        total += float(m.group(1))
    return int(total)


class BrokerStore:
    """The broker's ``$SYS/broker/store/messages/count`` (published every ``sys_interval``)."""

    def __init__(self, host: str, port: int) -> None:
        self.count = -1
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sys-watch", protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.subscribe("$SYS/broker/store/messages/count")
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self.count = int(message.payload)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--twins", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=100, help="readings per twin and channel")
    parser.add_argument("--outage", type=float, default=90.0, help="s InfluxDB stays down")
    parser.add_argument("--rate", type=float, default=5000.0, help="messages/s published")
    parser.add_argument("--every", type=float, default=10.0, help="s between samples")
    parser.add_argument("--spool-max-bytes", type=int, help="give the source a spool of this size")
    parser.add_argument("--timeout", type=float, default=300.0, help="s to wait for the drain")
    args = parser.parse_args()
    messages = list(mqtt_chaos.readings(args.twins, args.steps))
    api = devservices()
    with (
        private_service("mosquitto") as broker,
        private_service("influxdb") as influx,
        tempfile.TemporaryDirectory(prefix="dte-mqtt-outage-") as tmp,
    ):
        work = Path(tmp)
        topic, client_id, db = "outage", "dte-outage", "dte_outage"
        url = f"mqtt://{broker.host}:{broker.port}"
        spec_path = mqtt_chaos.write_spec(work / "flow.yaml", url, topic, client_id, influx.url, db)
        spec = yaml.safe_load(spec_path.read_text())
        spec["engine"]["epoch_seconds"] = 2.0
        spec["sinks"][0]["max_buffer_lines"] = 20_000
        if args.spool_max_bytes:
            spec["sources"][0]["spool"] = {"max_bytes": args.spool_max_bytes}
        spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
        mqtt_chaos.make_session(broker.host, broker.port, f"{client_id}-0", f"{topic}/+")
        port = api.free_ports(1)[0]
        store = BrokerStore(broker.host, broker.port)
        daemon = mqtt_chaos.Daemon(
            spec_path, work / "recovery", work / "daemon.log", "--http", f"127.0.0.1:{port}"
        )
        try:
            warmup, rest = messages[:2000], messages[2000:]
            mqtt_chaos.publish(broker.host, broker.port, topic, warmup)
            mqtt_chaos.wait(daemon, lambda: _count(influx.url, db) >= len(warmup), 120, "the warm-up")
            print(f"warm-up stored; RSS {_rss_mb(daemon.proc.pid):.0f} MB; stopping InfluxDB", flush=True)
            api.stop(influx)
            started = time.monotonic()
            publisher = threading.Thread(
                target=mqtt_chaos.publish,
                args=(broker.host, broker.port, topic, rest, args.rate),
                daemon=True,
            )
            publisher.start()
            print(" t(s)  offered (rate x t)  source-received  spooled  spool-MB  RSS-MB  broker-store")
            while time.monotonic() - started < args.outage:
                time.sleep(args.every)
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
                    metrics = answer.read().decode()
                t = time.monotonic() - started
                spool_mb = sum(f.stat().st_size for f in (work / "recovery").rglob("*.seg")) / 1e6
                print(
                    f"{t:5.0f}  {min(len(rest), int(t * args.rate)):>18,}  "
                    f"{_metric(metrics, 'dte_mqtt_messages_in_total'):>15,}  "
                    f"{_metric(metrics, 'dte_mqtt_spooled_total'):>7,}  {spool_mb:8.1f}  "
                    f"{_rss_mb(daemon.proc.pid):6.0f}  {store.count:>12,}",
                    flush=True,
                )
            publisher.join(600)
            print(f"publisher done after {time.monotonic() - started:.0f} s; starting InfluxDB", flush=True)
            api.restart(influx)
            total = len(messages)
            try:
                mqtt_chaos.wait(daemon, lambda: _count(influx.url, db) >= total, args.timeout, "the drain")
            except AssertionError as exc:
                print(exc)
            time.sleep(5)
            stored = _count(influx.url, db)
            print(f"stored {stored:,} of {total:,} published ({total - stored:,} lost)")
            print(f"broker store after: {store.count:,}; RSS {_rss_mb(daemon.proc.pid):.0f} MB")
            daemon.stop()
            log = daemon.output()
            print("\n".join(line for line in log.splitlines() if "WARN" in line or "ERROR" in line)[-3000:])
        finally:
            daemon.ensure_dead()
            store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
