"""``dte-stream deadletters list|replay``: what was refused and why; send back what a fix made valid.

Examples::

    dte-stream deadletters list dataflows/mqtt_to_influxdb.yaml          # by reason, then source
    dte-stream deadletters list --file dte-data/dead_letters.jsonl --format json
    dte-stream deadletters replay dataflows/mqtt_to_influxdb.yaml --dry-run
    dte-stream deadletters replay dataflows/mqtt_to_influxdb.yaml --reason "matches no twin type"

``replay`` checks every dead letter against the spec as it is now (decoded with its source's
codec, routed to a twin type and channel): the ones that pass are published again to where
they came from, so the running dataflow takes them as new input (a payload refused by an
MQTT topic goes back to that topic; a Kafka record to its topic; a reading refused by the
router, such as a twin that matched no twin type before the spec learnt it, is sent as a JSON
reading to its source's first topic). The ones that still fail stay, with today's reason.
Replayed letters are remembered in ``FILE.replayed`` and not sent twice.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import orjson

from dte_stream.errors import ConfigError, ConnectorError
from dte_stream.metrics import reason_class
from dte_stream.readings import DeadLetter
from dte_stream.spec import DataflowSpec, load_spec
from dte_stream.store.dead_letters import DeadLetterLog
from dte_stream.times import format_time_ns

__all__ = ["Origin", "add_parser", "origin_of", "summarise"]


def _letters_file(args: argparse.Namespace) -> tuple[Path, DataflowSpec | None]:
    spec = load_spec(args.spec) if getattr(args, "spec", None) else None
    if args.file is not None:
        return Path(args.file), spec
    if spec is None:
        raise ConfigError("give the dataflow spec or --file FILE (the dead-letter file)")
    return spec.dead_letter_path(), spec


def summarise(letters: list[DeadLetter]) -> list[dict[str, object]]:
    """One row per (reason stem, source kind): count, first and last time, an example reason."""
    groups: dict[tuple[str, str], list[DeadLetter]] = {}
    for letter in letters:
        kind = letter.source.split("://", 1)[0] if "://" in letter.source else letter.source.split(":")[0]
        groups.setdefault((reason_class(letter.reason), kind), []).append(letter)
    rows = []
    for (stem, kind), group in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        times = [d.received_ns for d in group]
        rows.append(
            {
                "reason": stem,
                "source": kind,
                "count": len(group),
                "first": format_time_ns(min(times)),
                "last": format_time_ns(max(times)),
                "example": group[-1].reason,
            }
        )
    return rows


def _list(args: argparse.Namespace) -> int:
    path, _ = _letters_file(args)
    letters = DeadLetterLog(path).read()
    rows = summarise(letters)
    out: TextIO = sys.stdout
    if args.format == "json":
        out.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if not rows:
        print(f"no dead letters in {path}", file=sys.stderr)
        return 0
    print(f"{len(letters):,} dead letters in {path}", file=sys.stderr)
    for row in rows:
        print(
            f"{row['count']:>8,}  {row['reason']:<32} {row['source']:<10} "
            f"last {row['last']}  e.g. {row['example']}"
        )
    return 0


# ----------------------------------------------------------------------------------- replay


@dataclass(frozen=True)
class Origin:
    """Where a dead letter goes back to: a spec source, a topic, the payload and its codec."""

    source: str  # the spec source's name
    kind: str  # mqtt or kafka
    topic: str
    payload: bytes
    codec: str
    twin_id: str | None
    channel: str | None
    key: bytes | None = None


def origin_of(letter: DeadLetter, spec: DataflowSpec) -> Origin | str:
    """Where ``letter`` came from in ``spec``, or why it cannot go back."""
    from dte_stream.spec.kafka import KafkaSourceSpec
    from dte_stream.spec.mqtt import MqttSourceSpec

    text = letter.source
    if text.startswith(("mqtt://", "mqtts://")):
        for src in spec.sources:
            if isinstance(src, MqttSourceSpec) and text.startswith(src.url.rstrip("/") + "/"):
                from dte_stream.connectors.mqtt._routing import TopicRouter

                topic = text[len(src.url.rstrip("/")) + 1 :]
                route = TopicRouter(src.url, src.subscriptions).route(topic)
                if route.reason is not None:
                    return route.reason
                sub = src.subscriptions[route.subscription]
                return Origin(src.name, "mqtt", topic, letter.raw, sub.codec, route.twin_id, route.channel)
        return f"no MQTT source of the spec reads {text}"
    if text.startswith("kafka://"):
        topic = text.rsplit("@", 1)[0].split("/")[-2]
        for src in spec.sources:
            if isinstance(src, KafkaSourceSpec) and topic in src.topics:
                return Origin(src.name, "kafka", topic, letter.raw, src.codec, None, None)
        return f"no Kafka source of the spec reads topic {topic!r}"
    for src in spec.sources:  # refused after decoding: the raw text is the reading, as JSON
        if src.name == text:
            try:
                reading = orjson.loads(letter.raw)
                twin_id, channel = str(reading["twin_id"]), str(reading["channel"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                return "not a reading"
            if isinstance(src, MqttSourceSpec):
                sub = src.subscriptions[0]
                topic = (
                    sub.topic.removeprefix("$share/").split("/", 1)[1]
                    if sub.topic.startswith("$share/")
                    else sub.topic
                )
                if sub.template is not None:
                    topic = sub.template.replace("{twin}", twin_id).replace("{channel}", channel)
                if "+" in topic or "#" in topic or "{" in topic:
                    return f"no topic of source {src.name!r} takes a reading of twin {twin_id!r}"
                return Origin(src.name, "mqtt", topic, letter.raw, "json", None, None)
            if isinstance(src, KafkaSourceSpec):
                key = twin_id.encode() if src.key_is_twin_id else None
                return Origin(src.name, "kafka", src.topics[0], letter.raw, "json", None, None, key)
            return f"source {src.name!r} ({src.kind}) takes no input from outside"
    return f"from {text}: no source of the spec"


def check(origin: Origin, letter: DeadLetter, spec: DataflowSpec) -> str | None:
    """Why ``origin``'s payload is still refused by the spec as it is now (None: it passes)."""
    from dte_stream.codecs import get_codec
    from dte_stream.codecs.base import DecodeContext
    from dte_stream.twins.routing import Router

    context = DecodeContext(origin.source, origin.twin_id, origin.channel, letter.received_ns)
    decoded = get_codec(origin.codec).decode_many([(origin.payload, context)])
    if decoded.errors:
        return decoded.errors[0].reason
    if len(decoded.readings) == 0:
        return "no readings in it"
    routed = Router(spec).route(decoded.readings, origin.source)
    return routed.errors[0].reason if routed.errors else None


def _key(letter: DeadLetter) -> str:
    digest = hashlib.sha256(letter.raw).hexdigest()[:16]
    return f"{letter.source}|{letter.received_ns}|{digest}"


def _send(origins: list[Origin], spec: DataflowSpec) -> None:
    from dte_stream.spec.kafka import KafkaSourceSpec
    from dte_stream.spec.mqtt import MqttSourceSpec

    by_source: dict[str, list[Origin]] = {}
    for origin in origins:
        by_source.setdefault(origin.source, []).append(origin)
    for name, group in by_source.items():
        src = next(s for s in spec.sources if s.name == name)
        if isinstance(src, MqttSourceSpec):
            _send_mqtt(src, group)
        elif isinstance(src, KafkaSourceSpec):
            _send_kafka(src, group)


def _send_mqtt(src: object, group: list[Origin]) -> None:
    import os

    from dte_stream.connectors.mqtt._client import MqttConnection

    conn = MqttConnection(
        src,  # type: ignore[arg-type]
        client_id=f"dte-stream-replay-{os.getpid()}",
        who="dead-letter replay",
        clean_start=True,
    )
    conn.start()
    try:
        infos = [conn.client.publish(o.topic, o.payload, qos=1) for o in group]
        for info in infos:
            info.wait_for_publish(timeout=30)
            if not info.is_published():
                raise ConnectorError("dead-letter replay: the broker did not acknowledge every message")
    finally:
        conn.close()


def _send_kafka(src: object, group: list[Origin]) -> None:
    from confluent_kafka import Producer

    client_config = src.client_config()  # type: ignore[attr-defined]
    producer = Producer({"bootstrap.servers": src.bootstrap_servers, **client_config})  # type: ignore[attr-defined]
    for origin in group:
        producer.produce(origin.topic, origin.payload, origin.key)
    left = producer.flush(30)
    if left:
        raise ConnectorError(f"dead-letter replay: {left} records were not delivered to Kafka")


def _replay(args: argparse.Namespace) -> int:
    path, spec = _letters_file(args)
    if spec is None:
        raise ConfigError("replay needs the dataflow spec (it checks the letters against it)")
    done_file = path.with_name(path.name + ".replayed")
    done = set(done_file.read_text().splitlines()) if done_file.exists() else set()
    letters = [d for d in DeadLetterLog(path).read() if _key(d) not in done]
    if args.reason:
        letters = [d for d in letters if args.reason.lower() in d.reason.lower()]
    valid: list[tuple[DeadLetter, Origin]] = []
    still: Counter[str] = Counter()
    for letter in letters:
        origin = origin_of(letter, spec)
        problem = origin if isinstance(origin, str) else check(origin, letter, spec)
        if problem is None and not isinstance(origin, str):
            valid.append((letter, origin))
        else:
            still[reason_class(problem or "")] += 1
    print(
        f"{len(valid):,} of {len(letters):,} dead letters pass the spec now"
        f"{' (dry run: nothing sent)' if args.dry_run else ''}",
        file=sys.stderr,
    )
    for stem, count in still.most_common():
        print(f"{count:>8,}  still refused: {stem}", file=sys.stderr)
    if args.dry_run or not valid:
        return 0
    _send([o for _, o in valid], spec)
    with done_file.open("a") as f:
        f.writelines(_key(d) + "\n" for d, _ in valid)
    print(f"sent {len(valid):,} back to their sources; remembered in {done_file}", file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("deadletters", help="list dead letters by reason; replay those a fix made valid")
    cmds = p.add_subparsers(dest="action", metavar="ACTION")
    cmds.required = True
    lst = cmds.add_parser("list", help="dead letters grouped by reason and source")
    lst.add_argument("spec", nargs="?", help="the dataflow spec (its dead-letter file)")
    lst.add_argument("--file", help="the dead-letter file (instead of the spec's)")
    lst.add_argument("--format", choices=("table", "json"), default="table")
    lst.set_defaults(handler=_list)
    rep = cmds.add_parser(
        "replay", help="send the dead letters that the spec now takes back to their sources"
    )
    rep.add_argument("spec", help="the dataflow spec as it is now")
    rep.add_argument("--file", help="the dead-letter file (default: the spec's)")
    rep.add_argument("--reason", help="only letters whose reason contains this text")
    rep.add_argument("--dry-run", action="store_true", help="check and count, send nothing")
    rep.set_defaults(handler=_replay)
