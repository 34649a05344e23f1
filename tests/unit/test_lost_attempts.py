"""When a round takes a running attempt for lost (Replay._attempt_is_lost): never while a
report of it may still be on its way to the run queue or in it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import configure_mappers

from processor.engine.replay import (
    REPORT_CEILING,
    REPORT_DELIVERY_GRACE,
    WORKER_STALE,
    Claimant,
    Replay,
)
from processor.store.tables import InstanceRow, StepRow, new_row
from schemas import StepStatusName

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
ME, OTHER = "w-me", "w-other"
LEASE_END = NOW - timedelta(seconds=1)


def is_lost(
    claimed_by: str | None,
    *,
    lease_over: bool = False,
    beats: dict[str, datetime] | None = None,
    drained: datetime | None = None,
    **claimant: Any,
) -> bool:
    configure_mappers()
    instance = new_row(InstanceRow, id="i-1", workflow="w", generation=0)
    step = new_row(
        StepRow,
        instance_id="i-1",
        key="s",
        seq=0,
        status=StepStatusName.RUNNING.value,
        attempt=1,
        claimed_by=claimed_by,
        wake_at=LEASE_END if lease_over else NOW + timedelta(minutes=1),
    )
    process = Claimant(ME, **claimant)
    if drained is not None:
        process.run_drained_at["w"] = drained
    replay = Replay(None, instance, [step], now=NOW, claimant=process, last_beats=beats)  # type: ignore[arg-type]
    return replay._attempt_is_lost(step)


MINE = ("i-1", 0, "s", 1)
STALE_BEAT = NOW - WORKER_STALE - timedelta(seconds=30)
AFTER_STALE = STALE_BEAT + WORKER_STALE + REPORT_DELIVERY_GRACE


def test_a_released_attempt_is_lost_at_once() -> None:
    assert is_lost(None, beats=None)


def test_this_processs_attempts_are_lost_only_when_dropped_or_reported_too_late() -> None:
    assert not is_lost(ME, lease_over=True, drained=NOW, running={MINE})
    assert is_lost(ME, dropped={MINE})
    assert not is_lost(ME)  # its report is on the way
    assert not is_lost(ME, lease_over=True, drained=LEASE_END)  # may still be queued
    assert is_lost(ME, lease_over=True, drained=LEASE_END + REPORT_DELIVERY_GRACE)


def test_another_workers_attempt_waits_for_its_queued_report() -> None:
    fresh = {OTHER: NOW - timedelta(seconds=1)}
    stale = {OTHER: STALE_BEAT}
    assert not is_lost(OTHER, beats=None, lease_over=True, drained=NOW)  # not trusted yet
    assert not is_lost(OTHER, beats=fresh, drained=NOW)  # alive
    assert not is_lost(OTHER, beats=stale)  # the queue was never seen empty
    assert not is_lost(OTHER, beats=stale, drained=AFTER_STALE - timedelta(milliseconds=1))
    assert is_lost(OTHER, beats=stale, drained=AFTER_STALE)
    assert is_lost(OTHER, beats={}, drained=None)  # its row is gone: long dead
    assert not is_lost(OTHER, beats=fresh, lease_over=True, drained=LEASE_END)
    assert is_lost(OTHER, beats=fresh, lease_over=True, drained=LEASE_END + REPORT_DELIVERY_GRACE)


def test_a_run_queue_never_seen_empty_holds_an_attempt_only_up_to_the_ceiling() -> None:
    long_dead = {OTHER: NOW - WORKER_STALE - REPORT_CEILING}
    assert is_lost(OTHER, beats=long_dead, drained=None)
    assert not is_lost(OTHER, beats={OTHER: long_dead[OTHER] + timedelta(seconds=1)})
