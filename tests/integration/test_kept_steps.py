"""A worker keeps an instance's steps between its rounds (processor/engine/kept_steps.py): the
rounds its reports bring replay on them without loading them again, and a change made
elsewhere in between (a restart, here) makes the next round load them afresh."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from processor import Workflow, WorkflowEvent, WorkflowStep
from processor.engine import rounds
from processor.store.driver import DriverSession
from tests.conftest import TestEnv, assert_eventually

RUNS: Counter[tuple[str, str]] = Counter()
GATES: dict[str, asyncio.Event] = {}


async def counted(instance_id: str, name: str) -> str:
    RUNS[instance_id, name] += 1
    return name


async def gated(instance_id: str, name: str) -> str:
    RUNS[instance_id, name] += 1
    await GATES[instance_id].wait()
    return name


class FourSteps(Workflow[dict[str, Any]]):
    name = "kept-four-steps"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> list[str]:
        return [await step.do(f"s{i}", counted, event.instance_id, f"s{i}") for i in range(4)]


class ThenGated(Workflow[dict[str, Any]]):
    name = "kept-then-gated"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> list[str]:
        first = await step.do("first", counted, event.instance_id, "first")
        return [first, await step.do("gated", gated, event.instance_id, "gated")]


def count_loads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    loads: Counter[str] = Counter()
    load = rounds.driver.load_steps_of

    async def counting(session: DriverSession, instance_ids: Sequence[str]) -> Any:
        loads.update(instance_ids)
        return await load(session, instance_ids)

    monkeypatch.setattr(rounds.driver, "load_steps_of", counting)
    return loads


async def test_the_rounds_of_reports_replay_on_the_kept_steps(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = count_loads(monkeypatch)
    await env.start_worker(FourSteps)
    instance = await env.client.create(FourSteps)
    assert await instance.result(timeout=20) == ["s0", "s1", "s2", "s3"]
    assert loads[instance.id] == 1  # the first round's, which found nothing kept
    assert [RUNS[instance.id, f"s{i}"] for i in range(4)] == [1, 1, 1, 1]


async def test_a_restart_in_between_makes_the_next_round_load_the_steps(
    env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = count_loads(monkeypatch)
    worker = await env.start_worker(ThenGated)
    instance = await env.client.create(ThenGated)
    GATES[instance.id] = asyncio.Event()

    async def gated_runs() -> bool:
        return RUNS[instance.id, "gated"] == 1

    await assert_eventually(gated_runs, what="the gated step to start")
    await worker._stop_consuming()  # the next round is the test's own
    loaded_before = loads[instance.id]
    await instance.restart()  # erases the steps: what the worker kept is stale
    (work,) = await rounds.replay_rounds(
        worker.runtime, worker.registry, worker.claimant, [rounds.RunRequest(instance.id)]
    )
    assert loads[instance.id] == loaded_before + 1
    assert work is not None  # the first step again, for the new generation
    await rounds.run_claimed(worker.runtime, work, worker.claimant, worker._executor)

    await worker._start_consuming()
    GATES[instance.id].set()
    assert await instance.result(timeout=20) == ["first", "gated"]
    assert RUNS[instance.id, "first"] == 2
