"""RetryPolicy and back-off schedules."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from processor.durations import Duration, parse_duration

Backoff = Literal["constant", "linear", "exponential"]


@dataclass(frozen=True, init=False)
class RetryPolicy:
    """How a failing step is retried.

    Args:
        limit: retries after the first attempt (so `limit=5` allows 6 attempts).
        delay: the back-off before the first retry.
        backoff: "constant" (delay), "linear" (delay·n) or "exponential" (delay·2^(n-1)),
            n being the retry number.
        max_delay: a cap on any one back-off.
    """

    limit: int
    delay: timedelta
    backoff: Backoff
    max_delay: timedelta | None = field(default=None)

    def __init__(
        self,
        limit: int = 5,
        delay: Duration = "10 seconds",
        backoff: Backoff = "exponential",
        max_delay: Duration | None = None,
    ) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"retry limit must be an int >= 0, got {limit!r}")
        if backoff not in ("constant", "linear", "exponential"):
            raise ValueError(
                f"backoff must be 'constant', 'linear' or 'exponential', got {backoff!r}"
            )
        object.__setattr__(self, "limit", limit)
        object.__setattr__(self, "delay", parse_duration(delay, what="retry delay"))
        object.__setattr__(self, "backoff", backoff)
        object.__setattr__(
            self,
            "max_delay",
            None if max_delay is None else parse_duration(max_delay, what="retry max_delay"),
        )

    def delay_before(self, retry: int) -> timedelta:
        """The back-off before retry number `retry` (1 for the first retry)."""
        factor = {"constant": 1, "linear": retry, "exponential": 2 ** (retry - 1)}[self.backoff]
        delay: timedelta = self.delay * factor
        return delay if self.max_delay is None else min(delay, self.max_delay)


DEFAULT_RETRY = RetryPolicy()
DEFAULT_STEP_TIMEOUT = timedelta(minutes=10)
DEFAULT_EVENT_TIMEOUT = timedelta(hours=24)
MAX_SLEEP = timedelta(days=365)
