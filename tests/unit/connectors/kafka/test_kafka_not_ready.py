"""A partition without a leader yet is asked again, not reported as broken (no Kafka needed).

Just after a topic is created (``create_topic`` in a spec) or while a broker restarts, Kafka
answers NOT_LEADER_FOR_PARTITION or LEADER_NOT_AVAILABLE for a few hundred milliseconds. Under
load the integration suite met it: the source opened a partition of the topic it had just
created and stopped with "cannot open the partition". Opening now asks again until
``startup_timeout``; any other error still stops it at once.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from dte_stream.connectors.kafka.client import _await_leaders, not_ready_yet
from dte_stream.connectors.kafka.source import _KafkaPartition
from dte_stream.errors import ConnectorError
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


class _Admin:
    """An admin client whose metadata answers are handed to it (a KafkaError raises)."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)

    def list_topics(self, timeout: float) -> Any:
        answer = self.answers.pop(0)
        if isinstance(answer, KafkaError):
            raise KafkaException(answer)
        return answer


def _metadata(leader: int) -> Any:
    partition = SimpleNamespace(error=None, leader=leader)
    return SimpleNamespace(topics={"t": SimpleNamespace(error=None, partitions={0: partition})})


def test_the_start_waits_for_a_created_topic_to_have_leaders() -> None:
    admin = _Admin(_metadata(-1), _metadata(-1), _metadata(1))
    _await_leaders(admin, ["t"], _spec(), "source plant")
    assert admin.answers == []


def test_metadata_that_cannot_be_read_after_creating_is_one_clear_error() -> None:
    admin = _Admin(KafkaError(KafkaError._TIMED_OUT))
    with pytest.raises(ConnectorError) as caught:
        _await_leaders(admin, ["t"], _spec(), "source plant")
    assert str(caught.value).startswith("source plant: cannot read the metadata of the created 't' at Kafka")


def test_a_created_topic_without_leaders_is_reported_after_startup_timeout() -> None:
    admin = _Admin(*[_metadata(-1)] * 1000)
    with pytest.raises(ConnectorError, match=r"elected no leader for every partition within 0\.3 s"):
        _await_leaders(admin, ["t"], _spec(startup_timeout=0.3), "source plant")
