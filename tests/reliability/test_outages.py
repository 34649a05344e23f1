"""Scenarios 3, 4 and 15: the broker restarted (gracefully, then killed) under 1,000 sleeping
instances; the database restarted and then down for 60 s under 500 running ones; a step
longer than the broker's consumer timeout. The services are always left running."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from processor.worker import SWEEP_GRACE, SWEEP_INTERVAL_S
from tests.conftest import BROKER_URL, TestEnv
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
from tests.reliability.services import Broker, Postgres, can_restart_services, run
from tests.reliability.workflows import Chain, Sleeper, WhoAmI


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    if not can_restart_services():
        pytest.skip("needs root and a local RabbitMQ and PostgreSQL to restart")
    service = Broker()
    try:
        yield service
    finally:
        await service.ensure_running()


@pytest.fixture
async def postgres() -> AsyncIterator[Postgres]:
    if not can_restart_services():
        pytest.skip("needs root and a local RabbitMQ and PostgreSQL to restart")
    service = Postgres()
    try:
        yield service
    finally:
        await service.ensure_running()


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
        await dead_lettered(BROKER_URL, env.namespace, [Sleeper.name]),
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
        await dead_lettered(BROKER_URL, env.namespace, [Chain.name]),
    )
    if recovery is None or recovery > 10:
        report.problems.append(f"no step ran within 10 s of the database's return: {recovery}")
    if any(w.process.returncode is not None for w in workers):
        report.problems.append("a worker process died")
    print(f"steps resumed {recovery:.2f} s after the database returned")
    report.assert_clean()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.timeout(300)
async def test_a_step_longer_than_the_consumer_timeout_runs_once(
    env: TestEnv, fleet: Fleet, broker: Broker, tmp_path: Path
) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    setting = "application:get_env(rabbit, consumer_timeout)."
    original = (await run("rabbitmqctl", "eval", setting)).strip()
    await run("rabbitmqctl", "eval", "application:set_env(rabbit, consumer_timeout, 20000).")
    try:
        (worker,) = await fleet.start(1)  # its channel is opened with the 20 s timeout
        # RabbitMQ 3.10 checks the timeout once a minute: 75 s is past it for sure.
        instance = await env.client.create(WhoAmI, {"ledger": str(ledger.path), "seconds": 75})
        assert await instance.result(timeout=150) == worker.pid
    finally:
        if original.startswith("{ok,"):
            value = original.removeprefix("{ok,").removesuffix("}")
            await run(
                "rabbitmqctl", "eval", f"application:set_env(rabbit, consumer_timeout, {value})."
            )
        else:
            await run("rabbitmqctl", "eval", "application:unset_env(rabbit, consumer_timeout).")
    starts = [e for e in ledger.entries() if e["p"] == "start"]
    assert len(starts) == 1
    (step,) = (await instance.status()).steps
    assert step.attempts == 1
    assert worker.process.returncode is None
