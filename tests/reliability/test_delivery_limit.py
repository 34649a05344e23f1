"""Scenario 14: crashes never turn into lost work through the broker's delivery limit. One
worker is killed again and again, more times than the limit, each time with deliveries in
flight; nothing reaches a dead-letter queue, and every instance completes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from processor.broker.topology import DELIVERY_LIMIT
from tests.conftest import BROKER_URL, TestEnv, require_tool
from tests.reliability.harness import (
    Fleet,
    Ledger,
    Report,
    check,
    dead_lettered,
    seeded_random,
    wait_terminal,
)
from tests.reliability.workflows import Chain
from tests.services import run


async def unacked(queue: str) -> int:
    listing = await run("rabbitmqctl", "-q", "list_queues", "name", "messages_unacknowledged")
    for line in listing.splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count)
    return 0


async def deliveries_held(queue: str, at_least: int, within_s: float) -> int:
    """The deliveries the worker holds once it holds `at_least` (a new worker takes a moment to
    fill its prefetch), or what it holds after `within_s`."""
    deadline = asyncio.get_running_loop().time() + within_s
    while (held := await unacked(queue)) < at_least:
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.2)
    return held


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
@pytest.mark.timeout(600)
async def test_more_kills_than_the_delivery_limit_dead_letter_nothing(
    env: TestEnv, fleet: Fleet, tmp_path: Path
) -> None:
    require_tool("rabbitmqctl")  # it counts the deliveries in flight
    seed, rng = seeded_random("delivery limit")
    ledger = Ledger(tmp_path / "ledger.jsonl")
    (worker,) = await fleet.start(1, concurrency=10)
    kills = DELIVERY_LIMIT + 5
    # An attempt lost with its worker counts toward the step's retries, and one instance may
    # be in flight at every kill: a retry limit above the kills leaves only the delivery limit
    # to lose work through, which is what this test is about.
    params = {"ledger": str(ledger.path), "retry_limit": kills}
    # Steps of 2 to 4 s keep the run queue from draining during the kills (one worker of 10
    # slots does about 3 a second of them, 500 would take it over two minutes): an empty queue
    # leaves nothing in flight to kill, and the test would prove nothing.
    items = [{"params": {**params, "step_seconds": [rng.uniform(2, 4)]}} for _ in range(500)]
    ids = []
    for first in range(0, len(items), 100):
        ids += [i.id for i in await env.client.create_batch(Chain, items[first : first + 100])]
    queue = f"{env.namespace}.run.{Chain.name}"
    in_flight = []
    for _ in range(kills):
        await asyncio.sleep(rng.uniform(0.5, 1.5))
        in_flight.append(await deliveries_held(queue, at_least=5, within_s=20))
        await fleet.kill(worker)
        (worker,) = await fleet.start(1, concurrency=10)
    await fleet.start(2, concurrency=50)  # the rest of the work, quickly
    statuses = await wait_terminal(env.client, ids, deadline_s=240)
    report = check(
        Report("14 kills > delivery limit", len(ids), fleet.kills, seed=seed),
        statuses,
        {i: [0] for i in ids},
        ledger,
        fleet.crashed_pids,
        await dead_lettered(BROKER_URL, env.namespace, [Chain.name]),
    )
    print(f"unacked deliveries at each kill: {in_flight}")
    report.assert_clean()
    assert sum(1 for n in in_flight if n >= 5) >= DELIVERY_LIMIT, in_flight
