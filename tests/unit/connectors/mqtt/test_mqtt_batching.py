"""Messages to RawBatch items (payload limit, dead letters, one batch per subscription), estimate
and dead-letter JSON, and the docstring examples: everything of the connector but the network."""

from __future__ import annotations

import doctest
import importlib
from collections import deque
from typing import Any

import numpy as np
import orjson
import pytest

from dte_stream.batches import EstimateBatch
from dte_stream.codecs import get_codec
from dte_stream.connectors.mqtt import MessageBatcher, TopicRouter, dead_letter_message, estimate_messages
from dte_stream.connectors.mqtt._routing import CACHE_TOPICS, DEAD_LETTER_RAW_BYTES, Message
from dte_stream.readings import DeadLetter
from dte_stream.spec.mqtt import MqttSourceSpec, OutputTopic

URL = "mqtt://127.0.0.1:1883"


def _spec(**changes: Any) -> MqttSourceSpec:
    data: dict[str, Any] = {
        "kind": "mqtt",
        "name": "plant",
        "url": URL,
        "twin_type": "pump",
        "subscriptions": [
            {"topic": "plant/+/pump/#", "template": "plant/{site}/pump/{twin}/{channel}"},
            {"topic": "packs/#", "codec": "senml", "twin_type": "valve"},
        ],
    }
    return MqttSourceSpec.model_validate({**data, **changes})


def _message(topic: str, payload: bytes, n: int = 0, qos: int = 1, session: int = 1) -> Message:
    return (topic, payload, 1_000 + n, 100 + n, qos, session)


def test_one_raw_batch_per_subscription_with_contexts_and_acks() -> None:
    queue = deque(
        [
            _message("plant/north/pump/p 1/temp", b"20.5", 0),
            _message("packs/line-1", b'[{"bn":"v-1:","n":"flow","v":3}]', 1),
            _message("plant/north/pump/p,2/pressure", b"1.5", 2, qos=0),
            _message("plant/north/pump/p 1/temp", b"20.6", 3, session=2),
        ]
    )
    acks: list[tuple[int, int]] = []
    batches = MessageBatcher(_spec()).take(queue, 4, acks)
    assert not queue
    assert [(b.source, b.codec, b.twin_type) for b in batches] == [
        ("plant", "json", "pump"),
        ("plant", "senml", "valve"),
    ]
    pumps, packs = batches
    assert [p for p, _ in pumps.payloads] == [b"20.5", b"1.5", b"20.6"]
    contexts = [c for _, c in pumps.payloads]
    assert [(c.twin_id, c.channel, c.received_ns) for c in contexts] == [
        ("p 1", "temp", 1000),
        ("p,2", "pressure", 1002),
        ("p 1", "temp", 1003),
    ]
    assert contexts[0].source == f"{URL}/plant/north/pump/p 1/temp"
    assert contexts[0].max_payload_bytes == 1 << 20
    assert packs.payloads[0][1].twin_id is None
    assert acks == [(100, 1), (101, 1), (103, 2)]  # QoS 0 needs no ack, order kept
    # the payloads decode with their codec, topic levels as defaults
    result = get_codec("json").decode(*pumps.payloads[1])
    reading = result.readings.to_readings()[0]
    assert (reading.twin_id, reading.channel, reading.value) == ("p,2", "pressure", 1.5)


def test_take_leaves_the_rest_of_the_queue() -> None:
    queue = deque(_message("plant/a/pump/p/t", b"1", i) for i in range(10))
    batches = MessageBatcher(_spec()).take(queue, 4, None)
    assert len(batches[0].payloads) == 4
    assert len(queue) == 6
    assert queue[0][2] == 1004


def test_oversize_payloads_are_dead_letters_unread() -> None:
    spec = _spec(max_payload_bytes=100)
    huge = b"[" + b"1," * 5000 + b"1]"
    queue = deque([_message("plant/a/pump/p/t", huge), _message("plant/a/pump/p/t", b"x" * 100, 1)])
    acks: list[tuple[int, int]] = []
    [batch] = MessageBatcher(spec).take(queue, 2, acks)
    assert [p for p, _ in batch.payloads] == [b"x" * 100]  # exactly the limit is fine
    assert batch.payloads[0][1].max_payload_bytes == 100  # the codec enforces it too
    [letter] = batch.errors
    assert letter.reason == f"payload of {len(huge)} bytes is larger than max_payload_bytes=100"
    assert letter.raw == huge[:DEAD_LETTER_RAW_BYTES]
    assert letter.source == f"{URL}/plant/a/pump/p/t"
    assert letter.received_ns == 1000
    assert acks == [(100, 1), (101, 1)]  # a dead letter is handled: it is acknowledged too


@pytest.mark.parametrize(
    ("topic", "words"),
    [
        ("plant/a/pump/p/t/extra", "the topic has 6 levels"),
        ("plant/a/pump//t", "level 4 is empty"),
        ("plant/a/pump/ p/t", "leading or trailing whitespace"),
        ("other/topic", "matches none of the subscriptions ('plant/+/pump/#', 'packs/#')"),
    ],
)
def test_topics_that_do_not_fit_become_dead_letters(topic: str, words: str) -> None:
    [batch] = MessageBatcher(_spec()).take(deque([_message(topic, b"21.5")]), 1, [])
    assert batch.payloads == []
    [letter] = batch.errors
    assert words in letter.reason
    assert letter.raw == b"21.5"
    assert letter.source == f"{URL}/{topic}"


def test_router_caches_routes_and_bounds_the_cache() -> None:
    spec = _spec()
    router = TopicRouter(spec.url, spec.subscriptions)
    first = router.route("plant/a/pump/p/t")
    assert router.route("plant/a/pump/p/t") is first
    for i in range(CACHE_TOPICS + 5):
        router.route(f"packs/{i}")
    assert len(router._cache) <= CACHE_TOPICS


def _estimates(twin_ids: list[str], twin_type: str = "pump") -> EstimateBatch:
    n = len(twin_ids)
    return EstimateBatch(
        twin_type,
        np.array(twin_ids),
        np.array([f"c{i}" for i in range(n)]),
        np.arange(n, dtype=np.int64) * 1_500_000_000 + 1_767_323_045_000_000_000,
        np.arange(n, dtype=np.float64),
        np.array(["C"] * n),
        np.arange(n, dtype=np.float64) + 0.5,
        np.full(n, 0.1),
        np.full(n, np.inf),
        np.full(n, np.nan),
    )


def test_estimate_messages_one_per_twin_in_batch_order() -> None:
    topic = OutputTopic.parse("dte/{twin_type}/{twin_id}/estimates")
    batch = _estimates(["p/2", "p 1", "p/2", "p 1", "p/2"])
    messages = list(estimate_messages(batch, topic))
    assert [t for t, _ in messages] == ["dte/pump/p 1/estimates", "dte/pump/p%2F2/estimates"]
    body = orjson.loads(messages[1][1])
    assert body["twin_id"] == "p/2"
    assert body["twin_type"] == "pump"
    assert [r["channel"] for r in body["estimates"]] == ["c0", "c2", "c4"]
    first = body["estimates"][0]
    assert first == {
        "channel": "c0",
        "time": "2026-01-02T03:04:05.000000000Z",
        "time_ns": 1_767_323_045_000_000_000,
        "value": 0.0,
        "unit": "C",
        "estimate": 0.5,
        "std": 0.1,
        "innovation": None,
        "nis": None,
        "flags": 0,
        "anomaly_score": None,
    }
    assert list(estimate_messages(_estimates([]), topic)) == []


def test_dead_letter_message_is_its_json() -> None:
    letter = DeadLetter("mqtt://h:1/t", "bad", b"\xff\x00", 5)
    assert orjson.loads(dead_letter_message(letter)) == {
        "received_ns": 5,
        "source": "mqtt://h:1/t",
        "reason": "bad",
        "raw": "ff00",
        "raw_encoding": "hex",
    }


@pytest.mark.parametrize(
    "module",
    [
        "dte_stream.spec.mqtt",
        "dte_stream.connectors.mqtt._routing",
        "dte_stream.connectors.mqtt.sink",
        "dte_stream.connectors.mqtt.source",
    ],
)
def test_docstring_examples_run(module: str) -> None:
    failed, attempted = doctest.testmod(importlib.import_module(module))
    assert attempted > 0
    assert failed == 0
