"""Instances parked on the same due time in one transaction share one wake-up through the delay
cascade (`Runtime._group_wake_ups`), which the consumer splits into one wake-up each, on
arrival, without waiting for a slot."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest

from processor import Workflow, WorkflowEvent, WorkflowStep
from processor.engine.rounds import RunRequest, replay_rounds
from schemas import RunInstance
from tests.conftest import TestEnv, assert_eventually
from tests.integration.helpers import open_wire


async def hello() -> str:
    return "hello"


class Nap(Workflow[dict[str, Any]]):
    name = "wake-group-nap"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> str:
        await step.sleep("nap", "2 seconds")
        return await step.do("hello", hello)


async def test_instances_parked_together_share_one_wake_up_split_on_arrival(env: TestEnv) -> None:
    worker = await env.start_worker(Nap)
    await worker._stop_consuming()
    instances = [await env.client.create(Nap) for _ in range(3)]
    ids = [instance.id for instance in instances]
    # Their first rounds, in one transaction: each parks on the same due time.
    works = await replay_rounds(
        worker.runtime, worker.registry, worker.claimant, [RunRequest(i) for i in ids]
    )
    assert works == [None, None, None]
    wake_queue = worker.runtime.topology.wake_queue(Nap.name)
    async with open_wire(env) as wire:

        async def arrived() -> bool:
            return await wire.message_count(wake_queue) >= 1

        await assert_eventually(arrived, what="the wake-up")
        (message,) = await wire.take(wake_queue)
    wake_up = RunInstance.model_validate(json.loads(message.body))
    assert wake_up.wake_at is not None
    assert sorted([wake_up.instance_id, *(wake_up.more_instance_ids or [])]) == sorted(ids)

    # Back into the queue as it came, for the worker to split.
    await worker.runtime.publisher.publish_run(Nap.name, message.body, "the-group", wake_up.wake_at)
    await worker._start_consuming()
    for instance in instances:
        assert await instance.result(timeout=20) == "hello"


#: Set by the test: the step of Hold runs until it is.
release_hold: asyncio.Event | None = None


async def hold() -> str:
    assert release_hold is not None
    await release_hold.wait()
    return "held"


class Hold(Workflow[dict[str, Any]]):
    name = "wake-group-hold"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> str:
        return await step.do("hold", hold)


async def test_a_group_is_split_while_every_slot_is_busy_so_no_sweep_takes_it_for_lost(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    global release_hold
    release_hold = asyncio.Event()
    monkeypatch.setattr("processor.worker.SWEEP_INTERVAL_S", 3600.0)  # the test sweeps
    monkeypatch.setattr("processor.worker.SWEEP_GRACE", timedelta(0))
    monkeypatch.setattr("processor.worker.CASCADE_LAG", timedelta(0))
    worker = await env.start_worker(Nap, Hold, concurrency=1)
    holder = await env.client.create(Hold)

    async def holding() -> bool:
        return (await holder.status()).status == "running"

    await assert_eventually(holding, what="the only slot to be taken")
    naps = [await env.client.create(Nap) for _ in range(3)]
    await replay_rounds(
        worker.runtime, worker.registry, worker.claimant, [RunRequest(n.id) for n in naps]
    )
    assert await worker.sweep_overdue_timers() == 0  # not due; the wake queue is seen empty
    await asyncio.sleep(3)  # the group is due (2 s) and has arrived

    # Split on arrival, its wake-ups wait in the queue: none is taken for lost.
    assert await worker.sweep_overdue_timers() == 0

    release_hold.set()
    assert await holder.result(timeout=20) == "held"
    for nap in naps:
        assert await nap.result(timeout=20) == "hello"
