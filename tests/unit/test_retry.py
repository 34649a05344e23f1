"""RetryPolicy: defaults as in DESIGN.md, and the back-off before each retry."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from processor import RetryPolicy
from processor.retry import DEFAULT_EVENT_TIMEOUT, DEFAULT_STEP_TIMEOUT, MAX_SLEEP


def test_the_default_policy_retries_five_times_from_ten_seconds_exponentially() -> None:
    policy = RetryPolicy()

    assert policy.limit == 5
    assert policy.delay == timedelta(seconds=10)
    assert policy.backoff == "exponential"
    assert policy.max_delay is None


def test_the_other_defaults_follow_the_design() -> None:
    defaults = (DEFAULT_STEP_TIMEOUT, DEFAULT_EVENT_TIMEOUT, MAX_SLEEP)
    assert defaults == (timedelta(minutes=10), timedelta(hours=24), timedelta(days=365))


@pytest.mark.parametrize(
    ("backoff", "seconds"),
    [
        ("constant", [2, 2, 2, 2]),
        ("linear", [2, 4, 6, 8]),
        ("exponential", [2, 4, 8, 16]),
    ],
)
def test_delay_before_each_retry_follows_the_backoff(backoff: Any, seconds: list[int]) -> None:
    policy = RetryPolicy(limit=4, delay="2 seconds", backoff=backoff)

    assert [policy.delay_before(n) for n in (1, 2, 3, 4)] == [timedelta(seconds=s) for s in seconds]


@pytest.mark.parametrize("backoff", ["constant", "linear", "exponential"])
def test_max_delay_caps_every_backoff(backoff: Any) -> None:
    policy = RetryPolicy(limit=10, delay=3, backoff=backoff, max_delay="5 seconds")

    delays = [policy.delay_before(n) for n in range(1, 11)]

    assert max(delays) <= timedelta(seconds=5)
    assert delays[0] == timedelta(seconds=3)
    if backoff != "constant":
        assert delays[-1] == timedelta(seconds=5)


def test_delays_accept_every_duration_form() -> None:
    assert RetryPolicy(delay=timedelta(seconds=1)).delay == timedelta(seconds=1)
    assert RetryPolicy(delay=0.5).delay == timedelta(milliseconds=500)
    assert RetryPolicy(max_delay="1 minute").max_delay == timedelta(minutes=1)


def test_a_limit_of_zero_means_no_retries() -> None:
    assert RetryPolicy(limit=0).limit == 0


@pytest.mark.parametrize("limit", [-1, 1.5, True, "3", None])
def test_an_invalid_limit_raises_value_error(limit: Any) -> None:
    with pytest.raises(ValueError, match="limit"):
        RetryPolicy(limit=limit)


@pytest.mark.parametrize("backoff", ["fibonacci", "Exponential", "", None])
def test_an_unknown_backoff_raises_value_error(backoff: Any) -> None:
    with pytest.raises(ValueError, match="backoff"):
        RetryPolicy(backoff=backoff)


def test_a_negative_delay_raises_value_error() -> None:
    with pytest.raises(ValueError, match="retry delay"):
        RetryPolicy(delay=-1)


@pytest.mark.parametrize("backoff", ["linear", "exponential"])
def test_a_far_retry_is_capped_without_overflowing(backoff: Any) -> None:
    capped = RetryPolicy(limit=100, delay="10 seconds", backoff=backoff, max_delay="1 minute")
    uncapped = RetryPolicy(limit=5_000, delay="1 day", backoff=backoff)

    # 10 s x 2^43 is past timedelta's range; a back-off is never longer than a year.
    assert capped.delay_before(44) == timedelta(minutes=1)
    assert uncapped.delay_before(5_000) == MAX_SLEEP
    assert uncapped.delay_before(2) == timedelta(days=2)


@pytest.mark.parametrize("field", ["delay", "max_delay"])
def test_a_retry_delay_over_a_year_raises_value_error(field: str) -> None:
    with pytest.raises(ValueError, match="longer than 365 days"):
        RetryPolicy(**{field: timedelta(days=366)})
