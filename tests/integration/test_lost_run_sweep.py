"""The lost-run sweep (`Worker.sweep_lost_runs`) republishes a run message only once its run
queue has been seen empty since the message was due: a backlog holds messages up, it does not
lose them, and republishing them only adds load when the workers are behind.

Each test calls the sweep itself, on a worker that consumes nothing (so run messages stay in the
queue until the test lets them go) and whose own sweeps are put off."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from processor import Worker, Workflow, WorkflowEvent, WorkflowStep
from processor.store.tables import InstanceRow
from processor.worker import RUN_GRACE
from tests.conftest import TestEnv, assert_eventually
from tests.integration.helpers import Wire, open_wire


class Hello(Workflow[dict[str, Any]]):
    name = "lost-run-hello"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> str:
        async def hello() -> str:
            return "hello"

        return await step.do("hello", hello)


@pytest.fixture(autouse=True)
def no_background_sweeps(monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker's own sweeps, every second, would race the ones the tests call.
    monkeypatch.setattr("processor.worker.SWEEP_INTERVAL_S", 3600.0)


async def idle_worker(env: TestEnv) -> Worker:
    """A worker that sweeps but consumes nothing: its run messages stay queued."""
    worker = await env.start_worker(Hello)
    await worker._stop_consuming()  # as it does during a database outage
    return worker


async def run_due_at(worker: Worker, instance_id: str) -> datetime | None:
    async with worker.runtime.database.read() as session:
        row = await session.get(InstanceRow, instance_id)
    assert row is not None
    return row.run_due_at


async def age_run_due_at(worker: Worker, instance_id: str, by: timedelta) -> None:
    """Make the instance look owed its round for `by` longer (its message lost long ago)."""
    async with worker.runtime.database.transaction() as session:
        row = await session.get(InstanceRow, instance_id)
        assert row is not None
        assert row.run_due_at is not None
        row.run_due_at -= by


async def queued(wire: Wire, queue: str, count: int) -> None:
    async def check() -> bool:
        return await wire.message_count(queue) == count

    await assert_eventually(check, what=f"{count} message(s) ready in {queue}")


async def test_a_run_message_held_up_in_a_backlog_is_not_republished(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every owed round counts as overdue at once, and a message as published the moment it is
    # due: only whether the queue was seen empty since then keeps it from being swept.
    monkeypatch.setattr("processor.worker.RUN_GRACE", timedelta(0))
    monkeypatch.setattr("processor.worker.PUBLISH_LAG", timedelta(0))
    worker = await idle_worker(env)
    queue = worker.runtime.topology.run_queue(Hello.name)
    assert await worker.sweep_lost_runs() == 0  # sees the queue empty, before the message
    instance = await env.client.create(Hello)
    due = await run_due_at(worker, instance.id)
    assert due is not None
    async with open_wire(env) as wire:
        await queued(wire, queue, 1)

        assert await worker.sweep_lost_runs() == 0
        assert await worker.sweep_lost_runs() == 0

        assert await wire.message_count(queue) == 1
    assert await run_due_at(worker, instance.id) == due


async def test_a_lost_run_message_is_republished_once_the_queue_is_seen_empty(
    env: TestEnv,
) -> None:
    worker = await idle_worker(env)
    queue = worker.runtime.topology.run_queue(Hello.name)
    instance = await env.client.create(Hello)
    async with open_wire(env) as wire:
        await queued(wire, queue, 1)
        assert len(await wire.take(queue)) == 1  # the run message is lost
        await age_run_due_at(worker, instance.id, RUN_GRACE + timedelta(seconds=1))

        assert await worker.sweep_lost_runs() == 1
        await queued(wire, queue, 1)
        # Once per window: the next try waits twice as long, and for the queue to be seen
        # empty after the copy just published.
        assert await worker.sweep_lost_runs() == 0
        assert await wire.message_count(queue) == 1

    await worker._start_consuming()
    assert await instance.result(timeout=20) == "hello"
    assert await run_due_at(worker, instance.id) is None


async def test_no_run_is_republished_while_the_queue_depth_cannot_be_read(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = await idle_worker(env)
    queue = worker.runtime.topology.run_queue(Hello.name)
    assert await worker.sweep_lost_runs() == 0  # sees the queue empty
    instance = await env.client.create(Hello)
    async with open_wire(env) as wire:
        await queued(wire, queue, 1)
        assert len(await wire.take(queue)) == 1  # the run message is lost
        # Owed since before the queue was seen empty: the earlier reading alone would sweep it.
        await age_run_due_at(worker, instance.id, RUN_GRACE + timedelta(seconds=1))

        async def broker_away(*args: object) -> int:
            raise ConnectionError("the broker is away")

        with monkeypatch.context() as patch:
            patch.setattr("processor.worker.ready_count", broker_away)
            assert await worker.sweep_lost_runs() == 0
        assert await wire.message_count(queue) == 0

        assert await worker.sweep_lost_runs() == 1
        await queued(wire, queue, 1)
