"""Instances parked on the same due time in one transaction share one wake-up through the delay
cascade (`Runtime._group_wake_ups`). On arrival, without a slot of its own, the consumer keeps
as many as it expects to give a slot soon, at the rate its slots are being released (with none
being released, those free now), and publishes one wake-up each for the rest; those it keeps
take slots one by one, and those still waiting once no slot has been released for a while are
published too (`RunConsumer.wake_group`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

from processor import Worker, Workflow, WorkflowEvent, WorkflowStep
from processor.consumers.runs import RunConsumer
from processor.engine.rounds import ClaimedWork, RunRequest, replay_rounds
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


def lone_wake_ups(worker: Worker, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The instances the worker publishes a wake-up of their own for, from now on (each once
    the broker confirmed it)."""
    published: list[str] = []
    publish_run = worker.runtime.publisher.publish_run

    async def spy(workflow: str, body: bytes, *args: Any, **kwargs: Any) -> None:
        await publish_run(workflow, body, *args, **kwargs)
        command = RunInstance.model_validate_json(body)
        if command.wake_at is not None and not command.more_instance_ids:
            published.append(command.instance_id)  # once confirmed: in the queue

    monkeypatch.setattr(worker.runtime.publisher, "publish_run", spy)
    return published


async def park_together(
    env: TestEnv, worker: Worker, count: int, workflow: type[Workflow[Any]] = Nap
) -> list[Any]:
    """`count` instances (of Nap, or another workflow that first sleeps 2 s), parked in one
    transaction: one wake-up for all, in 2 s. The worker consumes nothing meanwhile, so no
    round parks one of them alone."""
    await worker._stop_consuming()
    naps = [await env.client.create(workflow) for _ in range(count)]
    works = await replay_rounds(
        worker.runtime, worker.registry, worker.claimant, [RunRequest(n.id) for n in naps]
    )
    assert works == [None] * count
    await worker._start_consuming()
    return naps


def sweep_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """No sweep but the test's own (`Worker.sweep_overdue_timers`), which takes a timer for
    lost as soon as it is due and its wake queue was seen empty since."""
    monkeypatch.setattr("processor.worker.SWEEP_INTERVAL_S", 3600.0)
    monkeypatch.setattr("processor.worker.SWEEP_GRACE", timedelta(0))
    monkeypatch.setattr("processor.worker.CASCADE_LAG", timedelta(0))


async def every_slot_given_back(worker: Worker) -> None:
    """Once the work is done, the worker has every slot free again: none kept, none released
    twice."""

    async def given_back() -> bool:
        return worker._slots._free == worker.concurrency

    await assert_eventually(given_back, timeout=10, what="every slot given back")


async def test_instances_parked_together_share_one_wake_up_woken_on_arrival(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
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

    # Back into the queue as it came: every slot is free, so each is woken on arrival.
    await worker.runtime.publisher.publish_run(Nap.name, message.body, "the-group", wake_up.wake_at)
    published = lone_wake_ups(worker, monkeypatch)
    await worker._start_consuming()
    for instance in instances:
        assert await instance.result(timeout=20) == "hello"
    assert published == []
    await every_slot_given_back(worker)


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


class NapThenHold(Workflow[dict[str, Any]]):
    name = "wake-group-nap-then-hold"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> str:
        await step.sleep("nap", "2 seconds")
        return await step.do("hold", hold)


async def hold_a_slot(env: TestEnv, worker: Worker) -> Any:
    """A Hold instance whose step keeps a slot until `release_hold` is set."""
    global release_hold
    release_hold = asyncio.Event()
    holder = await env.client.create(Hold)

    async def holding() -> bool:
        return (await holder.status()).status == "running"

    await assert_eventually(holding, what="a slot to be taken")
    return holder


async def published_one_each(published: list[str], naps: list[Any], what: str) -> None:
    """Wait until a wake-up of its own was published for each of `naps`, and no other."""

    async def every_one() -> bool:
        return len(published) == len(naps)

    await assert_eventually(every_one, timeout=10, what=what)
    assert sorted(published) == sorted(nap.id for nap in naps)


async def release_the_hold_and_finish(holder: Any, naps: list[Any]) -> None:
    """Let the Hold instance's step end, and see it and every one of `naps` complete."""
    assert release_hold is not None
    release_hold.set()
    assert await holder.result(timeout=20) == "held"
    for nap in naps:
        assert await nap.result(timeout=20) == "hello"


async def test_a_group_is_split_while_every_slot_is_busy_so_no_sweep_takes_it_for_lost(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep_by_hand(monkeypatch)
    keep_only_free_slots(monkeypatch)
    worker = await env.start_worker(Nap, Hold, concurrency=1)
    holder = await hold_a_slot(env, worker)
    published = lone_wake_ups(worker, monkeypatch)
    naps = await park_together(env, worker, 3)
    assert await worker.sweep_overdue_timers() == 0  # not due; the wake queue is seen empty

    await published_one_each(published, naps, "the group, due in 2 s, split on arrival")
    # Its wake-ups wait in the queue for the only slot: none is taken for lost.
    assert await worker.sweep_overdue_timers() == 0

    await release_the_hold_and_finish(holder, naps)


async def test_a_group_wakes_here_as_many_as_find_a_free_slot_and_publishes_the_rest(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep_only_free_slots(monkeypatch)
    worker = await env.start_worker(Nap, Hold, concurrency=2)
    holder = await hold_a_slot(env, worker)
    published = lone_wake_ups(worker, monkeypatch)
    naps = await park_together(env, worker, 3)

    async def woken() -> bool:
        statuses = [(await nap.status()).status for nap in naps]
        return len(published) == 2 and statuses.count("waiting") < 3

    await assert_eventually(woken, timeout=10, what="one woken here, two published")
    await release_the_hold_and_finish(holder, naps)
    assert len(published) == 2
    await every_slot_given_back(worker)


def keep_only_free_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker keeps as many of a group's instances as it has slots free, as when none were
    released lately, whatever the slots released before the group arrived."""
    monkeypatch.setattr("processor.consumers.runs.GROUP_HOLD_S", 0.0)


def keep_from_groups(worker: Worker, monkeypatch: pytest.MonkeyPatch, count: int = 100) -> None:
    """The worker keeps `count` instances of a group, as if its slots were being released
    fast enough to give each a slot within GROUP_HOLD_S (Slots.takers_within)."""
    monkeypatch.setattr(worker._slots, "takers_within", lambda seconds: count)


def no_longer_held(runs: RunConsumer) -> Callable[[], Awaitable[bool]]:
    async def released() -> bool:
        return not runs.holds_wake_ups(Nap.name)

    return released


async def a_group_waiting_for_a_held_slot(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> tuple[Worker, RunConsumer, Any, list[str], list[Any]]:
    """A worker with one slot, held by a Hold instance (its holder), and a group of three Nap
    instances, due, kept whole and waiting for that slot, with no limit but the stall; the
    instances the worker publishes a wake-up of their own for from then on."""
    monkeypatch.setattr("processor.consumers.runs.GROUP_HOLD_LIMIT_S", 60.0)
    worker = await env.start_worker(Nap, Hold, concurrency=1)
    runs = worker._runs
    assert runs is not None
    holder = await hold_a_slot(env, worker)
    keep_from_groups(worker, monkeypatch)
    published = lone_wake_ups(worker, monkeypatch)
    naps = await park_together(env, worker, 3)

    async def waiting_here() -> bool:
        return runs.holds_wake_ups(Nap.name)

    await assert_eventually(waiting_here, timeout=10, what="the group, due in 2 s")
    return worker, runs, holder, published, naps


async def test_a_group_waits_for_a_slot_unswept_and_is_split_once_none_is_released(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep_by_hand(monkeypatch)
    monkeypatch.setattr("processor.consumers.runs.SLOTS_STALLED_S", 3.0)
    worker, runs, holder, published, naps = await a_group_waiting_for_a_held_slot(env, monkeypatch)
    # Due, and its queue empty, but the group waits here: none is taken for lost.
    assert await worker.sweep_overdue_timers() == 0
    assert published == []

    await published_one_each(published, naps, "the group split, no slot released")
    await assert_eventually(no_longer_held(runs), what="the group no longer held")
    # Its wake-ups wait in the queue for the only slot: none is taken for lost.
    assert await worker.sweep_overdue_timers() == 0

    await release_the_hold_and_finish(holder, naps)
    await every_slot_given_back(worker)


async def test_a_lone_wake_up_waiting_here_for_a_slot_is_not_swept_either(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep_by_hand(monkeypatch)
    worker = await env.start_worker(Nap, Hold, concurrency=1)
    holder = await hold_a_slot(env, worker)
    (nap,) = await park_together(env, worker, 1)  # alone: a wake-up of its own
    wake_queue = worker.runtime.topology.wake_queue(Nap.name)

    async def waiting_here() -> bool:
        return worker._waiting_for_slots[wake_queue] == 1

    await assert_eventually(waiting_here, timeout=10, what="the wake-up, due in 2 s")
    # Due, and its queue empty, but the wake-up waits here, unacked: not taken for lost.
    assert await worker.sweep_overdue_timers() == 0
    await release_the_hold_and_finish(holder, [nap])
    await every_slot_given_back(worker)


async def test_a_group_wakes_every_instance_here_while_slots_are_being_released(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One slot is held throughout; the other goes to the group's instances one after another,
    # however slow the machine.
    monkeypatch.setattr("processor.consumers.runs.SLOTS_STALLED_S", 30.0)
    worker = await env.start_worker(Nap, Hold, concurrency=2)
    holder = await hold_a_slot(env, worker)
    keep_from_groups(worker, monkeypatch)
    published = lone_wake_ups(worker, monkeypatch)
    naps = await park_together(env, worker, 3)

    for nap in naps:
        assert await nap.result(timeout=20) == "hello"
    assert published == []
    await release_the_hold_and_finish(holder, naps)
    await every_slot_given_back(worker)


async def test_a_group_keeps_as_many_as_the_slots_are_expected_to_take_and_publishes_the_rest(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = await env.start_worker(Nap, concurrency=1)
    keep_from_groups(worker, monkeypatch, 2)
    published = lone_wake_ups(worker, monkeypatch)
    naps = await park_together(env, worker, 3)

    for nap in naps:
        assert await nap.result(timeout=20) == "hello"
    assert len(published) == 1
    assert published[0] in {nap.id for nap in naps}
    await every_slot_given_back(worker)


async def test_a_group_waiting_when_the_worker_stops_consuming_publishes_the_rest(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker, runs, holder, published, naps = await a_group_waiting_for_a_held_slot(env, monkeypatch)
    stopping = True
    monkeypatch.setattr(runs, "consuming", lambda: not stopping)
    assert release_hold is not None
    release_hold.set()  # its slot goes to the group, which gives it back and publishes all

    await published_one_each(published, naps, "the group published")
    await assert_eventually(no_longer_held(runs), what="the group no longer held")
    assert await holder.result(timeout=20) == "held"
    stopping = False
    for nap in naps:
        assert await nap.result(timeout=20) == "hello"
    await every_slot_given_back(worker)


def failing_once(monkeypatch: pytest.MonkeyPatch, runs: RunConsumer, instance_id: str) -> None:
    """The first round here for `instance_id` fails."""
    wake_here = runs._wake_here
    failed = False

    async def flaky(woken: str) -> ClaimedWork | None:
        nonlocal failed
        if woken == instance_id and not failed:
            failed = True
            raise RuntimeError("a round that fails")
        return await wake_here(woken)

    monkeypatch.setattr(runs, "_wake_here", flaky)


async def test_a_round_here_that_fails_is_published_as_a_wake_up_of_its_own(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No sweep: it would wake an instance the group left behind.
    monkeypatch.setattr("processor.worker.SWEEP_INTERVAL_S", 3600.0)
    worker = await env.start_worker(Nap)
    assert worker._runs is not None
    published = lone_wake_ups(worker, monkeypatch)
    naps = await park_together(env, worker, 3)
    failing_once(monkeypatch, worker._runs, naps[1].id)

    for nap in naps:
        assert await nap.result(timeout=20) == "hello"
    assert published == [naps[1].id]
    await every_slot_given_back(worker)


async def test_a_failed_round_whose_wake_up_cannot_be_published_is_left_to_the_timer_sweep(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep_by_hand(monkeypatch)
    worker = await env.start_worker(Nap)
    runs = worker._runs
    assert runs is not None
    naps = await park_together(env, worker, 3)
    failing_once(monkeypatch, runs, naps[1].id)
    publish_wake_ups = runs._publish_wake_ups
    calls: list[list[str]] = []

    async def failing_publish(workflow: str, instance_ids: list[str], wake_at: Any) -> None:
        calls.append(instance_ids)
        if instance_ids:
            raise ConnectionError("the broker is away")
        await publish_wake_ups(workflow, instance_ids, wake_at)

    monkeypatch.setattr(runs, "_publish_wake_ups", failing_publish)

    async def given_up() -> bool:
        return [naps[1].id] in calls

    await assert_eventually(given_up, timeout=10, what="the failed wake-up's publish")
    # The group is acked: the steps the others claimed run once, not again after a
    # redelivery; the timer of the one left behind is still due in SQL, for the sweep.
    for nap in (naps[0], naps[2]):
        assert await nap.result(timeout=20) == "hello"
    assert (await naps[1].status()).status == "waiting"
    assert await worker.sweep_overdue_timers() == 1
    assert await naps[1].result(timeout=20) == "hello"
    for nap in naps:
        row = await env.step_row(nap.id, "hello")
        assert row is not None
        assert row.attempt == 1
    await every_slot_given_back(worker)


async def test_an_instance_woken_here_runs_its_step_without_waiting_for_the_groups_other_rounds(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = await env.start_worker(Nap)
    runs = worker._runs
    assert runs is not None
    naps = await park_together(env, worker, 2)
    wake_here = runs._wake_here
    slow_round_may_end = asyncio.Event()

    async def one_slow_round(instance_id: str) -> ClaimedWork | None:
        if instance_id == naps[1].id:
            await slow_round_may_end.wait()
        return await wake_here(instance_id)

    monkeypatch.setattr(runs, "_wake_here", one_slow_round)

    assert await naps[0].result(timeout=20) == "hello"
    assert (await naps[1].status()).status == "waiting"
    slow_round_may_end.set()
    assert await naps[1].result(timeout=20) == "hello"
    await every_slot_given_back(worker)


async def test_closing_the_consumer_cancels_the_attempts_of_woken_instances_still_running(
    env: TestEnv,
) -> None:
    """What a group's handler started and could not cancel itself (cancelled past the grace
    while acking, say) is cancelled as the worker stops, so the attempts it ran are dropped,
    not released while they go on running here."""
    global release_hold
    release_hold = asyncio.Event()
    worker = await env.start_worker(NapThenHold)
    runs = worker._runs
    assert runs is not None
    await park_together(env, worker, 2, NapThenHold)

    async def holding() -> bool:
        return len(worker.claimant.running) == 2

    await assert_eventually(holding, timeout=10, what="both woken here, their steps running")
    running = set(worker.claimant.running)
    await runs.aclose(0)

    assert worker.claimant.running == set()
    assert running <= worker.claimant.dropped
    assert worker._slots._free == worker.concurrency  # theirs given back
    release_hold.set()
