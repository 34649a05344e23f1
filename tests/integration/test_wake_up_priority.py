"""Wake-ups go first for a freed slot, but only by WAKE_UP_HEAD_START_S: a steady stream of
them (the back-offs of steps retrying through an outage) does not starve the runs of other
instances on the same worker (processor/consumers/slots.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from processor import RetryPolicy, Workflow, WorkflowEvent, WorkflowStep
from tests.conftest import TestEnv


async def call_a_dependency_that_is_down() -> str:
    await asyncio.sleep(0.3)  # it times out
    raise RuntimeError("down")


class Storm(Workflow[dict[str, Any]]):
    name = "priority-storm"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> str:
        retries = RetryPolicy(limit=10_000, delay="100 ms", backoff="constant")
        return await step.do("call", call_a_dependency_that_is_down, retries=retries)


async def quick() -> str:
    return "done"


class Quick(Workflow[dict[str, Any]]):
    name = "priority-quick"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> str:
        return await step.do("a", quick) + await step.do("b", quick)


async def test_a_retry_storm_of_wake_ups_does_not_starve_other_runs(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    import processor.worker as worker_module

    handed_back: list[str] = []
    hand_back = worker_module.hand_back

    async def counting_hand_back(runtime: Any, queue: str, message: Any) -> None:
        handed_back.append(queue)
        await hand_back(runtime, queue, message)

    monkeypatch.setattr(worker_module, "hand_back", counting_hand_back)
    # A run delivery that waits this long for a slot goes back to its queue.
    monkeypatch.setattr(worker_module, "SLOT_WAIT_S", 5.0)
    await env.start_worker(Storm, Quick, concurrency=2)
    storms = [await env.client.create(Storm) for _ in range(6)]
    try:
        await asyncio.sleep(2)  # every slot now goes to a retry's wake-up, as soon as freed

        instance = await env.client.create(Quick)

        assert await instance.result(timeout=20) == "donedone"
        assert handed_back == []
    finally:
        for storm in storms:
            await storm.terminate()
