"""A round ends only once every branch of `run` has parked (Replay._until_quiet): a branch still
on its way to its next step, while `run` itself waits on a step, is waited for."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import configure_mappers

from processor import StepFailedError, Workflow, WorkflowEvent, WorkflowStep
from processor.engine.replay import Claimant, Replay, ReplayResult
from processor.store.tables import InstanceRow, StepRow, new_row

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


class _Session:
    """What a replay of these workflows asks of its session: new rows, and no events."""

    def add(self, row: Any) -> None:
        pass

    async def rows(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []


def _done(key: str, seq: int, status: str = "complete", kind: str = "do") -> StepRow:
    error = {"name": "ValueError", "message": "x"} if status == "failed" else None
    return new_row(
        StepRow,
        instance_id="i",
        key=key,
        name=key,
        seq=seq,
        kind=kind,
        status=status,
        generation=0,
        attempt=1,
        output=None,
        error=error,
    )


async def _nothing() -> None:
    return None


async def _round(workflow: type[Workflow[Any]], steps: list[StepRow]) -> ReplayResult:
    configure_mappers()
    instance = new_row(InstanceRow, id="i", workflow="w", generation=0, params={}, created_at=NOW)
    claimant = Claimant("me")
    replay = Replay(_Session(), instance, steps, now=NOW, claimant=claimant, last_beats=None)  # type: ignore[arg-type]
    return await replay.run(workflow)


class FanOutBesideASleep(Workflow[dict[str, Any]]):
    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        async def fan_out() -> None:
            for batch in range(3):
                await asyncio.gather(*(step.do(f"item {batch}-{i}", _nothing) for i in range(2)))

        async with asyncio.TaskGroup() as group:
            group.create_task(fan_out())
            await step.sleep("report later", "1 hour")


async def test_a_branch_reaches_its_next_steps_while_run_itself_sleeps() -> None:
    sleeping = new_row(
        StepRow,
        instance_id="i",
        key="report later",
        name="report later",
        seq=2,
        kind="sleep",
        status="sleeping",
        generation=0,
        attempt=0,
        wake_at=NOW + timedelta(minutes=59),
        started_at=NOW,
    )

    result = await _round(
        FanOutBesideASleep, [_done("item 0-0", 0), _done("item 0-1", 1), sleeping]
    )

    assert sorted(attempt.step.key for attempt in result.attempts) == ["item 1-0", "item 1-1"]


class CompensatesAGather(Workflow[dict[str, Any]]):
    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        async def other() -> None:
            for i in range(4):
                await asyncio.gather(step.do(f"a{i}", _nothing), step.do(f"b{i}", _nothing))

        try:
            await asyncio.gather(step.do("charge", _nothing), other())
        except StepFailedError:
            await step.do("compensate", _nothing)


async def test_a_changed_step_in_a_failed_gathers_other_branch_is_non_determinism() -> None:
    steps = [
        _done("charge", 0, status="failed"),
        _done("a0", 1),
        _done("b0", 2),
        _done("a1", 3),
        _done("b1", 4),
        _done("a2", 5, kind="sleep"),  # the code changed: a2 is a do now
    ]

    result = await _round(CompensatesAGather, steps)

    assert result.outcome == "errored"
    assert result.error is not None
    assert result.error.name == "NonDeterminismError"
