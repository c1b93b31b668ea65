"""Received messages to RawBatch items: the pure part of the source, tested without a broker.

A source sees few distinct topics many times, so :class:`TopicRouter` computes each topic's
:class:`Route` once (which subscription it belongs to, the decode context's source, twin id
and channel, or why it must be a dead letter) and looks it up afterwards: one dict lookup per
message on the hot path. :class:`MessageBatcher` drains received messages into one
:class:`~dte_stream.batches.RawBatch` per subscription.

>>> from dte_stream.spec.mqtt import MqttSubscriptionSpec
>>> router = TopicRouter("mqtt://127.0.0.1:1883", [MqttSubscriptionSpec(
...     topic="plant/+/pump/#", template="plant/{site}/pump/{twin}/{channel}")])
>>> route = router.route("plant/north/pump/p-1/temp")
>>> route.subscription, route.source, route.twin_id, route.channel, route.reason
(0, 'mqtt://127.0.0.1:1883/plant/north/pump/p-1/temp', 'p-1', 'temp', None)
>>> print(router.route("plant/north/pump/p-1/temp/x").reason)
topic 'plant/north/pump/p-1/temp/x' does not fit the template: the topic has 6 levels, the template \
'plant/{site}/pump/{twin}/{channel}' has 5
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from dte_stream.batches import DeadLetter, RawBatch
from dte_stream.codecs.base import DecodeContext
from dte_stream.spec.mqtt import MqttSourceSpec, MqttSubscriptionSpec, TopicFilter, TopicTemplate

__all__ = ["DEAD_LETTER_RAW_BYTES", "Ack", "Message", "MessageBatcher", "Route", "TopicRouter"]

#: Distinct topics remembered; past this the cache starts over (a guard against topic floods).
CACHE_TOPICS = 100_000
#: How much of a refused payload a dead letter keeps.
DEAD_LETTER_RAW_BYTES = 4096

#: A received message: topic, payload, receive time (ns), message id, QoS, session number.
Message = tuple[str, bytes, int, int, int, int]
#: A message to acknowledge: message id, session number.
Ack = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Route:
    """Where one topic's messages go: a subscription, and either defaults or a refusal reason."""

    subscription: int
    source: str
    twin_id: str | None
    channel: str | None
    reason: str | None


class TopicRouter:
    """Maps topics to :class:`Route` objects for the subscriptions of one source.

    A topic belongs to the first subscription whose filter it matches (the spec refuses
    overlapping filters, so there is at most one). A topic that matches no filter (left over
    in a persistent session by an earlier configuration) or does not fit its subscription's
    template gets a route with a ``reason``: its messages become dead letters.
    """

    def __init__(self, url: str, subscriptions: Sequence[MqttSubscriptionSpec]) -> None:
        self._prefix = url.rstrip("/") + "/"
        self._subs: list[tuple[TopicFilter, TopicTemplate | None]] = [
            (s.parsed_filter(), s.parsed_template()) for s in subscriptions
        ]
        self._cache: dict[str, Route] = {}

    def route(self, topic: str) -> Route:
        """The route of ``topic`` (computed once, then cached)."""
        found = self._cache.get(topic)
        if found is None:
            if len(self._cache) >= CACHE_TOPICS:
                self._cache.clear()
            found = self._cache[topic] = self._compute(topic)
        return found

    def _compute(self, topic: str) -> Route:
        source = self._prefix + topic
        levels = topic.split("/")
        matching = [i for i, (f, _) in enumerate(self._subs) if f.matches_levels(levels)]
        if not matching:
            filters = ", ".join(repr(f.text) for f, _ in self._subs)
            return Route(
                0,
                source,
                None,
                None,
                f"topic {topic[:200]!r} matches none of the subscriptions ({filters}); a subscription "
                "kept by the persistent session from an earlier configuration? start once with clean_start",
            )
        index = matching[0]
        template = self._subs[index][1]
        if template is None:
            return Route(index, source, None, None, None)
        matched = template.match_levels(levels)
        if isinstance(matched, str):
            return Route(
                index, source, None, None, f"topic {topic[:200]!r} does not fit the template: {matched}"
            )
        return Route(index, source, matched[0], matched[1], None)


class MessageBatcher:
    """Turns received messages into one :class:`RawBatch` per subscription that had any.

    Each message becomes a payload with its :class:`DecodeContext` (source
    ``mqtt://host:port/topic``, twin id and channel from the template, receive time, payload
    limit) or, before any decoding, a dead letter: a topic that fits no subscription or not its
    template, or a payload over ``max_payload_bytes`` (kept unread, its first 4 KiB only).

    >>> spec = MqttSourceSpec(kind="mqtt", name="plant", url="mqtt://127.0.0.1:1883",
    ...     max_payload_bytes=10, subscriptions=[{"topic": "p/+/+", "template": "p/{twin}/{channel}"}])
    >>> queue = deque([("p/t1/temp", b"20.5", 1, 7, 1, 1), ("p/t1/temp", b"x" * 11, 2, 8, 1, 1)])
    >>> acks = []
    >>> [batch] = MessageBatcher(spec).take(queue, 2, acks)
    >>> [(p, c.twin_id, c.channel) for p, c in batch.payloads], [e.reason for e in batch.errors], acks
    ([(b'20.5', 't1', 'temp')], ['payload of 11 bytes is larger than max_payload_bytes=10'], [(7, 1), (8, 1)])
    """

    def __init__(self, spec: MqttSourceSpec) -> None:
        self._name = spec.name
        self._max_bytes = spec.max_payload_bytes
        self._router = TopicRouter(spec.url, spec.subscriptions)
        self._subs = [(s.codec, s.twin_type or spec.twin_type) for s in spec.subscriptions]

    def take(self, queue: deque[Message], count: int, acks: list[Ack] | None) -> list[RawBatch]:
        """Pop ``count`` messages from ``queue``; append the QoS 1 ones to ``acks`` unless None."""
        groups: dict[int, tuple[list[tuple[bytes, DecodeContext]], list[DeadLetter]]] = {}
        route_of = self._router.route
        popleft = queue.popleft
        max_bytes = self._max_bytes
        for _ in range(count):
            topic, payload, received_ns, mid, qos, session = popleft()
            route = route_of(topic)
            group = groups.get(route.subscription)
            if group is None:
                group = groups[route.subscription] = ([], [])
            if route.reason is not None:
                raw = payload[:DEAD_LETTER_RAW_BYTES]
                group[1].append(DeadLetter(route.source, route.reason, raw, received_ns))
            elif len(payload) > max_bytes:
                reason = f"payload of {len(payload)} bytes is larger than max_payload_bytes={max_bytes}"
                group[1].append(
                    DeadLetter(route.source, reason, payload[:DEAD_LETTER_RAW_BYTES], received_ns)
                )
            else:
                context = DecodeContext(route.source, route.twin_id, route.channel, received_ns, max_bytes)
                group[0].append((payload, context))
            if qos and acks is not None:
                acks.append((mid, session))
        out = []
        for index, (payloads, errors) in groups.items():
            codec, twin_type = self._subs[index]
            out.append(RawBatch(self._name, codec, payloads, twin_type, errors))
        return out
