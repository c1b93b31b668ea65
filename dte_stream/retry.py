"""The one retry policy of dte-stream: exponential backoff with jitter, and when to give up.

Every component that retries a failed delivery (the InfluxDB writer, the alert notifiers)
waits as this module says, so a setting means the same everywhere: the wait after failed
attempt *n* is ``initial * 2**(n-1)`` capped at ``maximum``, times a random 50-100 %
(jitter, so that many writers that failed together do not retry together). A server's own
wish (HTTP ``Retry-After``) replaces the computed wait. ``max_attempts`` unset means retry
until it works (or until the caller stops).

>>> policy = RetryPolicy(initial=1.0, maximum=8.0)
>>> [round(policy.delay(n, rng=random.Random(0)), 3) for n in (1, 2, 3, 4, 5)]
[0.922, 1.844, 3.689, 7.378, 7.378]
>>> policy.delay(3, retry_after=12.0)
12.0
>>> RetryPolicy(initial=1.0, maximum=8.0, max_attempts=3).exhausted(3)
True
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long to wait before the next attempt, and whether attempts are used up.

    ``initial``: the wait after the first failed attempt (seconds); ``maximum``: the longest
    wait; ``max_attempts``: attempts before giving up, None = never give up.
    """

    initial: float
    maximum: float
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(f"need 0 < initial <= maximum, got {self.initial} and {self.maximum}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1 or None, got {self.max_attempts}")

    def delay(
        self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        ``retry_after`` (the server's ``Retry-After``, already parsed and capped) replaces the
        backoff when the server sent one.
        """
        if retry_after is not None:
            return max(retry_after, 0.0)
        ceiling = min(self.maximum, self.initial * 2.0 ** min(max(attempt, 1) - 1, 60))
        return ceiling * (0.5 + 0.5 * (rng or random).random())

    def exhausted(self, attempt: int) -> bool:
        """True when ``attempt`` failed attempts are all that ``max_attempts`` allows."""
        return self.max_attempts is not None and attempt >= self.max_attempts
