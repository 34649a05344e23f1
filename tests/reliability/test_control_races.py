"""Scenario 12: pause, resume, terminate and restart racing running steps on four workers. No
step starts after a terminate commits, none while paused, and no status changes illegally."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path

import pytest

from processor import InstanceStateError
from schemas import ControlAction, InstanceStatusName
from tests.conftest import BROKER_URL, TestEnv
from tests.reliability.harness import (
    REPORTS,
    Fleet,
    Ledger,
    Report,
    dead_lettered,
    scaled,
    seeded_random,
    wait_terminal,
)
from tests.reliability.workflows import Chain

STEPS = 5
#: A step whose claim committed just before a pause or terminate starts its body a moment
#: later; a start later than this after the commit is a violation.
CLAIM_TO_BODY = 0.25
TERMINAL = {"complete", "errored", "terminated"}


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
@pytest.mark.timeout(300)
async def test_control_actions_racing_steps_keep_their_promises(
    env: TestEnv, fleet: Fleet, tmp_path: Path
) -> None:
    seed, rng = seeded_random("control races")
    ledger = Ledger(tmp_path / "ledger.jsonl")
    await fleet.start(4, concurrency=20)
    count = scaled(40)
    items = [
        {
            "params": {
                "ledger": str(ledger.path),
                "step_seconds": [rng.uniform(0.1, 0.5) for _ in range(STEPS)],
            }
        }
        for _ in range(count)
    ]
    ids = [i.id for i in await env.client.create_batch(Chain, items)]
    #: Per instance: (pause committed, resume sent) times.
    paused: dict[str, list[tuple[float, float]]] = defaultdict(list)
    terminated: dict[str, float] = {}
    actions = 0
    seen: dict[str, list[str]] = defaultdict(list)
    watching = True

    async def control(instance_id: str, action: ControlAction) -> float | None:
        """Apply an action; the time its commit was certainly done, or None if refused."""
        nonlocal actions
        try:
            await env.client.control(instance_id, action)
        except InstanceStateError:
            return None
        actions += 1
        return time.time()

    async def steer(instance_id: str) -> None:
        for _ in range(rng.randint(1, 4)):
            await asyncio.sleep(rng.uniform(0, 1.5))
            choice = rng.random()
            if choice < 0.5:
                if (pause := await control(instance_id, ControlAction.PAUSE)) is not None:
                    await asyncio.sleep(rng.uniform(0.3, 1.5))
                    resume_sent = time.time()
                    if await control(instance_id, ControlAction.RESUME) is not None:
                        paused[instance_id].append((pause, resume_sent))
            elif choice < 0.6:
                if (done := await control(instance_id, ControlAction.TERMINATE)) is not None:
                    terminated[instance_id] = done
                    return
            elif choice < 0.8:
                await control(instance_id, ControlAction.RESTART)

    async def watch() -> None:
        while watching:
            for status in await env.client.list(workflow=Chain.name, limit=1000):
                history = seen[status.id]
                if not history or history[-1] != status.status.value:
                    history.append(status.status.value)
            await asyncio.sleep(0.1)

    watcher = asyncio.create_task(watch())
    await asyncio.gather(*(steer(instance_id) for instance_id in ids))
    statuses = await wait_terminal(env.client, ids, deadline_s=120)
    watching = False
    await watcher

    report = Report("12 control races, 4 workers", count, actions, seed=seed)
    starts: dict[str, list[float]] = defaultdict(list)
    for entry in ledger.entries():
        if entry["p"] == "start":
            starts[entry["i"]].append(entry["t"])
    for instance_id in ids:
        status = statuses[instance_id]
        assert status is not None
        if instance_id in terminated:
            if status.status != InstanceStatusName.TERMINATED:
                report.problems.append(f"{instance_id} terminated but is {status.status.value}")
            late = [t for t in starts[instance_id] if t > terminated[instance_id] + CLAIM_TO_BODY]
            if late:
                report.problems.append(f"{instance_id}: a step started after its terminate")
        elif status.status != InstanceStatusName.COMPLETE or status.output != list(range(STEPS)):
            report.lost += 1
            report.problems.append(f"{instance_id} is {status.status.value}: {status.output}")
        for pause, resume in paused[instance_id]:
            # A pause waits for the running step; none may start until the resume.
            during = [t for t in starts[instance_id] if pause + CLAIM_TO_BODY < t < resume]
            if during:
                report.problems.append(f"{instance_id}: a step started while paused")
        history = seen[instance_id]
        if "terminated" in history and history[-1] != "terminated":
            report.problems.append(f"{instance_id} left terminated: {history}")
    report.dead_lettered = await dead_lettered(BROKER_URL, env.namespace, [Chain.name])
    if report.dead_lettered:
        report.problems.append(f"{report.dead_lettered} dead-lettered")
    REPORTS.append(report)
    print(
        f"{actions} actions, {len(terminated)} terminated, {sum(map(len, paused.values()))} pauses"
    )
    report.assert_clean()
    assert terminated, "the random plan must include terminates"
    assert paused, "the random plan must include pauses"
