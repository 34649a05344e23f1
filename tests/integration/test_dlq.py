"""Dead letters are inspectable and re-drivable (issue 3, scenario 14): `warren dlq list` shows
each with its reason without losing or reordering them, and `warren dlq redrive` republishes
them as fresh messages once the cause is fixed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection

from processor import Workflow, WorkflowEvent, WorkflowStep
from processor.broker.admin import DeadLetters
from processor.broker.topology import DELIVERY_LIMIT, Topology
from schemas import RunInstance
from tests.conftest import BROKER_URL, TestEnv, assert_eventually
from tests.integration.helpers import Wire, created, open_wire

pytestmark = pytest.mark.integration


async def echo(payload: Any) -> Any:
    return payload


class Echo(Workflow[dict[str, Any]]):
    name = "dlq-echo"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        return await step.do("echo", echo, event.payload)


class Late(Workflow[dict[str, Any]]):
    """Registered only once the test "fixes" the dead letters' cause."""

    name = "dlq-late"

    async def run(self, event: WorkflowEvent[dict[str, Any]], step: WorkflowStep) -> Any:
        return await step.do("echo", echo, event.payload)


@pytest.fixture
async def wire(env: TestEnv) -> AsyncIterator[Wire]:
    async with open_wire(env) as opened:
        yield opened


@pytest.fixture
async def dead_letters(env: TestEnv) -> AsyncIterator[DeadLetters]:
    connection: AbstractConnection = await aio_pika.connect(BROKER_URL)
    async with connection:
        yield DeadLetters(connection, Topology(env.namespace))


async def until_count(wire: Wire, queue: str, count: int) -> None:
    async def reached() -> bool:
        return await wire.message_count(queue) == count

    await assert_eventually(reached, what=f"{count} messages in {queue}")


async def exhaust_deliveries(wire: Wire, queue: str) -> None:
    """Reject the message in `queue` back to it until the broker dead-letters it for passing
    the delivery limit, as it would a message whose consumer crashes on every delivery."""
    declared = await wire.channel.declare_queue(queue, passive=True)
    dead = f"{queue}.dead"
    before = await wire.message_count(dead)
    for _ in range(DELIVERY_LIMIT * 20):
        if await wire.message_count(dead) > before:
            return
        message = await declared.get(no_ack=False, fail=False)
        if message is None:  # a rejected message shows again a moment later
            await asyncio.sleep(0.02)
            continue
        await message.nack(requeue=True)
    pytest.fail(f"the broker never dead-lettered the message in {queue}")


async def test_dead_letters_are_listed_in_order_and_redriven_once_their_cause_is_fixed(
    env: TestEnv, wire: Wire, dead_letters: DeadLetters
) -> None:
    await env.start_worker(Echo, concurrency=1)  # dead-letters in publishing order
    await wire.publish("instance.create", {"workflow": "dlq-late", "id": "late-1"}, message_id="a")
    await wire.publish("instance.create", b'{"workflow": ', message_id="b")
    await wire.publish("instance.create", {"workflow": "dlq-late", "id": "late-2"}, message_id="c")
    dead_queue = f"{wire.topology.ingress_queue}.dead"
    await until_count(wire, dead_queue, 3)
    queues = dead_letters.queues(["dlq-echo"])
    assert queues == [
        dead_queue,
        f"{wire.topology.run_queue('dlq-echo')}.dead",
        f"{wire.topology.wake_queue('dlq-echo')}.dead",
    ]

    listed = await dead_letters.list(queues)

    assert [letter.id for letter in listed] == ["a", "b", "c"]
    assert "'dlq-late'" in listed[0].reason
    assert "not registered" in listed[0].reason
    assert "not JSON" in listed[1].reason
    assert listed[1].body == b'{"workflow": '
    for letter in listed:
        assert letter.queue == dead_queue
        assert letter.exchange == wire.topology.ingress_exchange
        assert letter.routing_key == "instance.create"
        assert letter.dead_at is not None
        assert abs(datetime.now(UTC) - letter.dead_at) < timedelta(minutes=1)
    # Listing changed nothing: the same letters, in the same order, and a limit cuts the list.
    assert [letter.id for letter in await dead_letters.list(queues)] == ["a", "b", "c"]
    assert [letter.id for letter in await dead_letters.list(queues, limit=2)] == ["a", "b"]
    assert await wire.message_count(dead_queue) == 3

    await env.start_worker(Late)  # the cause is fixed: the workflow is now registered
    report = await dead_letters.redrive(queues, ["a", "c", "no-such-id"])

    assert [letter.id for letter in report.redriven] == ["a", "c"]
    assert report.missing == ["no-such-id"]
    for instance_id in ("late-1", "late-2"):
        assert await (await created(env.client, instance_id)).result(timeout=20) == {}
    assert [letter.id for letter in await dead_letters.list(queues)] == ["b"]


async def test_messages_the_broker_dead_lettered_are_redriven_without_its_headers(
    env: TestEnv, wire: Wire, dead_letters: DeadLetters
) -> None:
    # A worker registers the workflow and declares the queues; none consumes them afterwards.
    await env.stop_worker(await env.start_worker(Echo))
    ingress, run = wire.topology.ingress_queue, wire.topology.run_queue("dlq-echo")
    wake = wire.topology.wake_queue("dlq-echo")
    await wire.publish("instance.create", {"workflow": "dlq-echo", "id": "crash-1"}, message_id="i")
    await env.client.create(Echo, {"n": 2}, id="crash-2")
    runtime = env.client.runtime
    wake_up = RunInstance(instance_id="crash-2", wake_at=runtime.clock.now())
    await runtime.publisher.publish_run(
        "dlq-echo", wake_up.model_dump_json().encode(), "w", wake_up.wake_at
    )
    for queue in (ingress, run, wake):
        await exhaust_deliveries(wire, queue)

    queues = dead_letters.queues(["dlq-echo"])
    listed = {letter.queue: letter for letter in await dead_letters.list(queues)}
    assert sorted(listed) == [f"{ingress}.dead", f"{run}.dead", f"{wake}.dead"]
    for queue in (ingress, run, wake):
        letter = listed[f"{queue}.dead"]
        assert letter.reason == f"dead-lettered by the broker: delivery_limit in {queue}"
        assert letter.dead_at is not None
    # A dead wake-up goes back as a run message (a round re-delays one still early).
    for queue in (run, wake):
        assert listed[f"{queue}.dead"].exchange == wire.topology.engine_exchange
        assert listed[f"{queue}.dead"].routing_key == "run.dlq-echo"

    report = await dead_letters.redrive(queues)

    assert len(report.redriven) == 3
    for queue in (ingress, run):
        assert await wire.message_count(f"{queue}.dead") == 0
        fresh = await (await wire.channel.declare_queue(queue, passive=True)).get(no_ack=False)
        dead = listed[f"{queue}.dead"]
        assert (fresh.body, fresh.message_id) == (dead.body, dead.id)
        assert fresh.routing_key == dead.routing_key
        headers = fresh.headers or {}
        assert not [key for key in headers if "death" in key], headers
        assert headers.get("x-delivery-count", 0) == 0
        await fresh.nack(requeue=True)
    await env.start_worker(Echo)
    assert await (await created(env.client, "crash-1")).result(timeout=20) == {}
    assert await (await env.client.get("crash-2")).result(timeout=20) == {"n": 2}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_dlq_list_and_redrive_from_the_command_line(
    env: TestEnv, wire: Wire, tmp_path: Path
) -> None:
    await env.start_worker(Echo)
    await wire.publish(
        "instance.create", {"workflow": "dlq-late", "id": "late-cli"}, message_id="m-cli"
    )
    dead_queue = f"{wire.topology.ingress_queue}.dead"
    await until_count(wire, dead_queue, 1)

    def warren(*args: str) -> subprocess.CompletedProcess[str]:
        environment = {
            **os.environ,
            "WARREN_BROKER_URL": BROKER_URL,
            "WARREN_DATABASE_URL": env.backend.database_url,
            "WARREN_NAMESPACE": env.namespace,
        }
        return subprocess.run(
            [sys.executable, "-m", "processor", *args],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    listed = await asyncio.to_thread(warren, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    (line,) = listed.stdout.splitlines()
    queue, message_id, when, reason, body = line.split("\t")
    assert (queue, message_id) == (dead_queue, "m-cli")
    assert datetime.fromisoformat(when).tzinfo is not None
    assert "not registered" in reason
    assert body.startswith('{"workflow": "dlq-late"')
    assert "1 of 1" in listed.stderr

    await env.start_worker(Late)
    missing = await asyncio.to_thread(warren, "dlq", "redrive", "m-other")
    assert missing.returncode == 1
    assert "m-other" in missing.stderr
    redriven = await asyncio.to_thread(warren, "dlq", "redrive", "m-cli", "--queue", dead_queue)
    assert redriven.returncode == 0, redriven.stderr
    assert redriven.stdout.strip() == (
        f"redriven m-cli from {dead_queue} to {wire.topology.ingress_exchange} instance.create"
    )
    assert await (await created(env.client, "late-cli")).result(timeout=20) == {}
    assert await wire.message_count(dead_queue) == 0
