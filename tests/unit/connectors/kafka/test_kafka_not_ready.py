"""A partition without a leader yet is asked again, not reported as broken (no Kafka needed).

Just after a topic is created (``create_topic`` in a spec) or while a broker restarts, Kafka
answers NOT_LEADER_FOR_PARTITION or LEADER_NOT_AVAILABLE for a few hundred milliseconds. Under
load the integration suite met it: the source opened a partition of the topic it had just
created and stopped with "cannot open the partition". Opening now asks again until
``startup_timeout``; any other error still stops it at once.
"""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from dte_stream.connectors.kafka.client import not_ready_yet
from dte_stream.connectors.kafka.source import _KafkaPartition
from dte_stream.spec.kafka import KafkaSourceSpec


class _Answers:
    """A consumer's ``get_watermark_offsets`` that gives the errors it was handed, then marks."""

    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)
        self.calls = 0

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        self.calls += 1
        if self.errors:
            raise KafkaException(KafkaError(self.errors.pop(0)))
        return (0, 42)


def _partition(consumer: Any) -> _KafkaPartition:
    part = object.__new__(_KafkaPartition)
    part._consumer = consumer
    part._tp = TopicPartition("t", 0)
    return part


def _spec(startup_timeout: float = 10.0) -> KafkaSourceSpec:
    return KafkaSourceSpec(
        kind="kafka", bootstrap_servers="127.0.0.1:9092", topics=["t"], startup_timeout=startup_timeout
    )


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (KafkaError.NOT_LEADER_FOR_PARTITION, True),
        (KafkaError.LEADER_NOT_AVAILABLE, True),
        (KafkaError.UNKNOWN_TOPIC_OR_PART, True),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, False),
        (KafkaError._TRANSPORT, False),
    ],
)
def test_only_a_missing_leader_is_worth_asking_again(code: int, expected: bool) -> None:
    assert not_ready_yet(KafkaException(KafkaError(code))) is expected


def test_a_partition_whose_leader_is_being_elected_opens_once_it_has_one() -> None:
    answers = _Answers(KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE)
    assert _partition(answers)._watermarks(_spec()) == (0, 42)
    assert answers.calls == 3


def test_any_other_error_is_raised_at_once() -> None:
    answers = _Answers(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(KafkaException) as caught:
        _partition(answers)._watermarks(_spec())
    assert caught.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert answers.calls == 1


def test_a_leader_that_never_comes_is_raised_after_startup_timeout() -> None:
    answers = _Answers(*[KafkaError.NOT_LEADER_FOR_PARTITION] * 1000)
    with pytest.raises(KafkaException) as caught:
        _partition(answers)._watermarks(_spec(startup_timeout=0.5))
    assert caught.value.args[0].code() == KafkaError.NOT_LEADER_FOR_PARTITION
    assert 2 <= answers.calls < 1000
