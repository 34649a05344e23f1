"""The timer sweep (`Worker.sweep_overdue_timers`) republishes a wake-up only once its wake
queue has been seen empty since the wake-up was due: a backlog holds wake-ups up, it does not
lose them. A lapsed lease is swept once its run queue has been seen empty since (no report of
the attempt can still be queued there), or once it lapsed long ago (REPORT_CEILING).
What the sweep republishes goes to the wake queue too, whose readings decide the next sweep.

Each test calls the sweep itself, on a worker that has stopped consuming (so messages stay in
their queue until the test lets them go) and whose own sweeps are put off."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from processor import Worker, Workflow, WorkflowEvent, WorkflowStep
from processor.broker.topology import ready_count
from processor.engine.replay import REPORT_CEILING
from processor.store.tables import StepRow, new_row
from schemas import RunInstance, StepKind, StepStatusName
from tests.conftest import TestEnv, assert_eventually
from tests.integration.helpers import Wire, open_wire


async def hello() -> str:
    return "hello"


class Nap(Workflow[dict[str, Any]]):
    name = "timer-sweep-nap"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> str:
        await step.sleep("nap", "2 seconds")
        return await step.do("hello", hello)


class Hello(Workflow[dict[str, Any]]):
    name = "timer-sweep-hello"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> str:
        return await step.do("hello", hello)


@pytest.fixture(autouse=True)
def sweep_only_when_called(monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker's own sweeps, every second, would race the ones the tests call; and every
    # due timer counts as overdue at once, so only the queue's readings decide.
    monkeypatch.setattr("processor.worker.SWEEP_INTERVAL_S", 3600.0)
    monkeypatch.setattr("processor.worker.SWEEP_GRACE", timedelta(0))
    monkeypatch.setattr("processor.worker.CASCADE_LAG", timedelta(0))


async def queued(wire: Wire, queue: str, count: int) -> None:
    async def check() -> bool:
        return await wire.message_count(queue) == count

    await assert_eventually(check, what=f"{count} message(s) ready in {queue}")


async def napping_on_an_idle_worker(env: TestEnv) -> tuple[Worker, Any]:
    """An instance asleep, on a worker that no longer consumes: its wake-up will stay queued.
    The worker has seen the wake queue empty before the wake-up could arrive."""
    worker = await env.start_worker(Nap)
    instance = await env.client.create(Nap)

    async def asleep() -> bool:
        return (await instance.status()).status == "waiting"

    await assert_eventually(asleep, what="the instance to sleep")
    await worker._stop_consuming()
    assert await worker.sweep_overdue_timers() == 0  # not due yet; the queue is seen empty
    return worker, instance


async def test_a_wake_up_held_up_in_a_backlog_is_not_republished(env: TestEnv) -> None:
    worker, instance = await napping_on_an_idle_worker(env)
    queue = worker.runtime.topology.wake_queue(Nap.name)
    async with open_wire(env) as wire:
        await queued(wire, queue, 1)  # due now, and waiting for a worker

        assert await worker.sweep_overdue_timers() == 0
        assert await worker.sweep_overdue_timers() == 0

        assert await wire.message_count(queue) == 1
    await worker._start_consuming()
    assert await instance.result(timeout=20) == "hello"


async def test_a_lost_wake_up_is_republished_once_the_queue_is_seen_empty(env: TestEnv) -> None:
    worker, instance = await napping_on_an_idle_worker(env)
    queue = worker.runtime.topology.wake_queue(Nap.name)
    async with open_wire(env) as wire:
        await queued(wire, queue, 1)
        assert len(await wire.take(queue)) == 1  # the wake-up is lost

        assert await worker.sweep_overdue_timers() == 1
        await queued(wire, queue, 1)
        # The copy is queued: no other until the queue is seen empty after it.
        assert await worker.sweep_overdue_timers() == 0
        assert await wire.message_count(queue) == 1
    await worker._start_consuming()
    assert await instance.result(timeout=20) == "hello"


async def queued_on_an_idle_worker(env: TestEnv) -> tuple[Worker, Any]:
    """An instance whose run message stays queued: its worker no longer consumes."""
    worker = await env.start_worker(Hello)
    await worker._stop_consuming()
    return worker, await env.client.create(Hello)


async def _claimed_by_a_gone_worker(worker: Worker, instance_id: str, lapsed: timedelta) -> None:
    """An attempt claimed by a worker that is gone, whose lease lapsed `lapsed` ago."""
    async with worker.runtime.database.transaction() as session:
        session.add(
            new_row(
                StepRow,
                instance_id=instance_id,
                key="hello",
                seq=0,
                name="hello",
                kind=StepKind.DO.value,
                status=StepStatusName.RUNNING.value,
                attempt=1,
                claimed_by="a-worker-that-is-gone",
                wake_at=worker.runtime.clock.now() - lapsed,
            )
        )


async def test_a_lapsed_lease_waits_for_its_run_queue_to_be_seen_empty(env: TestEnv) -> None:
    """While the run queue holds messages, the attempt's report may be among them: a round
    would not take the attempt for lost, so the sweep does not wake one."""
    worker, instance = await queued_on_an_idle_worker(env)
    run_queue = worker.runtime.topology.run_queue(Hello.name)
    wake_queue = worker.runtime.topology.wake_queue(Hello.name)
    async with open_wire(env) as wire:
        await queued(wire, run_queue, 1)
        await _claimed_by_a_gone_worker(worker, instance.id, timedelta(minutes=1))
        assert await worker.sweep_lost_runs() == 0  # reads the run queue: not empty
        assert await worker.sweep_overdue_timers() == 0

        assert len(await wire.take(run_queue)) == 1  # the queue drains
        assert await worker.sweep_lost_runs() == 0  # seen empty
        assert await worker.sweep_overdue_timers() == 1
        assert await worker.sweep_overdue_timers() == 0  # not again before the next reading
        await queued(wire, wake_queue, 1)
    await worker._start_consuming()
    assert await instance.result(timeout=20) == "hello"


async def test_a_lease_lapsed_past_the_ceiling_is_swept_while_the_queue_is_never_seen_empty(
    env: TestEnv,
) -> None:
    worker, instance = await queued_on_an_idle_worker(env)
    run_queue = worker.runtime.topology.run_queue(Hello.name)
    wake_queue = worker.runtime.topology.wake_queue(Hello.name)
    async with open_wire(env) as wire:
        await queued(wire, run_queue, 1)
        lapsed = REPORT_CEILING + timedelta(minutes=1)
        await _claimed_by_a_gone_worker(worker, instance.id, lapsed)

        assert await worker.sweep_overdue_timers() == 1
        await queued(wire, wake_queue, 1)
        assert await wire.message_count(run_queue) == 1
    await worker._start_consuming()
    assert await instance.result(timeout=20) == "hello"


class Other(Workflow[dict[str, Any]]):
    name = "timer-sweep-aaa-other"  # its queue is read before Nap's

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> str:
        return await step.do("hello", hello)


async def test_a_wake_queue_that_cannot_be_read_leaves_the_others_swept(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = await env.start_worker(Nap, Other)
    instance = await env.client.create(Nap)

    async def asleep() -> bool:
        return (await instance.status()).status == "waiting"

    await assert_eventually(asleep, what="the instance to sleep")
    await worker._stop_consuming()
    nap_queue = worker.runtime.topology.wake_queue(Nap.name)
    async with open_wire(env) as wire:
        await queued(wire, nap_queue, 1)
        assert len(await wire.take(nap_queue)) == 1  # the wake-up is lost
        # Reading another workflow's wake queue fails on every sweep (deleted, say).
        other_queue = worker.runtime.topology.wake_queue(Other.name)

        async def unreadable_other(channel: Any, queue: str) -> int:
            if queue == other_queue:
                raise ConnectionError("no such queue")
            return await ready_count(channel, queue)

        monkeypatch.setattr("processor.worker.ready_count", unreadable_other)

        assert await worker.sweep_overdue_timers() == 1
        await queued(wire, nap_queue, 1)
    await worker._start_consuming()
    assert await instance.result(timeout=20) == "hello"


async def test_a_wake_up_overdue_by_the_ceiling_is_swept_even_in_a_backlog(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker, instance = await napping_on_an_idle_worker(env)
    queue = worker.runtime.topology.wake_queue(Nap.name)
    monkeypatch.setattr("processor.worker.TIMER_SWEEP_CEILING", timedelta(0))
    async with open_wire(env) as wire:
        await queued(wire, queue, 1)
        assert len(await wire.take(queue)) == 1  # lost, and the queue never drains again:
        body = RunInstance(instance_id="another", wake_at=worker.runtime.clock.now())
        await worker.runtime.publisher.publish_run(  # another wake-up keeps it not empty
            Nap.name, body.model_dump_json().encode(), "another", body.wake_at
        )
        await queued(wire, queue, 1)

        assert await worker.sweep_overdue_timers() == 1
        await queued(wire, queue, 2)
    await worker._start_consuming()
    assert await instance.result(timeout=20) == "hello"
