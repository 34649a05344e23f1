"""Scenario 1: workers SIGKILLed mid-step, and a worker frozen (SIGSTOP) past its heartbeat."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests.conftest import BROKER_URL, TestEnv, assert_eventually
from tests.reliability.harness import (
    SCALE,
    Fleet,
    Ledger,
    Report,
    check,
    dead_lettered,
    scaled,
    seeded_random,
    wait_terminal,
)
from tests.reliability.workflows import Chain, WhoAmI

STEPS = 3


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
@pytest.mark.timeout(600)
async def test_sigkilled_workers_lose_nothing_and_apply_nothing_twice(
    env: TestEnv, fleet: Fleet, tmp_path: Path
) -> None:
    seed, rng = seeded_random("sigkill")
    count, kill_for = scaled(200), 120 * SCALE
    ledger = Ledger(tmp_path / "ledger.jsonl")
    await fleet.start(3, concurrency=20)
    fleet.supervise(3, concurrency=20)

    async def create_over_time() -> list[str]:
        ids = []
        for _ in range(count):
            params = {
                "ledger": str(ledger.path),
                "step_seconds": [rng.uniform(0.2, 2.0) for _ in range(STEPS)],
            }
            ids.append((await env.client.create(Chain, params)).id)
            await asyncio.sleep(kill_for * 0.8 / count)
        return ids

    async def kill_now_and_then() -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + kill_for
        while loop.time() < end:
            await asyncio.sleep(rng.uniform(2.0, 5.0))
            if fleet.alive:
                await fleet.kill(rng.choice(fleet.alive))

    ids, _ = await asyncio.gather(create_over_time(), kill_now_and_then())
    statuses = await wait_terminal(env.client, ids, deadline_s=180)
    report = check(
        Report("1 SIGKILL mid-step", len(ids), fleet.kills, seed=seed),
        statuses,
        {key: list(range(STEPS)) for key in ids},
        ledger,
        fleet.crashed_pids,
        await dead_lettered(BROKER_URL, env.namespace, [Chain.name]),
    )
    report.assert_clean()
    assert fleet.kills >= scaled(20), "the kills are the point of this test"


async def test_a_frozen_workers_late_result_is_fenced_off(
    env: TestEnv, fleet: Fleet, tmp_path: Path
) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    (frozen,) = await fleet.start(1)
    instance = await env.client.create(WhoAmI, {"ledger": str(ledger.path), "seconds": 2})

    async def started_by(pid: int) -> bool:
        return any(e["p"] == "start" and e["pid"] == pid for e in ledger.entries())

    await assert_eventually(lambda: started_by(frozen.pid), what="the first attempt to start")
    frozen.process.send_signal(signal.SIGSTOP)  # past its heartbeat: presumed dead
    (rescuer,) = await fleet.start(1)
    await assert_eventually(
        lambda: started_by(rescuer.pid), timeout=40, what="the attempt to be retried"
    )
    frozen.process.send_signal(signal.SIGCONT)  # its 2 s are long over: it reports at once

    async def frozen_finished() -> bool:
        return any(e["p"] == "end" and e["pid"] == frozen.pid for e in ledger.entries())

    await assert_eventually(frozen_finished, what="the frozen worker's late result")
    assert await instance.result(timeout=30) == rescuer.pid
    (step,) = (await instance.status()).steps
    assert step.attempts == 2
