"""Scenario 5: every message delivered twice, both copies in flight at once on two workers:
the outcome equals a single delivery's, and no step body runs twice."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

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


@pytest.mark.timeout(300)
async def test_every_message_twice_changes_nothing(
    env: TestEnv, fleet: Fleet, tmp_path: Path
) -> None:
    seed, rng = seeded_random("duplicates")
    ledger = Ledger(tmp_path / "ledger.jsonl")
    # Every run message the workers publish goes out twice...
    fleet.extra_env["WARREN_FAILPOINTS"] = "duplicate_publish=1"
    await fleet.start(2, concurrency=20)
    expected: dict[str, object] = {}
    waiters = []
    async with open_wire(env) as wire:

        async def twice(key: str, body: dict[str, object]) -> None:
            # ...and so does every command: the same message id, both copies at once.
            message_id = uuid.uuid4().hex
            await asyncio.gather(
                wire.publish(key, body, message_id=message_id),
                wire.publish(key, body, message_id=message_id),
            )

        for index in range(scaled(50)):
            instance_id = f"chain-{index}-{uuid.uuid4().hex[:6]}"
            steps = [rng.uniform(0.01, 0.1) for _ in range(3)]
            params = {"ledger": str(ledger.path), "step_seconds": steps}
            await twice(
                "instance.create", {"workflow": Chain.name, "id": instance_id, "params": params}
            )
            expected[instance_id] = [0, 1, 2]
        for index in range(scaled(20)):
            instance_id = f"waiter-{index}-{uuid.uuid4().hex[:6]}"
            params = {"ledger": str(ledger.path), "wait_after_s": rng.uniform(0, 1)}
            await twice(
                "instance.create", {"workflow": Waiter.name, "id": instance_id, "params": params}
            )
            waiters.append(instance_id)
            expected[instance_id] = {"n": index}
        await asyncio.sleep(0.5)
        for index, instance_id in enumerate(waiters):
            event = {"instance_id": instance_id, "type": "go", "payload": {"n": index}}
            await twice("instance.event", event)
        statuses = await wait_terminal(env.client, expected, deadline_s=120)
    report = check(
        Report("5 every message twice", len(expected), 2 * len(expected), seed=seed),
        statuses,
        expected,
        ledger,
        fleet.crashed_pids,  # none: so any re-execution is unexplained
        await dead_lettered(BROKER_URL, env.namespace, [Chain.name, Waiter.name]),
    )
    stored = await events_stored(env.backend.database_url, env.backend.schema)
    for instance_id in waiters:
        if stored[instance_id] != 1:
            report.double_applied += 1
            report.problems.append(f"{instance_id} stored {stored[instance_id]} events, not 1")
    report.assert_clean()
    assert report.extra_executions == 0
