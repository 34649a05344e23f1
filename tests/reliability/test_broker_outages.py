"""Scenarios 3 and 15: the broker restarted (gracefully, then killed) under 1,000 sleeping
instances; a step longer than the broker's consumer timeout. Each test has a RabbitMQ node of
its own (tests/services.py), so restarting and reconfiguring it disturbs no other
test."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from processor.worker import SWEEP_GRACE, SWEEP_INTERVAL_S
from tests.conftest import TestEnv
from tests.reliability.harness import (
    ANY_OUTPUT,
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
from tests.reliability.workflows import Sleeper, WhoAmI
from tests.services import Broker, require_private_services


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    require_private_services()
    async with Broker.running() as broker:
        yield broker


@pytest.fixture
def broker_url(broker: Broker) -> str:
    """The workers and the client of these tests use the private node."""
    return broker.url


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
@pytest.mark.timeout(600)
async def test_broker_restarts_wake_every_sleeper_once(
    env: TestEnv, fleet: Fleet, broker: Broker, tmp_path: Path
) -> None:
    seed, rng = seeded_random("broker restart")
    ledger = Ledger(tmp_path / "ledger.jsonl")
    workers = await fleet.start(2, concurrency=50)
    start = datetime.now(UTC)
    due: dict[str, datetime] = {}
    count = scaled(1000)
    for first in range(0, count, 100):
        items = []
        for _ in range(first, min(count, first + 100)):
            when = start + timedelta(seconds=rng.uniform(30, 90) * max(SCALE, 0.3))
            items.append({"params": {"ledger": str(ledger.path), "due": when.isoformat()}})
        for instance, item in zip(
            await env.client.create_batch(Sleeper, items), items, strict=True
        ):
            due[instance.id] = datetime.fromisoformat(item["params"]["due"])
    outages = []

    async def outage(stop: object, start_again: object, seconds: float) -> None:
        began = time.monotonic()
        await stop()  # type: ignore[operator]
        await asyncio.sleep(seconds)
        await start_again()  # type: ignore[operator]
        outages.append(time.monotonic() - began)

    await asyncio.sleep(10)
    await outage(broker.stop_app, broker.start_app, 5)
    await asyncio.sleep(20)
    await outage(broker.kill, broker.start_server, 5)

    statuses = await wait_terminal(env.client, due, deadline_s=240)
    report = check(
        Report("3 broker restart x2, sleepers", len(due), len(outages), seed=seed),
        statuses,
        dict.fromkeys(due, ANY_OUTPUT),  # the outputs are wake-up times: checked below
        ledger,
        fleet.crashed_pids,
        await dead_lettered(env.broker_url, env.namespace, [Sleeper.name]),
    )
    lateness = []
    for instance_id, status in statuses.items():
        if status is not None and status.output is not None:
            lateness.append(status.output - due[instance_id].timestamp())
    bound = max(outages) + SWEEP_INTERVAL_S + SWEEP_GRACE.total_seconds() + 5
    late = [x for x in lateness if x > bound]
    if late:
        report.problems.append(
            f"{len(late)} woke more than {bound:.1f} s late: max {max(late):.1f}"
        )
    if any(x < -0.05 for x in lateness):
        report.problems.append(f"woke early: min lateness {min(lateness):.3f} s")
    if any(w.process.returncode is not None for w in workers):
        report.problems.append("a worker process died")
    print(
        f"outages {[round(o, 1) for o in outages]} s; lateness p50 "
        f"{statistics.median(lateness):.3f} s, max {max(lateness):.3f} s (bound {bound:.1f} s)"
    )
    report.assert_clean()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.timeout(300)
async def test_a_step_longer_than_the_consumer_timeout_runs_once(
    env: TestEnv, fleet: Fleet, broker: Broker, tmp_path: Path
) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    await broker.eval("application:set_env(rabbit, consumer_timeout, 20000).")
    (worker,) = await fleet.start(1)  # its channel is opened with the 20 s timeout
    # RabbitMQ 3.10 checks the timeout once a minute: 75 s is past it for sure.
    instance = await env.client.create(WhoAmI, {"ledger": str(ledger.path), "seconds": 75})
    assert await instance.result(timeout=150) == worker.pid
    starts = [e for e in ledger.entries() if e["p"] == "start"]
    assert len(starts) == 1
    (step,) = (await instance.status()).steps
    assert step.attempts == 1
    assert worker.process.returncode is None
