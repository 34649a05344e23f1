"""The worker that ran a step attempt records its report itself, in a round of its own, then
publishes the report's message marked as recorded (engine/rounds.py, AttemptRunner._report):
the message runs no round; a round given a report recorded already replays nothing; and a
worker that is stopping leaves its last reports to their messages."""

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
from tests.conftest import TestEnv, assert_eventually


async def trivial(name: str) -> str:
    return name


#: Set by a test when the slow step may end.
SLOW_MAY_END: dict[str, asyncio.Event] = {}


async def slow(name: str) -> str:
    await SLOW_MAY_END["event"].wait()
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
    acked_at_once: list[str | None] = []
    published: list[bool] = []
    handle = runs.RunConsumer.handle
    recorded_already = runs.RunConsumer.recorded_already
    publish = rounds._publish_report

    async def counting_handle(
        self: runs.RunConsumer, workflow: str, message: AbstractIncomingMessage, **options: Any
    ) -> FollowUp | None:
        if runs.carries_report(message):
            handled_reports.append(message.message_id)
        return await handle(self, workflow, message, **options)

    def counting_recorded_already(message: AbstractIncomingMessage) -> Handler | None:
        handler = recorded_already(message)
        if handler is not None:
            acked_at_once.append(message.message_id)
        return handler

    async def counting_publish(*args: Any) -> None:
        await publish(*args)
        published.append(args[-1])  # recorded

    monkeypatch.setattr(runs.RunConsumer, "handle", counting_handle)
    monkeypatch.setattr(
        runs.RunConsumer, "recorded_already", staticmethod(counting_recorded_already)
    )
    monkeypatch.setattr(rounds, "_publish_report", counting_publish)
    await env.start_worker(ThreeSteps)
    instance = await env.client.create(ThreeSteps)
    assert await instance.result(timeout=30) == ["a", "b", "c"]

    # Every step's completion is still a message, published once recorded, and acked.
    async def all_acked() -> bool:
        return len(acked_at_once) == 3

    await assert_eventually(all_acked, what="the three reports to be acked")
    assert published == [True, True, True]
    assert handled_reports == []


async def test_a_reports_message_is_published_once_its_round_here_committed(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = asyncio.Event()
    held = asyncio.Event()
    published: list[bool] = []
    record_here = rounds.AttemptRunner._record_here
    publish = rounds._publish_report

    async def held_up(self: rounds.AttemptRunner, *args: Any) -> Any:
        held.set()
        await release.wait()
        return await record_here(self, *args)

    async def counting_publish(*args: Any) -> None:
        await publish(*args)
        published.append(args[-1])

    monkeypatch.setattr(rounds.AttemptRunner, "_record_here", held_up)
    monkeypatch.setattr(rounds, "_publish_report", counting_publish)
    await env.start_worker(ThreeSteps)
    instance = await env.client.create(ThreeSteps)

    await asyncio.wait_for(held.wait(), 20)  # the first step ran, its round here waits
    await asyncio.sleep(0.5)
    assert published == []
    release.set()
    assert await instance.result(timeout=30) == ["a", "b", "c"]

    async def all_published() -> bool:
        return len(published) == 3

    await assert_eventually(all_published, what="the three reports to be published")
    assert published == [True, True, True]


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
    SLOW_MAY_END["event"] = asyncio.Event()
    stopping = await env.start_worker(SlowThenQuick, shutdown_grace=30)
    instance = await env.client.create(SlowThenQuick)

    async def slow_started() -> bool:
        steps = {step.name: step for step in (await instance.status()).steps}
        return "slow" in steps

    await assert_eventually(slow_started, what="the slow step to start")
    staying = await env.start_worker(SlowThenQuick)
    stop = asyncio.create_task(env.stop_worker(stopping))  # waits for the slow step

    async def stopped_consuming() -> bool:
        return not stopping.is_consuming

    await assert_eventually(stopped_consuming, what="the worker to stop consuming")
    SLOW_MAY_END["event"].set()
    await stop
    assert await instance.result(timeout=30) == ["slow", "quick"]
    quick = await env.step_row(instance.id, "quick")
    assert quick is not None
    assert quick.claimed_by == staying.claimant.worker_id
