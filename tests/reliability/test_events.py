"""Scenarios 10 and 11: events sent before and after their wait, in random interleavings, are
all delivered once; events for unknown or finished instances are dead-lettered with a reason,
nothing is stored, and the queue moves on."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from processor import InstanceStateError
from tests.conftest import BROKER_URL, TestEnv, assert_eventually
from tests.integration.helpers import error_reason, open_wire
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


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
@pytest.mark.timeout(300)
async def test_events_before_and_after_the_wait_are_each_delivered_once(
    env: TestEnv, fleet: Fleet, tmp_path: Path
) -> None:
    seed, rng = seeded_random("event interleavings")
    ledger = Ledger(tmp_path / "ledger.jsonl")
    await fleet.start(2, concurrency=50)
    count = scaled(500)
    # Each instance starts waiting 0-5 s after its create, and its event is sent 0-5 s after
    # the create: before the wait for about half of them, after it for the rest.
    waits = [rng.uniform(0, 5) for _ in range(count)]
    sends = [rng.uniform(0, 5) for _ in range(count)]
    ids: list[str] = []
    for first in range(0, count, 100):
        items = [
            {"params": {"ledger": str(ledger.path), "wait_after_s": wait}}
            for wait in waits[first : first + 100]
        ]
        ids += [i.id for i in await env.client.create_batch(Waiter, items)]

    async def send(index: int) -> None:
        await asyncio.sleep(sends[index])
        await env.client.send_event(ids[index], "go", {"n": index})

    await asyncio.gather(*(send(index) for index in range(count)))
    statuses = await wait_terminal(env.client, ids, deadline_s=180)
    report = check(
        Report("10 events before/after the wait", count, 0, seed=seed),
        statuses,
        {instance_id: {"n": index} for index, instance_id in enumerate(ids)},
        ledger,
        fleet.crashed_pids,
        await dead_lettered(BROKER_URL, env.namespace, [Waiter.name]),
    )
    stored = await events_stored(env.backend.database_url, env.backend.schema)
    duplicated = [i for i in ids if stored[i] != 1]
    if duplicated:
        report.double_applied += len(duplicated)
        report.problems.append(f"{len(duplicated)} instances stored other than 1 event")
    early = sum(1 for wait, sent in zip(waits, sends, strict=True) if sent < wait)
    print(f"{early} of {count} events were sent before their instance waited")
    report.assert_clean()


async def test_events_for_unknown_and_finished_instances_are_dead_lettered(
    env: TestEnv, fleet: Fleet, tmp_path: Path
) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    await fleet.start(1)
    finished = await env.client.create(Chain, {"ledger": str(ledger.path), "step_seconds": [0]})
    assert await finished.result(timeout=30) == [0]
    with pytest.raises(InstanceStateError):
        await env.client.send_event(finished.id, "go", {})
    waiter = await env.client.create(Waiter, {"ledger": str(ledger.path), "wait_after_s": 0})
    unknown = f"never-{uuid.uuid4().hex[:8]}"
    async with open_wire(env) as wire:
        for instance_id in (unknown, finished.id):
            event = {"instance_id": instance_id, "type": "go", "payload": {}}
            await wire.publish("instance.event", event)
        # The queue moves on: an event for a live instance behind them is delivered.
        await wire.publish("instance.event", {"instance_id": waiter.id, "type": "go", "payload": 1})
        assert await waiter.result(timeout=30) == 1
        dead_queue = f"{wire.topology.ingress_queue}.dead"

        async def both_dead() -> bool:
            return await wire.message_count(dead_queue) >= 2

        # An unknown instance's event is retried for ~8 s (its create may be on the way).
        await assert_eventually(both_dead, timeout=30, what="both events to be dead-lettered")
        reasons = sorted(error_reason(message) for message in await wire.take(dead_queue))
    assert len(reasons) == 2
    assert "complete" in reasons[0] or "complete" in reasons[1]
    assert any(unknown in reason for reason in reasons)
    stored = await events_stored(env.backend.database_url, env.backend.schema)
    assert stored[unknown] == 0
    assert stored[finished.id] == 0
    assert stored[waiter.id] == 1
