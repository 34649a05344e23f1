"""RetryPolicy and back-off schedules."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from processor.durations import Duration, parse_duration

Backoff = Literal["constant", "linear", "exponential"]
#: The longest timer there is: a sleep, an event wait's timeout, a back-off.
MAX_SLEEP = timedelta(days=365)


@dataclass(frozen=True, init=False)
class RetryPolicy:
    """How a failing step is retried.

    Args:
        limit: retries after the first attempt (so `limit=5` allows 6 attempts).
        delay: the back-off before the first retry.
        backoff: "constant" (delay), "linear" (delay·n) or "exponential" (delay·2^(n-1)),
            n being the retry number.
        max_delay: a cap on any one back-off. None: 365 days, the longest timer there is.

    Raises:
        ValueError: a negative limit, an unknown backoff, or a delay or max_delay that is
            negative or over 365 days.
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
        object.__setattr__(self, "delay", _timer_length(delay, "retry delay"))
        object.__setattr__(self, "backoff", backoff)
        object.__setattr__(
            self, "max_delay", None if max_delay is None else _timer_length(max_delay, "max_delay")
        )

    def delay_before(self, retry: int) -> timedelta:
        """The back-off before retry number `retry` (1 for the first retry)."""
        factor = {"constant": 1, "linear": retry, "exponential": 2 ** (retry - 1)}[self.backoff]
        cap = MAX_SLEEP if self.max_delay is None else self.max_delay
        # Compared before multiplying: 2 ** 40 times a delay is past timedelta's range.
        if self.delay and factor > cap / self.delay:
            return cap
        delay: timedelta = self.delay * factor
        return min(delay, cap)


def _timer_length(value: Duration, what: str) -> timedelta:
    length = parse_duration(value, what=what)
    if length > MAX_SLEEP:
        raise ValueError(f"{what} {value!r} is longer than 365 days, the longest timer there is")
    return length


DEFAULT_RETRY = RetryPolicy()
DEFAULT_STEP_TIMEOUT = timedelta(minutes=10)
DEFAULT_EVENT_TIMEOUT = timedelta(hours=24)
