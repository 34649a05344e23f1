"""Two rounds of one instance on one worker at once (two run messages arrive together): the
second must find the first's claimed attempts running, not lost, and a draining worker's
attempts are not taken over while it still beats."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from processor import RetryPolicy, Workflow, WorkflowEvent, WorkflowStep
from tests.conftest import TestEnv, assert_eventually

RUNS: Counter[str] = Counter()


async def counted(instance_id: str, seconds: float) -> str:
    RUNS[instance_id] += 1
    await asyncio.sleep(seconds)
    return "done"


class StepAndNap(Workflow):
    """After `go`, one round claims a step and sets a timer (so it publishes after its commit,
    which widens the window a second round can slip into)."""

    name = "step-and-nap"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> str:
        await step.wait_for_event("go", type="go")
        once = RetryPolicy(limit=0)  # a false "lost" would fail the instance
        done, _ = await asyncio.gather(
            step.do("c", counted, event.instance_id, 0.3, retries=once),
            step.sleep("nap", "3 seconds"),
        )
        return done


async def test_two_run_messages_at_once_run_a_claimed_step_once(env: TestEnv) -> None:
    await env.start_worker(StepAndNap)
    instances = [await env.client.create(StepAndNap) for _ in range(10)]

    async def all_waiting() -> bool:
        statuses = [await i.status() for i in instances]
        return all(s.status == "waiting" for s in statuses)

    await assert_eventually(all_waiting, what="every instance to wait for go")
    # Two events at once: two run messages for each instance, handled concurrently.
    await asyncio.gather(*(i.send_event(t) for i in instances for t in ("go", "other")))
    for instance in instances:
        assert await instance.result(timeout=30) == "done"
        assert RUNS[instance.id] == 1


class Long(Workflow):
    name = "long-step"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> str:
        return await step.do("long", counted, event.instance_id, 14.0)


async def test_a_draining_worker_keeps_its_attempts(env: TestEnv) -> None:
    draining = await env.start_worker(Long, shutdown_grace=30)
    await env.start_worker(Long)
    instance = await env.client.create(Long)
    await assert_eventually(lambda: _ran(instance.id), what="the step to start")
    # Longer than WORKER_STALE: a worker that stopped beating would be presumed dead.
    await env.stop_worker(draining)
    assert await instance.result(timeout=30) == "done"
    assert RUNS[instance.id] == 1
    assert (await instance.status()).steps[0].attempts == 1


async def _ran(instance_id: str) -> bool:
    return RUNS[instance_id] > 0
