"""Replay edge cases: code that runs around steps rather than in them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from processor import InstanceFailedError, Workflow, WorkflowEvent, WorkflowStep
from tests.conftest import TestEnv, assert_eventually


async def value(text: str) -> str:
    return text


class CleanupInFinally(Workflow):
    name = "cleanup-in-finally"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> str:
        try:
            return await step.do("work", value, "worked")
        finally:
            await step.do("cleanup", value, "cleaned")


async def test_a_step_in_a_finally_block_runs_once_the_try_block_is_done(env: TestEnv) -> None:
    await env.start_worker(CleanupInFinally)
    instance = await env.client.create(CleanupInFinally)
    assert await instance.result(timeout=15) == "worked"
    steps = (await instance.status()).steps
    assert [(s.name, s.status, s.attempts) for s in steps] == [
        ("work", "complete", 1),
        ("cleanup", "complete", 1),
    ]


class SharedNameInBranches(Workflow):
    name = "shared-name-in-branches"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> list[str]:
        async def branch(label: str) -> str:
            await step.do(f"fetch {label}", value, label)
            return await step.do("store", value, label)

        return list(await asyncio.gather(branch("a"), branch("b")))


async def test_one_step_name_in_two_parallel_branches_is_refused_clearly(env: TestEnv) -> None:
    await env.start_worker(SharedNameInBranches)
    instance = await env.client.create(SharedNameInBranches)
    with pytest.raises(InstanceFailedError) as failure:
        await instance.result(timeout=15)
    assert failure.value.error is not None
    assert failure.value.error.name == "NonDeterminismError"
    assert "'store' is used by two parallel branches" in failure.value.error.message


release_slow: dict[str, asyncio.Event] = {}


async def slow(instance_id: str) -> str:
    await asyncio.wait_for(release_slow[instance_id].wait(), 20)
    return "slow"


class FastAndSlow(Workflow):
    name = "fast-and-slow"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> list[str]:
        return list(
            await asyncio.gather(
                step.do("fast", value, "fast"), step.do("slow", slow, event.instance_id)
            )
        )


async def test_a_fast_parallel_step_is_recorded_without_waiting_for_a_slow_one(
    env: TestEnv,
) -> None:
    await env.start_worker(FastAndSlow)
    instance = await env.client.create(FastAndSlow, id=f"fs-{env.backend.name}")
    release_slow[instance.id] = asyncio.Event()

    async def fast_recorded_while_slow_runs() -> bool:
        steps = {s.name: s.status for s in (await instance.status()).steps}
        return steps.get("fast") == "complete" and steps.get("slow") == "running"

    await assert_eventually(fast_recorded_while_slow_runs, what="fast recorded, slow running")
    release_slow[instance.id].set()
    assert await instance.result(timeout=15) == ["fast", "slow"]


class AwaitsOutsideSteps(Workflow):
    name = "awaits-outside-steps"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> str:
        await asyncio.sleep(5)  # not a step: not durable, and not allowed
        return "never"


async def test_awaiting_something_other_than_a_step_errors_the_instance(env: TestEnv) -> None:
    await env.start_worker(AwaitsOutsideSteps)
    instance = await env.client.create(AwaitsOutsideSteps)
    with pytest.raises(InstanceFailedError) as failure:
        await instance.result(timeout=15)
    assert failure.value.error is not None
    assert failure.value.error.name == "NonDeterminismError"


class Appointment(BaseModel):
    when: datetime


class Remind(Workflow[Appointment]):
    name = "remind"

    async def run(self, event: WorkflowEvent[Appointment], step: WorkflowStep) -> str:
        return event.payload.when.isoformat()


async def test_params_with_datetimes_are_stored_as_json_and_validated_back(env: TestEnv) -> None:
    await env.start_worker(Remind)
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    instance = await env.client.create(Remind, Appointment(when=when))
    assert datetime.fromisoformat(await instance.result(timeout=15)) == when
    with pytest.raises(ValueError, match="params contains NaN"):
        await env.client.create("remind", {"when": float("nan")})
