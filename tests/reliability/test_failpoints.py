"""Scenario 2: workers crash at every failpoint (before/after commit, after publishing, before
the ack, mid-step) again and again; everything completes, every change applied once."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from processor.failpoints import FAILPOINTS
from tests.conftest import BROKER_URL, TestEnv
from tests.integration.helpers import open_wire
from tests.reliability.harness import (
    Fleet,
    Ledger,
    Report,
    check,
    dead_lettered,
    events_stored,
    scaled,
    seeded_random,
    wait_terminal,
)
from tests.reliability.workflows import Chain, Waiter

CRASHES = [name for name in FAILPOINTS if name != "duplicate_publish"]


@pytest.mark.timeout(400)
async def test_crashes_at_every_failpoint_lose_nothing_and_apply_nothing_twice(
    env: TestEnv, fleet: Fleet, tmp_path: Path
) -> None:
    seed, rng = seeded_random("failpoints")
    ledger = Ledger(tmp_path / "ledger.jsonl")
    fleet.extra_env.update(
        # 1% per pass: idle sweeps pass `before_commit` several times a second, so this
        # still crashes each worker every few seconds.
        WARREN_FAILPOINTS=",".join(f"{name}=0.01" for name in CRASHES),
        WARREN_FAILPOINT_SEED=str(seed),
    )
    await fleet.start(2, concurrency=10)
    fleet.supervise(2, concurrency=10)
    expected: dict[str, object] = {}
    waiters = []
    async with open_wire(env) as wire:
        for index in range(scaled(60)):
            instance_id = f"chain-{index}-{uuid.uuid4().hex[:6]}"
            steps = [rng.uniform(0.01, 0.2) for _ in range(3)]
            params = {"ledger": str(ledger.path), "step_seconds": steps, "retry_limit": 20}
            await wire.publish(
                "instance.create", {"workflow": Chain.name, "id": instance_id, "params": params}
            )
            expected[instance_id] = [0, 1, 2]
        for index in range(scaled(20)):
            instance_id = f"waiter-{index}-{uuid.uuid4().hex[:6]}"
            params = {"ledger": str(ledger.path), "wait_after_s": rng.uniform(0, 1)}
            await wire.publish(
                "instance.create", {"workflow": Waiter.name, "id": instance_id, "params": params}
            )
            waiters.append(instance_id)
            expected[instance_id] = {"n": index}
        await asyncio.sleep(1)
        for index, instance_id in enumerate(waiters):
            event = {"instance_id": instance_id, "type": "go", "payload": {"n": index}}
            await wire.publish("instance.event", event)
        statuses = await wait_terminal(env.client, expected, deadline_s=300)
    hits = fleet.failpoint_hits()
    report = check(
        Report("2 crash at failpoints", len(expected), sum(hits.values()), seed=seed),
        statuses,
        expected,
        ledger,
        fleet.crashed_pids,
        await dead_lettered(BROKER_URL, env.namespace, [Chain.name, Waiter.name]),
    )
    stored = await events_stored(env.backend.database_url, env.backend.schema)
    for instance_id in waiters:
        if stored[instance_id] != 1:
            report.double_applied += 1
            report.problems.append(f"{instance_id} stored {stored[instance_id]} events, not 1")
    print(f"failpoint hits: {dict(hits)}; failed restarts: {fleet.spawn_failures[:5]}")
    report.assert_clean()
    assert len(hits) >= 3, f"too few failpoints fired to mean anything: {dict(hits)}"
