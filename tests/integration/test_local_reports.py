"""The worker that ran a step attempt records its report itself, in a round of its own, while
it publishes the report's message (engine/rounds.py, LocalReports): the message, when it comes
back, runs no round; a round given a report recorded already replays nothing; and a worker
that is stopping leaves its last reports to their messages."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aio_pika.abc import AbstractIncomingMessage

from processor import RetryPolicy, Workflow, WorkflowEvent, WorkflowStep
from processor.consumers import runs
from processor.consumers.base import FollowUp, Handler
from processor.engine import rounds
from processor.engine.attempts import AttemptOutcome, report_of
from processor.engine.rounds import RunRequest, replay_rounds
from processor.store.database import Database
from processor.store.tables import StepRow
from tests.conftest import TestEnv, assert_eventually


async def trivial(name: str) -> str:
    return name


async def slow(name: str) -> str:
    await asyncio.sleep(1.5)
    return name


class ThreeSteps(Workflow):
    name = "local-three-steps"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> list[str]:
        return [await step.do(name, trivial, name) for name in ("a", "b", "c")]


class SlowThenQuick(Workflow):
    name = "local-slow-then-quick"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> list[str]:
        once = RetryPolicy(limit=0)
        return [
            await step.do("slow", slow, "slow", retries=once),
            await step.do("quick", trivial, "quick", retries=once),
        ]


async def test_each_report_is_recorded_by_its_worker_and_its_message_runs_no_round(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    handled_reports: list[str | None] = []
    came_back: list[str | None] = []
    published: list[str] = []
    handle = runs.RunConsumer.handle
    recorded_here = runs.RunConsumer.recorded_here
    publish = rounds._publish_report

    async def counting_handle(
        self: runs.RunConsumer, workflow: str, message: AbstractIncomingMessage, **options: Any
    ) -> FollowUp | None:
        if runs.carries_report(message):
            handled_reports.append(message.message_id)
        return await handle(self, workflow, message, **options)

    def counting_recorded_here(
        self: runs.RunConsumer, workflow: str, message: AbstractIncomingMessage
    ) -> Handler | None:
        handler = recorded_here(self, workflow, message)
        if handler is not None:
            came_back.append(message.message_id)
        return handler

    async def counting_publish(*args: Any) -> None:
        await publish(*args)
        published.append(args[4])  # the message id

    monkeypatch.setattr(runs.RunConsumer, "handle", counting_handle)
    monkeypatch.setattr(runs.RunConsumer, "recorded_here", counting_recorded_here)
    monkeypatch.setattr(rounds, "_publish_report", counting_publish)
    await env.start_worker(ThreeSteps)
    instance = await env.client.create(ThreeSteps)
    assert await instance.result(timeout=30) == ["a", "b", "c"]

    # Every step's completion is still a message, consumed and acked, after its round here.
    async def all_came_back() -> bool:
        return len(came_back) == 3 and len(published) == 3

    await assert_eventually(all_came_back, what="the three reports to come back")
    assert sorted(came_back) == sorted(published)
    assert handled_reports == []


async def test_a_round_given_a_report_recorded_already_replays_nothing(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As when the report's message reaches another worker than the one that recorded it."""
    worker = await env.start_worker(ThreeSteps)
    await worker._stop_consuming()
    instance = await env.client.create(ThreeSteps)
    runtime, registry, claimant = worker.runtime, worker.registry, worker.claimant
    [work] = await replay_rounds(runtime, registry, claimant, [RunRequest(instance.id)])
    assert work is not None
    [pending] = work.attempts
    report = report_of(pending, AttemptOutcome(output="a"), work.generation, claimant.worker_id)
    advanced: list[str] = []
    advance = rounds._advance

    async def counting_advance(tx: Any, instance: Any, *args: Any, **options: Any) -> Any:
        advanced.append(instance.id)
        return await advance(tx, instance, *args, **options)

    monkeypatch.setattr(rounds, "_advance", counting_advance)
    request = RunRequest(instance.id, report)
    [claimed] = await replay_rounds(runtime, registry, claimant, [request])
    assert claimed is not None  # recorded "a", claimed "b"
    assert advanced == [instance.id]
    assert await replay_rounds(runtime, registry, claimant, [request]) == [None]
    assert advanced == [instance.id]  # the copy: no replay
    # A run message beside it still gets its round.
    await replay_rounds(runtime, registry, claimant, [request, RunRequest(instance.id)])
    assert advanced == [instance.id, instance.id]


async def test_a_stopping_worker_records_its_last_report_and_claims_nothing(
    env: TestEnv,
) -> None:
    stopping = await env.start_worker(SlowThenQuick, shutdown_grace=30)
    instance = await env.client.create(SlowThenQuick)

    async def slow_started() -> bool:
        steps = {step.name: step for step in (await instance.status()).steps}
        return "slow" in steps

    await assert_eventually(slow_started, what="the slow step to start")
    staying = await env.start_worker(SlowThenQuick)
    await env.stop_worker(stopping)  # waits for the slow step and its report
    assert await instance.result(timeout=30) == ["slow", "quick"]
    database = Database(env.backend.database_url, schema=env.backend.schema)
    try:
        async with database.read() as session:
            quick = await session.get(StepRow, (instance.id, "quick"))
    finally:
        await database.close()
    assert quick is not None
    assert quick.claimed_by == staying.claimant.worker_id


async def test_a_report_back_before_its_round_here_commits_is_acked_after_it(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = asyncio.Event()
    handled: list[str | None] = []
    record_here = rounds.AttemptRunner._record_here
    recorded_here = runs.RunConsumer.recorded_here

    async def held_up(self: rounds.AttemptRunner, *args: Any) -> Any:
        await release.wait()
        return await record_here(self, *args)

    def watched(
        self: runs.RunConsumer, workflow: str, message: AbstractIncomingMessage
    ) -> Handler | None:
        handler = recorded_here(self, workflow, message)
        if handler is None:
            return None

        async def handle(message: AbstractIncomingMessage) -> FollowUp | None:
            follow_up = await handler(message)
            handled.append(message.message_id)  # settle acks it after this returns
            return follow_up

        return handle

    monkeypatch.setattr(rounds.AttemptRunner, "_record_here", held_up)
    monkeypatch.setattr(runs.RunConsumer, "recorded_here", watched)
    await env.start_worker(ThreeSteps)
    instance = await env.client.create(ThreeSteps)

    async def first_step_ran() -> bool:
        steps = {step.name: step for step in (await instance.status()).steps}
        return "a" in steps

    await assert_eventually(first_step_ran, what="the first step to run")
    await asyncio.sleep(0.5)  # its message came back meanwhile
    assert handled == []
    release.set()
    assert await instance.result(timeout=30) == ["a", "b", "c"]

    async def all_handled() -> bool:
        return len(handled) == 3

    await assert_eventually(all_handled, what="the three reports to be acked")


async def test_a_report_published_before_the_worker_stops_is_not_given_up(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker stops (its grace over) while its round for a report waits, after the
    report's message was confirmed: the message is the report, so the attempt is not released
    for another worker to run again (the step has no retries left to run it with)."""
    ran: list[str] = []

    async def once(name: str) -> str:
        ran.append(name)
        return name

    class OnceThenQuick(Workflow):
        name = "local-once-then-quick"

        async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> list[str]:
            first = await step.do("once", once, "once", retries=RetryPolicy(limit=0))
            return [first, await step.do("quick", trivial, "quick")]

    async def never(*args: Any) -> Any:
        await asyncio.Event().wait()

    monkeypatch.setattr(rounds.AttemptRunner, "_record_here", never)
    stopping = await env.start_worker(OnceThenQuick, shutdown_grace=0.5)
    instance = await env.client.create(OnceThenQuick)

    async def once_ran() -> bool:
        return ran == ["once"]

    await assert_eventually(once_ran, what="the step to run")
    await asyncio.sleep(0.5)  # its report is published and confirmed
    await env.stop_worker(stopping)
    monkeypatch.undo()
    await env.start_worker(OnceThenQuick)
    assert await instance.result(timeout=30) == ["once", "quick"]
    assert ran == ["once"]
