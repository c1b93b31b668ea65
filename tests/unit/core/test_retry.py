"""The one retry policy (dte_stream.retry) shared by the InfluxDB writer and the alert notifiers."""

from __future__ import annotations

import random

import pytest

from dte_stream.connectors.alerting.dispatcher import backoff_delay
from dte_stream.retry import RetryPolicy
from dte_stream.spec.notify import NotifierRetrySpec


def test_delay_doubles_up_to_the_maximum_with_jitter_of_half_to_all() -> None:
    policy = RetryPolicy(initial=0.5, maximum=4.0)
    rng = random.Random(1)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (60, 4.0), (10_000, 4.0)]:
        delays = [policy.delay(attempt, rng=rng) for _ in range(200)]
        assert all(ceiling * 0.5 <= d <= ceiling for d in delays), (attempt, min(delays), max(delays))
        assert max(delays) - min(delays) > ceiling * 0.3  # really jittered


def test_retry_after_replaces_the_backoff() -> None:
    policy = RetryPolicy(initial=0.5, maximum=4.0)
    assert policy.delay(1, retry_after=30.0) == 30.0
    assert policy.delay(7, retry_after=0.0) == 0.0


def test_max_attempts() -> None:
    assert not RetryPolicy(0.1, 1.0).exhausted(10**6)
    limited = RetryPolicy(0.1, 1.0, max_attempts=3)
    assert [limited.exhausted(n) for n in (1, 2, 3, 4)] == [False, False, True, True]


@pytest.mark.parametrize("args", [(0.0, 1.0, None), (2.0, 1.0, None), (0.1, 1.0, 0)])
def test_bad_settings_are_refused(args: tuple[float, float, int | None]) -> None:
    with pytest.raises(ValueError, match=r"initial|max_attempts"):
        RetryPolicy(*args)


def test_the_notifiers_use_the_same_policy() -> None:
    spec = NotifierRetrySpec(backoff=1.0, max_backoff=8.0)
    policy = RetryPolicy(1.0, 8.0)
    for attempt in range(1, 8):
        assert backoff_delay(attempt, spec, random.Random(attempt)) == policy.delay(
            attempt, rng=random.Random(attempt)
        )
