"""Two rounds of one instance on one worker at once (two run messages arrive together): the
second must find the first's claimed attempts running, not lost; a draining worker's
attempts are not taken over while it still beats; and rounds and outcomes that arrive
together share transactions."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

from processor import RetryPolicy, Workflow, WorkflowEvent, WorkflowStep
from processor import worker as worker_module
from processor.engine import attempts, rounds
from processor.engine.replay import REPORT_DELIVERY_GRACE
from processor.engine.rounds import RunRequest, replay_rounds
from processor.store import driver
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


class Pair(Workflow):
    name = "step-pair"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> list[str]:
        once = RetryPolicy(limit=0)  # a false "lost" would fail the instance
        return list(
            await asyncio.gather(
                step.do("short", counted, f"{event.instance_id}:short", 0.5, retries=once),
                step.do("long", counted, f"{event.instance_id}:long", 1.0, retries=once),
            )
        )


@pytest.mark.parametrize("gap_s", [0, 12])
async def test_reports_left_by_a_stopped_worker_are_recorded_not_taken_for_lost(
    env: TestEnv, gap_s: float
) -> None:
    """A worker stops after both steps end: their reports wait in the run queue, for the next
    worker to start, at once or once the stopped one's heartbeat is stale (WORKER_STALE).
    That worker takes one report first, while the other step is still running in SQL: it
    must wait for that report, not take the step for lost (its worker stopped) and fail it."""
    stopping = await env.start_worker(Pair, shutdown_grace=30)
    instance = await env.client.create(Pair)
    await assert_eventually(lambda: _ran(f"{instance.id}:long"), what="the steps to start")
    await env.stop_worker(stopping)  # takes no more messages, waits for both steps
    assert RUNS[f"{instance.id}:long"] == 1
    await asyncio.sleep(gap_s)
    await env.start_worker(Pair, concurrency=1)  # one report at a time
    assert await instance.result(timeout=30) == ["done", "done"]
    assert (RUNS[f"{instance.id}:short"], RUNS[f"{instance.id}:long"]) == (1, 1)


async def _ran(instance_id: str) -> bool:
    return RUNS[instance_id] > 0


STEP_RUNS: Counter[tuple[str, int]] = Counter()


async def tally(instance_id: str, index: int) -> int:
    STEP_RUNS[(instance_id, index)] += 1
    return index


class FourSteps(Workflow):
    name = "four-steps"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> int:
        total = 0
        for index in range(4):
            total += await step.do(f"s{index}", tally, event.instance_id, index)
        return total


async def test_rounds_that_arrive_together_share_transactions(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slow locks make messages pile up behind the busy transactions; they then go in
    batches, and every instance still runs each step once, in order."""
    batches: list[int] = []
    lock_instances = driver.lock_instances

    async def slow_lock(session: Any, instance_ids: Any) -> Any:
        batches.append(len(set(instance_ids)))
        await asyncio.sleep(0.05)
        return await lock_instances(session, instance_ids)

    monkeypatch.setattr(driver, "lock_instances", slow_lock)
    await env.start_worker(FourSteps, concurrency=30)
    instances = await asyncio.gather(*(env.client.create(FourSteps) for _ in range(30)))
    for instance in instances:
        assert await instance.result(timeout=60) == 6
        assert [STEP_RUNS[(instance.id, index)] for index in range(4)] == [1, 1, 1, 1]
    assert max(batches) > 1
    # 30 instances x 5 rounds (the first, then one recording each step's report), in fewer
    # transactions than that.
    assert sum(batches) >= 30 * 5
    assert len(batches) < 30 * 5


class SlowStep(Workflow):
    name = "slow-step"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> str:
        return await step.do("slow", counted, event.instance_id, 2.0)


async def test_a_delivery_that_waits_too_long_for_a_slot_goes_back_to_its_queue(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One slot, two instances: the second's delivery waits for the slot the first's step
    holds, goes back to the queue after SLOT_WAIT_S, and runs once the slot is free."""
    handed_back: list[str | None] = []
    original = worker_module.hand_back

    async def counted_hand_back(runtime: Any, queue: str, message: Any) -> None:
        handed_back.append(message.message_id)
        await original(runtime, queue, message)

    monkeypatch.setattr(worker_module, "SLOT_WAIT_S", 0.3)
    monkeypatch.setattr(worker_module, "hand_back", counted_hand_back)
    await env.start_worker(SlowStep, concurrency=1)
    first = await env.client.create(SlowStep)
    second = await env.client.create(SlowStep)
    assert await first.result(timeout=30) == "done"
    assert await second.result(timeout=30) == "done"
    assert handed_back  # the waiting delivery went back at least once
    assert RUNS[first.id] == 1
    assert RUNS[second.id] == 1


class ShortTimeout(Workflow):
    name = "short-timeout"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> str:
        return await step.do(
            "quick",
            counted,
            event.instance_id,
            0.1,
            retries=RetryPolicy(limit=0),
            timeout="1 second",
        )


async def test_a_report_held_up_in_the_run_queue_past_its_lease_is_recorded(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease (timeout + LEASE_GRACE) runs out while the report waits in the run queue
    (the worker takes no messages meanwhile, as behind a backlog or during a database
    outage), and a round comes first: it must not take the attempt for lost while its
    report may be queued. The report is then recorded, once."""
    monkeypatch.setattr(attempts, "LEASE_GRACE", timedelta(seconds=1))
    worker = await env.start_worker(ShortTimeout)
    publish = rounds._publish_report
    published = asyncio.Event()

    async def held_up(*args: Any) -> None:
        await worker._stop_consuming()
        await publish(*args)
        published.set()

    async def fails(*args: Any) -> None:
        raise ConnectionError("the database is away")

    monkeypatch.setattr(rounds, "_publish_report", held_up)
    # Its worker cannot record it (see AttemptRunner._report): only the report's message can.
    monkeypatch.setattr(rounds.AttemptRunner, "_record_here", fails)
    instance = await env.client.create(ShortTimeout)
    await asyncio.wait_for(published.wait(), 10)
    # Past the lease, and long enough for the sweeps to have seen the run queue empty, were
    # it empty.
    await asyncio.sleep(1 + 1 + REPORT_DELIVERY_GRACE.total_seconds() + 2)
    await replay_rounds(worker.runtime, worker.registry, worker.claimant, [RunRequest(instance.id)])
    await worker._start_consuming()
    assert await instance.result(timeout=30) == "done"
    assert RUNS[instance.id] == 1


class TwoSteps(Workflow):
    name = "two-steps"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> str:
        once = RetryPolicy(limit=0)
        await step.do("first", counted, f"{event.instance_id}:first", 3.0, retries=once)
        return await step.do("second", counted, f"{event.instance_id}:second", 0.0, retries=once)


async def test_a_report_that_finds_every_slot_busy_is_recorded_at_once(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The only worker left to take a report has its one slot busy with a long step: the
    report is recorded at once (so no round elsewhere could take its attempt for lost while
    it waited unacked), and the next step runs once the slot is free."""

    async def fails(*args: Any) -> None:
        raise ConnectionError("the database is away")

    # The worker that ran the step cannot record it (see AttemptRunner._report): its message must.
    monkeypatch.setattr(rounds.AttemptRunner, "_record_here", fails)
    first = await env.start_worker(TwoSteps, shutdown_grace=30)
    instance = await env.client.create(TwoSteps)
    await assert_eventually(lambda: _ran(f"{instance.id}:first"), what="the first step")
    await env.start_worker(TwoSteps, Long, concurrency=1)
    blocker = await env.client.create(Long)  # only that worker serves it
    await assert_eventually(lambda: _ran(blocker.id), what="the long step to start")
    await env.stop_worker(first)  # the first step ends; its report goes to the busy worker

    async def first_recorded() -> bool:
        steps = {step.name: step for step in (await instance.status()).steps}
        return steps["first"].status == "complete"

    await assert_eventually(first_recorded, timeout=5, what="the report to be recorded")
    assert RUNS[f"{instance.id}:second"] == 0  # the slot is still busy
    assert await instance.result(timeout=30) == "done"
    assert await blocker.result(timeout=30) == "done"


async def test_a_claim_whose_run_never_began_is_released_at_stop(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run message is acked once the claim commits; a worker that stops before running
    the claimed attempt (its follow-up cancelled before it began) releases it, so the next
    worker retries it at once rather than once the heartbeat is stale."""
    began = asyncio.Event()

    async def never_runs(*args: Any) -> None:
        began.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(rounds.AttemptRunner, "run_claimed", never_runs)
    stopping = await env.start_worker(Long, shutdown_grace=0.1)
    instance = await env.client.create(Long)
    await asyncio.wait_for(began.wait(), 10)
    await env.stop_worker(stopping)

    row = await env.step_row(instance.id, "long")
    assert row is not None
    assert row.status == "running"
    assert row.claimed_by is None  # released: taken for lost by the next round at once
