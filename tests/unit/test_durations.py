"""parse_duration: the one way every API argument that is a duration gets read."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest

from processor.durations import parse_duration


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(minutes=3), timedelta(minutes=3)),
        (0, timedelta(0)),
        (5, timedelta(seconds=5)),
        (0.25, timedelta(milliseconds=250)),
        ("10 seconds", timedelta(seconds=10)),
        ("1 second", timedelta(seconds=1)),
        ("1 minute", timedelta(minutes=1)),
        ("2 hours", timedelta(hours=2)),
        ("3 days", timedelta(days=3)),
        ("1 week", timedelta(weeks=1)),
        ("500 ms", timedelta(milliseconds=500)),
        ("250 milliseconds", timedelta(milliseconds=250)),
        ("1.5 hours", timedelta(minutes=90)),
        ("  10 Seconds ", timedelta(seconds=10)),
    ],
)
def test_parse_duration_reads_timedeltas_numbers_and_strings(
    value: Any, expected: timedelta
) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        -1,
        -0.5,
        timedelta(seconds=-1),
        "-1 seconds",
        math.nan,
        math.inf,
        "soon",
        "10",
        "3 fortnights",
        "",
        "999999999999 days",  # past timedelta's range
        10**15,
    ],
)
def test_parse_duration_rejects_negative_non_finite_and_unreadable_values(value: Any) -> None:
    with pytest.raises(ValueError, match="timeout"):
        parse_duration(value, what="timeout")


@pytest.mark.parametrize("value", [True, False, None, [1], {"seconds": 1}])
def test_parse_duration_rejects_other_types_with_type_error(value: Any) -> None:
    with pytest.raises(TypeError, match="timeout"):
        parse_duration(value, what="timeout")
