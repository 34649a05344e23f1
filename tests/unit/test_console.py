"""How the command line writes durations, and which port a worker serves its probes on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

from processor import config
from processor.client import InstanceSummary
from processor.console import age_text, duration_text, instances_table, status_view
from schemas import InstanceStatus, StepRecord


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(microseconds=420), "0.4 ms"),
        (timedelta(milliseconds=12.4), "12 ms"),
        (timedelta(seconds=1.234), "1.23 s"),
        (timedelta(minutes=5, seconds=3), "5m 03s"),
        (timedelta(hours=3, minutes=12, seconds=59), "3h 12m"),
        (timedelta(days=4, hours=3, minutes=1), "4d 3h"),
    ],
)
def test_durations_read_as_people_write_them(delta: timedelta, text: str) -> None:
    assert duration_text(delta) == text


def test_ages_under_a_minute_are_whole_seconds() -> None:
    assert age_text(timedelta(seconds=8.7)) == "8s"
    assert age_text(timedelta(seconds=-0.2)) == "0s"  # clocks a little apart
    assert age_text(timedelta(minutes=2)) == "2m 00s"


@pytest.mark.parametrize(
    ("variable", "port"), [(None, 9464), ("", 9464), ("8080", 8080), ("0", 0), ("OFF", None)]
)
def test_the_worker_port_comes_from_warren_http_port(
    monkeypatch: pytest.MonkeyPatch, variable: str | None, port: int | None
) -> None:
    if variable is None:
        monkeypatch.delenv("WARREN_HTTP_PORT", raising=False)
    else:
        monkeypatch.setenv("WARREN_HTTP_PORT", variable)
    assert config.http_port() == port
    assert config.http_port("7000") == 7000  # --http-port wins
    assert config.http_port("off") is None


def test_a_bad_http_port_option_is_refused() -> None:
    with pytest.raises(ValueError, match="--http-port='http'"):
        config.http_port("http")


@pytest.mark.parametrize("variable", ["http", "-1", "70000"])
def test_a_bad_warren_http_port_is_refused(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv("WARREN_HTTP_PORT", variable)
    with pytest.raises(ValueError, match="WARREN_HTTP_PORT"):
        config.http_port()


def _timeline(status: str, now: datetime) -> str:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    view = status_view(
        InstanceStatus(
            id="o-1",
            workflow="ship-order",
            status=status,
            params=None,
            output=None,
            error=None,
            created_at=created,
            updated_at=created + timedelta(seconds=12),
            compute_ms=1.0,
            cpu_ms=0.0,
            wall_ms=12_000.0,
            steps=[
                StepRecord(
                    name="cooling-off",
                    kind="sleep",
                    status="sleeping",
                    attempts=0,
                    started_at=created + timedelta(seconds=2),
                    wake_at=created + timedelta(seconds=3600),
                )
            ],
        ),
        now,
    )
    console = Console(width=200, record=True)
    console.print(view)
    return console.export_text()


def test_a_step_an_ended_instance_left_unfinished_is_shown_as_such() -> None:
    now = datetime(2026, 1, 1, 0, 1, tzinfo=UTC)

    assert "58.00 s so far" in _timeline("waiting", now)
    terminated = _timeline("terminated", now)
    assert "sleeping, then terminated" in terminated
    assert "10.00 s" in terminated  # from its start until the instance ended, not until now
    assert "so far" not in terminated


def test_a_listing_says_when_an_ended_instance_left_its_step_unfinished() -> None:
    created = datetime(2026, 1, 1, tzinfo=UTC)

    def row(status: str, step_status: str) -> str:
        item = InstanceSummary(
            id="o-1",
            workflow="ship-order",
            status=status,
            created_at=created,
            current_step="cooling-off",
            current_step_status=step_status,
            compute_ms=1.0,
        )
        console = Console(width=200, record=True)
        console.print(instances_table([item], created + timedelta(seconds=5)))
        return console.export_text()

    assert "cooling-off (sleeping, then terminated)" in row("terminated", "sleeping")
    assert "cooling-off (sleeping)" in row("waiting", "sleeping")
    assert "cooling-off (complete)" in row("complete", "complete")
