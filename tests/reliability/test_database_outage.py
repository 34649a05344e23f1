"""Scenario 4: the database restarted, then down for 60 s, under 500 running instances. The
test has a PostgreSQL cluster of its own (tests/services.py), so stopping it
disturbs no other test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import TestEnv
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
from tests.reliability.workflows import Chain
from tests.services import Postgres, require_private_services


@pytest.fixture
async def postgres() -> AsyncIterator[Postgres]:
    require_private_services()
    async with Postgres.running() as postgres:
        yield postgres


@pytest.fixture
def postgres_url(postgres: Postgres) -> str:
    """The workers and the client of this test use the private cluster."""
    return postgres.url


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
@pytest.mark.timeout(600)
async def test_a_database_restart_and_a_minute_down_lose_nothing(
    env: TestEnv, fleet: Fleet, postgres: Postgres, tmp_path: Path
) -> None:
    seed, rng = seeded_random("database outage")
    ledger = Ledger(tmp_path / "ledger.jsonl")
    workers = await fleet.start(2, concurrency=20)
    count = scaled(500)
    items = [
        {
            "params": {
                "ledger": str(ledger.path),
                "step_seconds": [rng.uniform(0.5, 1.5) for _ in range(3)],
            }
        }
        for _ in range(count)
    ]
    ids = []
    for first in range(0, count, 100):
        ids += [i.id for i in await env.client.create_batch(Chain, items[first : first + 100])]
    await asyncio.sleep(3)
    await postgres.stop()  # a restart: down and straight back up
    await postgres.start()
    await asyncio.sleep(5)
    await postgres.stop()
    await asyncio.sleep(max(10.0, 60 * SCALE))
    await postgres.start()
    back = time.time()

    def progress_since_return() -> float | None:
        after = [e["t"] for e in ledger.entries() if e["t"] > back]
        return min(after) - back if after else None

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while (recovery := progress_since_return()) is None and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    statuses = await wait_terminal(env.client, ids, deadline_s=240)
    report = check(
        Report("4 database restart + 60 s down", len(ids), 2, seed=seed),
        statuses,
        {i: [0, 1, 2] for i in ids},
        ledger,
        fleet.crashed_pids,
        await dead_lettered(env.broker_url, env.namespace, [Chain.name]),
    )
    if recovery is None or recovery > 10:
        report.problems.append(f"no step ran within 10 s of the database's return: {recovery}")
    if any(w.process.returncode is not None for w in workers):
        report.problems.append("a worker process died")
    print(f"steps resumed {recovery:.2f} s after the database returned")
    report.assert_clean()
