"""Durations: a `timedelta`, a number of seconds, or a string such as "10 seconds"."""

from __future__ import annotations

import math
import re
from datetime import timedelta

Duration = timedelta | int | float | str

_UNITS = {
    "ms": 0.001,
    "millisecond": 0.001,
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
    "w": 604800,
    "week": 604800,
}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*$")


def _seconds(seconds: float, what: str) -> timedelta:
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"{what} of {seconds:g} seconds is out of range") from None


def parse_duration(value: Duration, *, what: str = "duration") -> timedelta:
    """Turn a duration argument into a `timedelta`.

    Raises:
        ValueError: a negative, non-finite or unparseable duration.
        TypeError: a value of another type.
    """
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a timedelta, seconds or a string, not bool")
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"{what} must be finite, got {value!r}")
        result = _seconds(value, what)
    elif isinstance(value, str):
        match = _PATTERN.match(value.lower())
        word = match.group(2) if match else ""
        # The whole word first ("ms" is milliseconds), then without a plural "s".
        unit = _UNITS.get(word) or _UNITS.get(word.removesuffix("s"))
        if not match or unit is None:
            raise ValueError(
                f"{what} {value!r} is not a duration: use e.g. '10 seconds', '1 minute', '3 days'"
            )
        result = _seconds(float(match.group(1)) * unit, what)
    else:
        raise TypeError(
            f"{what} must be a timedelta, seconds or a string, not {type(value).__name__}"
        )
    if result < timedelta(0):
        raise ValueError(f"{what} must not be negative, got {value!r}")
    return result
