"""Scenario 16: a flaky network. Two workers reach RabbitMQ and PostgreSQL through TCP proxies
(tests/reliability/proxy.py) that cut, reset and stall their connections every few seconds
while 200 instances of 3 steps run. Nothing is lost or applied twice, every re-execution is
explained, and no worker process dies or needs a restart."""

from __future__ import annotations

import asyncio
from collections import Counter
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
from tests.reliability.proxy import Proxy
from tests.reliability.workflows import Chain

STEPS = 3
#: Under WORKER_STALE (10 s): a stall this long keeps every heartbeat fresh enough that no
#: live worker's attempts are taken for lost.
LONGEST_STALL_S = 5.0


@pytest.fixture
async def proxies(env: TestEnv) -> AsyncIterator[dict[str, Proxy]]:
    broker, database = Proxy(env.broker_url, 5672), Proxy(env.backend.database_url, 5432)
    await broker.start()
    await database.start()
    try:
        yield {"broker": broker, "database": database}
    finally:
        await broker.close()
        await database.close()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
@pytest.mark.timeout(600)
async def test_connections_cut_reset_and_stalled_lose_nothing(
    env: TestEnv, fleet: Fleet, proxies: dict[str, Proxy], tmp_path: Path
) -> None:
    seed, rng = seeded_random("network faults")
    ledger = Ledger(tmp_path / "ledger.jsonl")
    # Only the workers go through the proxies; the test's client reads the truth directly.
    fleet.settings.update(broker_url=proxies["broker"].url, database_url=proxies["database"].url)
    workers = await fleet.start(2, concurrency=20)
    count, faults_for = scaled(200), 60 * max(SCALE, 0.3)
    faults: Counter[str] = Counter()

    async def create_over_time() -> list[str]:
        ids = []
        for _ in range(count):
            params = {
                "ledger": str(ledger.path),
                "step_seconds": [rng.uniform(0.1, 1.0) for _ in range(STEPS)],
            }
            ids.append((await env.client.create(Chain, params)).id)
            await asyncio.sleep(faults_for * 0.8 / count)
        return ids

    async def break_the_network() -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + faults_for
        while loop.time() < end:
            await asyncio.sleep(rng.uniform(2.0, 5.0))
            name = rng.choice(sorted(proxies))
            proxy, fault = proxies[name], rng.choice(["cut", "reset", "stall"])
            if proxy.connections == 0:  # the workers are between connections: no fault
                continue
            if fault == "cut":
                proxy.cut()
            elif fault == "reset":
                proxy.reset()
            else:
                await proxy.stall(rng.uniform(1.0, LONGEST_STALL_S))
            faults[f"{name} {fault}"] += 1

    ids, _ = await asyncio.gather(create_over_time(), break_the_network())
    statuses = await wait_terminal(env.client, ids, deadline_s=240)
    report = check(
        Report("16 connections cut/reset/stalled", len(ids), sum(faults.values()), seed=seed),
        statuses,
        {key: list(range(STEPS)) for key in ids},
        ledger,
        fleet.crashed_pids,
        await dead_lettered(env.broker_url, env.namespace, [Chain.name]),
    )
    for worker in workers:
        if worker.process.returncode is not None:
            report.problems.append(
                f"worker {worker.pid} died ({worker.process.returncode}): {fleet.stderr(worker)}"
            )
    print(f"faults: {dict(faults)}")
    report.assert_clean()
    assert sum(faults.values()) >= scaled(10), f"too few faults to mean anything: {faults}"
