"""A round's time starts once it holds its instances (`Tx.start_now`): on SQLite, the wait for
the write lock, held by another writer, does not come out of the sleeps the round starts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa

from processor import Workflow, WorkflowEvent, WorkflowStep
from processor.engine.rounds import RunRequest, replay_rounds
from processor.store.tables import StepRow
from tests.conftest import TestEnv


class Nap(Workflow[dict[str, Any]]):
    name = "round-time-nap"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> None:
        await step.sleep("nap", "1 second")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_sleep_starts_when_the_round_holds_the_lock_not_when_it_asked(
    env: TestEnv,
) -> None:
    worker = await env.start_worker(Nap)
    await worker._stop_consuming()
    instance = await env.client.create(Nap)
    runtime = worker.runtime
    held = asyncio.Event()
    locked_until = None

    async def hold_the_write_lock() -> None:
        nonlocal locked_until
        async with runtime.database.transaction() as session:  # BEGIN IMMEDIATE
            await session.exec(sa.text("SELECT 1"))  # type: ignore[call-overload]
            held.set()
            await asyncio.sleep(0.5)
            locked_until = runtime.clock.now()

    holder = asyncio.create_task(hold_the_write_lock())
    await held.wait()
    await replay_rounds(runtime, worker.registry, worker.claimant, [RunRequest(instance.id)])
    await holder

    async with runtime.database.read() as session:
        step = await session.get(StepRow, (instance.id, "nap"))
    assert step is not None
    assert step.started_at is not None
    assert locked_until is not None
    assert step.started_at >= locked_until
