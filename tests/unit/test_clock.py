"""The database's time as a process keeps it (processor.runtime.Clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from processor import runtime
from processor.runtime import Clock

SERVER = datetime(2026, 1, 1, tzinfo=UTC)


class SteadyClock:
    def __init__(self) -> None:
        self.seconds = 100.0

    def __call__(self) -> float:
        return self.seconds


@pytest.fixture
def steady(monkeypatch: pytest.MonkeyPatch) -> SteadyClock:
    clock = SteadyClock()
    monkeypatch.setattr(runtime, "steady_seconds", clock)
    return clock


def test_without_a_reading_it_is_the_local_clock(steady: SteadyClock) -> None:
    before = datetime.now(UTC)
    assert before <= Clock().now() <= datetime.now(UTC)


def test_a_step_of_the_wall_clock_moves_nothing(
    steady: SteadyClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    clock.add_sample(100.0, SERVER, 100.002)  # read at 100.001
    monkeypatch.setattr(runtime, "utcnow", lambda: SERVER + timedelta(hours=1))
    steady.seconds = 105.001
    assert clock.now() == SERVER + timedelta(seconds=5)


def test_the_reading_with_the_shortest_round_trip_counts(steady: SteadyClock) -> None:
    clock = Clock()
    clock.add_sample(100.0, SERVER, 100.010)  # read at 100.005, within 5 ms
    clock.add_sample(101.0, SERVER + timedelta(seconds=1.5), 101.002)  # at 101.001, within 1 ms
    clock.add_sample(102.0, SERVER, 102.020)
    steady.seconds = 103.001
    assert clock.now() == SERVER + timedelta(seconds=3.5)
